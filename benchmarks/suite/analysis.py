"""From stamped records to tuned configurations and claim verdicts (every number in REPORT.md
and summary.json comes from here).

Tuning uses only ``tune`` records (tuning seeds, validation split) and the quadratics' tuning
seeds; every comparison uses only evaluation seeds. Each claim is judged against the
**strongest** baseline of its family on each task — the one with the best tuning score — and
names it with its configuration. Under an injected spike the strongest robustness baseline is
the one with the best mean score *under that injection* on the tuning seeds (``spike_tune``
records), since the best baseline on clean data need not be the best under spikes. Verdict
rules: :mod:`benchmarks.core.stats`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.core import stats
from benchmarks.core.specs import parse_spec
from benchmarks.suite.suites import ADAMW, ROBUST_BASELINES, F

Rec = dict[str, Any]
ROBUST = tuple(parse_spec(s).text for s in ROBUST_BASELINES)
ADAMW_TEXTS = tuple(parse_spec(s).text for s in ADAMW)
ROBUST_QUADS = ("student_t3", "coord_spikes", "global_spikes")


@dataclass
class Tuned:
    """A spec's tuned configuration on one task: LR, mean tuning score, LRs tried."""

    spec: str
    lr: float
    score: float
    tested: list[float]

    @property
    def edge(self) -> bool:
        """Whether the chosen LR is the smallest or largest one tried."""
        return len(self.tested) > 1 and self.lr in (min(self.tested), max(self.tested))

    def config(self, warmup: int | None = None) -> str:
        """``spec, lr=…[, warmup W + cosine]`` as named in claim rows."""
        sched = "" if warmup is None else f", warmup {warmup} + cosine"
        return f"{self.spec}, lr={self.lr:.3g}{sched}"


@dataclass
class Claim:
    """One claim of the report: a method against the strongest baseline on each comparison."""

    claim: str
    method: str
    test: str
    comparisons: list[stats.Comparison] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """The claim's overall verdict (:func:`stats.claim_verdict`)."""
        return stats.claim_verdict([c.verdict for c in self.comparisons])


def score(r: Rec) -> float:
    """Lower-is-better validation score of a network record; ∞ when it diverged."""
    m = r["metrics"]
    v = m.get("final_val_metric")
    if m.get("diverged") or v is None:
        return math.inf
    return 1.0 - v if r["higher_better"] else v


def test_value(r: Rec) -> float | None:
    """Lower-is-better test metric: test loss (LM) or test error (classifiers)."""
    v = r["metrics"].get("test_metric")
    return None if v is None else (1.0 - v if r["higher_better"] else v)


def net_tuning(recs: Iterable[Rec]) -> dict[str, dict[str, Tuned]]:
    """``{task: {spec: Tuned}}`` from the ``tune`` records (mean score over tuning seeds)."""
    by: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in recs:
        if r["kind"] == "tune":
            by[(r["task"], r["spec"])][r["lr"]].append(score(r))
    out: dict[str, dict[str, Tuned]] = defaultdict(dict)
    for (task, spec), lrs in by.items():
        means = {lr: float(np.mean(v)) for lr, v in lrs.items()}
        finite = {lr: v for lr, v in means.items() if math.isfinite(v)} or means
        lr = min(finite, key=finite.get)
        out[task][spec] = Tuned(spec, lr, means[lr], sorted(means))
    return dict(out)


def runs(recs: Iterable[Rec], kind: str) -> dict[str, dict[str, list[Rec]]]:
    """``{task: {spec: [records]}}`` of one kind (evaluation seeds only)."""
    out: dict[str, dict[str, list[Rec]]] = defaultdict(lambda: defaultdict(list))
    for r in recs:
        if r["kind"] == kind:
            out[r["task"]][r["spec"]].append(r)
    return out


def strongest(tuned: dict[str, Tuned], family: Iterable[str]) -> Tuned | None:
    """The family member with the best tuning score on this task (None if none ran)."""
    cands = [tuned[s] for s in family if s in tuned]
    return min(cands, key=lambda t: t.score) if cands else None


def per_seed(rs: list[Rec], fn: Callable[[Rec], float | None]) -> dict[int, float | None]:
    """``{seed: fn(record)}``."""
    return {r["seed"]: fn(r) for r in rs}


def _steps(i: int) -> Callable[[Rec], float]:
    def fn(r: Rec) -> float:
        s = r["metrics"]["steps_to_target"][i]
        return math.inf if s is None else float(s)

    return fn


def _cmp(
    label: str,
    method: str,
    base: Tuned,
    warmup: int | None,
    a: list[Rec],
    b: list[Rec],
    fn: Callable[[Rec], float | None],
    resolution: float | None = None,
) -> stats.Comparison:
    return stats.compare(
        label,
        method,
        base.spec,
        base.config(warmup),
        per_seed(a, fn),
        per_seed(b, fn),
        resolution=resolution,
    )


def _warmup(rs: list[Rec]) -> int | None:
    return rs[0].get("warmup") if rs else None


def versus_adamw(recs: list[Rec], method_prefix: str, claim: str, test: str, metric: str) -> Claim:
    """``method`` against the tuned AdamW (best of the AdamW grid) on every network task.

    ``metric`` is ``"steps"`` (steps to each target, censored, resolution = eval interval) or
    ``"test"`` (test loss / error).
    """
    tuning, evals = net_tuning(recs), runs(recs, "eval")
    c = Claim(claim, method_prefix, test)
    for task in sorted(evals):
        base = strongest(tuning.get(task, {}), ADAMW_TEXTS)
        method = next(
            (
                s
                for s in sorted(evals[task])
                if s == method_prefix or s.startswith(method_prefix + "(")
            ),
            None,
        )
        if base is None or method is None or base.spec not in evals[task]:
            continue
        a, b = evals[task][method], evals[task][base.spec]
        w = _warmup(b)
        if metric == "test":
            c.comparisons.append(_cmp(f"{task} test", method, base, w, a, b, test_value))
            continue
        for i, target in enumerate(b[0]["targets"]):
            c.comparisons.append(
                _cmp(
                    f"{task} steps to {target:g}",
                    method,
                    base,
                    w,
                    a,
                    b,
                    _steps(i),
                    resolution=float(b[0]["eval_every"]),
                )
            )
    stats.decide(c.comparisons)
    return c


def _by_injection(rs: list[Rec], natural: bool) -> dict[str, list[Rec]]:
    """Spike records grouped by injection name, natural-instability runs or injected ones."""
    out: dict[str, list[Rec]] = defaultdict(list)
    for r in rs:
        if ("natural_lr_factor" in r["injection"]) == natural:
            out[injection_name(r["injection"])].append(r)
    return out


def strongest_under(
    tuned: dict[str, Tuned], tune_runs: dict[str, dict[str, list[Rec]]], name: str
) -> Tuned | None:
    """The robustness baseline with the best mean score under injection ``name`` on the tuning
    seeds; without such runs, the best clean tuning score (:func:`strongest`)."""
    under = {
        s: float(np.mean([score(r) for r in tune_runs[s][name]]))
        for s in ROBUST
        if s in tuned and name in tune_runs.get(s, {})
    }
    if not under:
        return strongest(tuned, ROBUST)
    finite = {s: v for s, v in under.items() if math.isfinite(v)} or under
    return tuned[min(finite, key=finite.get)]


def spike_claim(recs: list[Rec], natural: bool) -> Claim:
    """F against the strongest robustness baseline under each injected spike (or, with
    ``natural``, at 4× its tuned LR without warmup): final validation score, eval seeds.

    The baseline of each injection is chosen on the tuning seeds under that injection
    (:func:`strongest_under`), the verdict is paired over the evaluation seeds.
    """
    tuning, spikes, spike_tunes = net_tuning(recs), runs(recs, "spike"), runs(recs, "spike_tune")
    c = Claim(
        "stable under a natural instability (4× LR, no warmup)"
        if natural
        else "robust to injected gradient spikes (networks)",
        F,
        "final validation score (loss or error) after the run, eval seeds, against the "
        "baseline that did best under the same injection on the tuning seeds",
    )
    for task in sorted(spikes):
        g = {s: _by_injection(rs, natural) for s, rs in spikes[task].items()}
        tune_runs = {s: _by_injection(rs, natural) for s, rs in spike_tunes.get(task, {}).items()}
        candidates = {s: t for s, t in tuning.get(task, {}).items() if s in g}
        for name in sorted(g.get(F, {})):
            base = strongest_under(candidates, tune_runs, name)
            if base is None or name not in g[base.spec]:
                continue
            fa, fb = g[F][name], g[base.spec][name]
            c.comparisons.append(_cmp(f"{task} {name}", F, base, _warmup(fb), fa, fb, score))
    stats.decide(c.comparisons)
    return c


def injection_name(inj: dict[str, Any]) -> str:
    """``batch×1000 once`` or ``natural ×4 LR, no warmup``."""
    if "natural_lr_factor" in inj:
        return f"natural ×{inj['natural_lr_factor']:g} LR, no warmup"
    return f"{inj['kind']}×{inj['magnitude']:g} {inj['pattern']}"


def quad_tuning(recs: Iterable[Rec]) -> dict[str, dict[str, tuple[Tuned, dict[int, float]]]]:
    """``{variant: {spec: (tuned on tuning seeds, {eval seed: log10 final loss})}}``."""
    by: dict[str, dict[str, list[Rec]]] = defaultdict(lambda: defaultdict(list))
    for r in recs:
        if r["kind"] == "quad":
            by[r["task"].removeprefix("quad/")][r["spec"]].append(r)
    out: dict[str, dict[str, tuple[Tuned, dict[int, float]]]] = defaultdict(dict)
    for v, g in by.items():
        for spec, rs in g.items():
            logs = {r["lr"]: _log10s(r) for r in rs}
            tune = {
                lr: float(np.mean([x for s, x in d.items() if s in rs[0]["tune_seeds"]]))
                for lr, d in logs.items()
            }
            finite = {lr: x for lr, x in tune.items() if math.isfinite(x)} or tune
            lr = min(finite, key=finite.get)
            evals = {s: x for s, x in logs[lr].items() if s in rs[0]["eval_seeds"]}
            out[v][spec] = (Tuned(spec, lr, tune[lr], sorted(tune)), evals)
    return dict(out)


def _log10s(r: Rec) -> dict[int, float]:
    """``{seed: log10 final loss}`` of a quad record (∞ when diverged)."""
    m = r["metrics"]
    return {
        s: (math.log10(f) if f and f > 0 and not d else math.inf)
        for s, f, d in zip(r["seeds"], m["final_loss"], m["diverged"], strict=True)
    }


def quad_claim(recs: list[Rec]) -> Claim:
    """F against the strongest robustness baseline on the heavy-tailed / spiky quadratics."""
    c = Claim(
        "robust to heavy-tailed noise and gradient spikes (quadratics)",
        F,
        "log10 final loss at each spec's LR tuned on the tuning seeds, eval seeds",
    )
    for v, g in sorted(quad_tuning(recs).items()):
        if v not in ROBUST_QUADS and not v.startswith("sweep/"):
            continue
        base = strongest({s: t for s, (t, _) in g.items()}, ROBUST)
        if base is None or F not in g:
            continue
        c.comparisons.append(
            stats.compare(f"quad/{v}", F, base.spec, base.config(), g[F][1], g[base.spec][1])
        )
    stats.decide(c.comparisons)
    return c


def claims(recs: list[Rec]) -> list[Claim]:
    """Every claim of the report, computed from the records."""
    out = [spike_claim(recs, natural=False), quad_claim(recs), spike_claim(recs, natural=True)]
    for method in (F, "muon", "optax_muon"):
        out.append(
            versus_adamw(
                recs,
                method,
                "converges in fewer steps than tuned AdamW",
                "steps to each of ≥ 3 fixed validation targets",
                "steps",
            )
        )
        out.append(
            versus_adamw(
                recs,
                method,
                "generalizes better than tuned AdamW",
                "test loss (LM) / test error (classifiers)",
                "test",
            )
        )
    return out
