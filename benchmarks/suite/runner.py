"""Run a suite into ``<out>/runs.jsonl`` (one stamped record per run), resuming from it.

Per network task: (1) **tune** every spec's learning rate on the tuning seeds (validation
split), extending the LR window until the optimum is interior; Muon specs are derived from the
tuned AdamW (its b2 and weight decay) and tuned the same way; (2) **evaluate** each tuned
configuration on the evaluation seeds (test split); (3) the **spike sweep** and the **natural
instability** run at the tuned configurations, first on the tuning seeds (``spike_tune``
records: they pick the strongest baseline under each injection) and then on the evaluation
seeds (``spike`` records: the verdicts). Quadratics: every LR × variant × seed of a spec in
one compiled call; the analysis picks the LR on the tuning seeds.

Records from other code (another commit or other uncommitted edits) are never reused: the old
file is moved aside and the suite reruns.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from benchmarks.core import cost as cost_lib
from benchmarks.core import data as data_lib
from benchmarks.core import metrics as metrics_lib
from benchmarks.core import records
from benchmarks.core import specs as specs_lib
from benchmarks.core.provenance import provenance, stamp
from benchmarks.suite import quadratic
from benchmarks.suite import suites as suites_lib
from benchmarks.suite.suites import NetPlan, Suite
from benchmarks.suite.tasks import TASK_BUILDERS, NetTask, with_traced_routing
from benchmarks.suite.train import PROBE_AFTER, hyper, make_train_fn

Rec = dict[str, Any]
# A spike run on a tuning seed (picks the strongest baseline), then on an evaluation seed.
SPIKE_KINDS = ("spike_tune", "spike")


def log(msg: str) -> None:
    """Print a progress message without breaking tqdm bars."""
    tqdm.write(msg)


def score(metrics: dict[str, Any], higher_better: bool) -> float:
    """Lower-is-better tuning score: final val loss, or 1 − val accuracy; ∞ when diverged."""
    v = metrics.get("final_val_metric")
    if metrics.get("diverged") or v is None:
        return math.inf
    return 1.0 - v if higher_better else v


def next_lr_exp(scores: dict[int, float], window: tuple[int, int], max_extend: int) -> int | None:
    """Next LR exponent to run, or None when the search is done (pure, deterministic).

    Fill the initial window; then extend by one point past an edge that holds the best score
    (at most ``max_extend`` points per side), so the chosen rate is interior when possible.
    """
    lo, hi = window
    for k in range(lo, hi + 1):
        if k not in scores:
            return k
    ks = sorted(scores)
    finite = [k for k in ks if math.isfinite(scores[k])]
    can_down, can_up = ks[0] > lo - max_extend, ks[-1] < hi + max_extend
    if not finite:
        return ks[0] - 1 if can_down else None
    best = min(finite, key=lambda k: scores[k])
    if best == ks[0] and can_down:
        return ks[0] - 1
    if best == ks[-1] and can_up:
        return ks[-1] + 1
    return None


def _json_lines(path: Path) -> int:
    """Number of complete JSON lines of ``path`` (a truncated last write does not count)."""
    if not path.exists():
        return 0
    n = 0
    for line in path.open(encoding="utf-8"):
        try:
            json.loads(line)
            n += 1
        except json.JSONDecodeError:
            continue
    return n


def sweep_specs(tuned: dict[str, tuple[float, float]]) -> list[str]:
    """F and the strongest tuned member (best tuning score) of each robustness family."""
    out = [t for t in (specs_lib.parse_spec(suites_lib.F).text,) if t in tuned]
    for family in suites_lib.ROBUST_FAMILIES:
        cands = [t for t in (specs_lib.parse_spec(s).text for s in family) if t in tuned]
        if cands:
            out.append(min(cands, key=lambda t: tuned[t][1]))
    return out


class Runner:
    """Executes a :class:`Suite` into ``out_dir`` (see module docstring)."""

    def __init__(
        self,
        suite: Suite,
        out_dir: Path,
        paths: dict[str, str | None] | None = None,
        only: tuple[str, ...] | None = None,
        run_cost: bool = True,
    ) -> None:
        self.suite, self.out = suite, Path(out_dir)
        self.jsonl = self.out / "runs.jsonl"
        self.paths = paths or {}
        self.only, self.run_cost = only, run_cost
        self.prov = provenance()
        self.done = records.by_key(self._same_code(records.load(self.jsonl)))
        self.skipped: list[str] = []
        self.stats = {"units_run": 0, "units_skipped_done": 0}

    def _same_code(self, recs: list[Rec]) -> list[Rec]:
        """``recs`` if every line of the file is a record of this code, else [] with the old
        file moved aside (older schemas, other commits or other uncommitted edits)."""
        mine = stamp(self.prov)
        same = all(stamp(r["provenance"]) == mine for r in recs)
        if same and _json_lines(self.jsonl) == len(recs):
            return recs
        aside = self.jsonl.with_name(f"runs.stale-{time.strftime('%Y%m%dT%H%M%S')}.jsonl")
        self.jsonl.rename(aside)
        log(f"{self.jsonl} holds records of other code: moved to {aside.name}; rerunning")
        return []

    def _write(self, recs: list[Rec]) -> None:
        records.append(self.jsonl, recs)
        self.done.update({r["key"]: r for r in recs})

    def _skip(self, msg: str) -> None:
        if msg not in self.skipped:
            self.skipped.append(msg)
            log(f"SKIP {msg}")

    # ------------------------------------------------------------------ network tasks
    def _net_records(
        self,
        kind: str,
        task: NetTask,
        plan: NetPlan,
        spec: str,
        lr: float,
        warmup: int,
        seeds: tuple[int, ...],
        out: dict[str, np.ndarray],
        i: int,
        inj: dict[str, Any] | None,
        dt: float,
    ) -> list[Rec]:
        """One record per seed from row ``i`` of a training call's output."""
        recs = []
        for j, s in enumerate(seeds):
            one = {name: v[i, j] for name, v in out.items()}
            m = metrics_lib.net_metrics(one, task.eval_every, plan.targets, task.higher_better)
            fields: dict[str, Any] = {
                "task": task.name,
                "data_id": task.data_id,
                "task_config": task.config,
                "spec": spec,
                "lr": lr,
                "warmup": warmup,
                "seed": s,
                "steps": task.steps,
                "eval_every": task.eval_every,
                "metric": task.metric,
                "higher_better": task.higher_better,
                "targets": list(plan.targets),
                "n_params": task.n_params,
                "metrics": m,
                "time_s": dt / len(seeds),
                "step_time_s": dt / len(seeds) / task.steps,
            }
            if kind in ("eval", "spike"):
                fields["curves"] = {"val_metric": one["val_metric"], "val_loss": one["val_loss"]}
            if kind in SPIKE_KINDS:
                fields["injection"] = inj
            if kind in SPIKE_KINDS and inj["pattern"] != "none":
                m.update(
                    metrics_lib.spike_metrics(
                        one["probe_loss"],
                        one["max_sqrt_nu"],
                        inj["step"],
                        min(PROBE_AFTER, task.steps - inj["step"]),
                    )
                )
            cfg = [task.name, task.data_id, task.config, task.steps, spec, lr, warmup, s, inj]
            recs.append(
                records.make_record(
                    kind,
                    suite=self.suite.name,
                    provenance=self.prov,
                    config=cfg,
                    key_parts=(task.name, spec, s),
                    **fields,
                )
            )
        return recs

    def _unit(
        self,
        kind: str,
        task: NetTask,
        plan: NetPlan,
        spec: str,
        fn: Callable,
        runs: list[tuple[float, int, dict[str, Any] | None]],
        seeds: tuple[int, ...],
    ) -> list[Rec]:
        """Runs ``(lr, warmup, injection)`` × ``seeds`` in one call unless all are done."""
        cfgs = [
            [task.name, task.data_id, task.config, task.steps, spec, lr, w, s, inj]
            for lr, w, inj in runs
            for s in seeds
        ]
        keys = [
            records.make_key(kind, self.suite.name, records.config_hash(c), task.name, spec, c[7])
            for c in cfgs
        ]
        if all(k in self.done for k in keys):
            self.stats["units_skipped_done"] += 1
            return [self.done[k] for k in keys]
        t0 = time.perf_counter()
        out = fn([hyper(lr, w, inj) for lr, w, inj in runs], np.asarray(seeds))
        dt = (time.perf_counter() - t0) / len(runs)
        self.stats["units_run"] += 1
        recs = [
            r
            for i, (lr, w, inj) in enumerate(runs)
            for r in self._net_records(kind, task, plan, spec, lr, w, seeds, out, i, inj, dt)
        ]
        self._write(recs)
        return recs

    def tune(
        self, task: NetTask, plan: NetPlan, spec: str, fn: Callable, warmup: int
    ) -> tuple[float, float]:
        """LR search on the tuning seeds; returns (tuned LR, its mean validation score)."""
        family = specs_lib.parse_spec(spec).family
        window = suites_lib.lr_window(task.name, family, plan.window or self.suite.window)
        extend = self.suite.max_extend if plan.max_extend is None else plan.max_extend
        scores: dict[int, float] = {}
        while (k := next_lr_exp(scores, window, extend)) is not None:
            recs = self._unit(
                "tune", task, plan, spec, fn, [(2.0**k, warmup, None)], plan.tune_seeds
            )
            scores[k] = float(np.mean([score(r["metrics"], task.higher_better) for r in recs]))
        finite = {k: v for k, v in scores.items() if math.isfinite(v)}
        k = min(finite, key=finite.get) if finite else min(scores)
        return 2.0**k, scores[k]

    def run_task(self, plan: NetPlan) -> None:
        """Tune, evaluate, sweep spikes and (if planned) the natural instability on one task."""
        try:
            task = TASK_BUILDERS[plan.task](self.paths.get(plan.task), **plan.kwargs)
        except data_lib.DataUnavailable as e:
            self._skip(f"task {plan.task}: {e}")
            return
        if any(specs_lib.parse_spec(t).base.name in specs_lib.ROUTED_BASES for t in plan.specs):
            task = with_traced_routing(task)  # Muon's routing, read off the loss once
        warmup = int(round(plan.warmup_frac * task.steps))
        log(
            f"task {task.name}: {task.n_params:,} params, {task.steps} steps, data "
            f"{task.data_id}, tuning seeds {plan.tune_seeds}, eval seeds {plan.eval_seeds}"
        )
        specs = [specs_lib.parse_spec(t).text for t in plan.specs]
        fns, tuned = {}, {}
        for spec in specs:
            fns[spec] = make_train_fn(task, specs_lib.parse_spec(spec))
            tuned[spec] = self.tune(task, plan, spec, fns[spec], warmup)
            log(f"  tuned {spec:44s} lr={tuned[spec][0]:.3g} score={tuned[spec][1]:.4g}")
        adamws = [s for s in specs if s.startswith("adamw")]
        if adamws:
            best = min(adamws, key=lambda s: tuned[s][1])
            for spec in suites_lib.muon_specs(*suites_lib.adamw_params(best)):
                spec = specs_lib.parse_spec(spec).text
                fns[spec] = make_train_fn(task, specs_lib.parse_spec(spec))
                tuned[spec] = self.tune(task, plan, spec, fns[spec], warmup)
                log(f"  tuned {spec:44s} lr={tuned[spec][0]:.3g} (AdamW side of `{best}`)")
        for spec, (lr, _) in tuned.items():
            self._unit("eval", task, plan, spec, fns[spec], [(lr, warmup, None)], plan.eval_seeds)
        step = task.steps // 2
        sweep = [{**inj, "step": step} for inj in plan.sweep]
        if sweep:
            self._spike_units(
                task,
                plan,
                fns,
                sweep_specs(tuned),
                lambda spec: [(tuned[spec][0], warmup, inj) for inj in sweep],
            )
        if plan.natural:
            nat = {
                "magnitude": 1.0,
                "pattern": "none",
                "kind": "batch",
                "step": 0,
                "natural_lr_factor": suites_lib.NATURAL_LR_FACTOR,
            }
            self._spike_units(
                task,
                plan,
                fns,
                list(tuned),
                lambda spec: [(tuned[spec][0] * suites_lib.NATURAL_LR_FACTOR, 0, nat)],
            )

    def _spike_units(
        self,
        task: NetTask,
        plan: NetPlan,
        fns: dict[str, Callable],
        specs: list[str],
        runs_of: Callable[[str], list[tuple[float, int, dict[str, Any]]]],
    ) -> None:
        """``runs_of(spec)`` for every spec, first on the tuning seeds (``spike_tune``), then
        on the evaluation seeds (``spike``)."""
        for kind, seeds in zip(SPIKE_KINDS, (plan.tune_seeds, plan.eval_seeds), strict=True):
            for spec in specs:
                self._unit(kind, task, plan, spec, fns[spec], runs_of(spec), seeds)

    # ------------------------------------------------------------------ quadratics
    def run_quads(self) -> None:
        """Every variant × LR × (tuning + evaluation) seed for each spec, one call per spec."""
        s = self.suite
        variants = quadratic.variants(s.quad_sweep)
        seeds = s.quad_tune_seeds + s.quad_eval_seeds
        for text in s.quad_specs:
            spec = specs_lib.parse_spec(text)
            cfg = [
                spec.text,
                s.quad_steps,
                list(variants),
                s.quad_lr_exps,
                seeds,
                [v.__dict__ for v in variants.values()],
            ]
            key = records.make_key("quad", s.name, records.config_hash(cfg), spec.text, 0)
            if any(k.startswith(key[: key.rindex("|")]) for k in self.done):
                self.stats["units_skipped_done"] += 1
                continue
            t0 = time.perf_counter()
            out = quadratic.make_quad_fn(spec, s.quad_steps)(
                [2.0**k for k in s.quad_lr_exps], list(variants.values()), list(seeds)
            )
            dt = time.perf_counter() - t0
            self.stats["units_run"] += 1
            self._write(
                quadratic.to_records(spec.text, s, variants, seeds, out, dt, cfg, self.prov)
            )
            log(f"  quadratics {spec.text}: {dt:.0f} s")

    # ------------------------------------------------------------------ cost
    def run_costs(self) -> None:
        """Optimizer-step and train-step timings (interleaved, see benchmarks.core.cost)."""
        s = self.suite
        items: list[tuple[str, Any]] = [("opt_step", n) for n in s.cost_sizes]
        if s.cost_lm:
            items.append(("train_step", s.cost_lm))
        for what, arg in items:
            cfg = [what, arg, s.cost_reps]
            prefix = records.make_key("cost", s.name, records.config_hash(cfg))
            if any(k.startswith(prefix) for k in self.done):
                continue
            run_id = time.strftime("%Y%m%dT%H%M%S")
            rows = (
                cost_lib.bench_opt_steps(arg, s.cost_reps, log=log)
                if what == "opt_step"
                else cost_lib.bench_train_step(arg, s.cost_reps, log=log)
            )
            self._write(
                [
                    records.make_record(
                        "cost",
                        suite=s.name,
                        provenance=self.prov,
                        config=cfg,
                        key_parts=(row["spec"],),
                        run_id=run_id,
                        **row,
                    )
                    for row in rows
                ]
            )

    def run(self) -> dict[str, Any]:
        """Run every phase of the suite; returns timing and skip information."""
        t0 = time.perf_counter()
        phases: dict[str, float] = {}
        for plan in self.suite.nets:
            if not self.only or plan.task in self.only:
                t = time.perf_counter()
                self.run_task(plan)
                phases[plan.task] = time.perf_counter() - t
        for name, fn, on in (
            ("quadratics", self.run_quads, not self.only or "quad" in self.only),
            ("cost", self.run_costs, self.run_cost and (not self.only or "cost" in self.only)),
        ):
            if on:
                t = time.perf_counter()
                fn()
                phases[name] = time.perf_counter() - t
        return {
            "phases": phases,
            "total_s": time.perf_counter() - t0,
            "skipped": self.skipped,
            **self.stats,
        }
