"""The shared core of the benchmarks: everything the suite, the ladder and perf have in common.

* :mod:`~benchmarks.core.specs` – optimizer spec grammar (strings that build optax chains);
* :mod:`~benchmarks.core.records` – typed JSONL records, each stamped with its provenance;
* :mod:`~benchmarks.core.provenance` – commit of ``filtered_optax/`` and ``benchmarks/``, dirty
  flag, library versions, config hashes;
* :mod:`~benchmarks.core.stats` – paired intervals, Holm correction, TOST equivalence, verdicts;
* :mod:`~benchmarks.core.metrics` – scalar metrics of curves (steps to target, spikes, recovery);
* :mod:`~benchmarks.core.tables` – Markdown tables and number formatting;
* :mod:`~benchmarks.core.data`, :mod:`~benchmarks.core.models`, :mod:`~benchmarks.core.cost` –
  datasets, Flax models and timing helpers shared by the applications.

Applications (``benchmarks.suite``, ``benchmarks.ladder``, ``benchmarks.perf``) import from
here and never from each other.
"""
