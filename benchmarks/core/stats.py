"""Verdict statistics: paired differences over evaluation seeds, Holm's correction across the
comparisons of one claim, TOST equivalence inside a margin fixed here, censored outcomes.

A comparison pairs a method with a baseline seed by seed (same initialisation, batches and
noise) on one lower-is-better value. Its verdict is

* **better** / **worse** – the two-sided paired t-test (or, with censored values, the exact
  sign test) rejects "no difference" at level :data:`ALPHA` *after* Holm's step-down
  correction over all comparisons of the claim (Holm 1979, "A simple sequentially rejective
  multiple test procedure"), and the mean difference has that sign. Two-sided, because
  either direction is a verdict: two one-sided tests at ``ALPHA`` would be a test at
  ``2 * ALPHA``, and a "worse" could stand beside a 95 % interval that covers 0;
* **equivalent** – the two one-sided tests (Schuirmann 1987, "A comparison of the two one-sided
  tests procedure…") put the mean difference inside ± the margin, also Holm-corrected;
* **inconclusive** – anything else. A difference with zero variance over seeds (identical or
  quantized outcomes) is not evidence either way: its p-values are 1.

Censored values (a run that never reached its target inside the window) are ``math.inf``;
they are never averaged: a comparison with any censored value uses the sign test and no
equivalence is claimed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

ALPHA = 0.05  # family-wise error rate of one claim's comparisons (after Holm)
# Equivalence margin, fixed before any run: |Δ| < 1 % of the baseline's mean value (losses,
# errors), at least one resolution unit of a quantized metric (steps to target).
EQUIV_REL = 0.01
VERDICTS = ("better", "worse", "equivalent", "inconclusive")


def t_crit(df: int, level: float = 0.975) -> float:
    """Quantile ``level`` of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return float(sps.t.ppf(level, df))


@dataclass(frozen=True)
class PairedCI:
    """Mean of paired differences ``a − b`` with its 95 % t-interval over ``n`` pairs."""

    mean: float
    lo: float
    hi: float
    n: int

    def fmt(self, digits: int = 3) -> str:
        """``mean [lo, hi] (n=…)`` with ``digits`` significant digits."""
        f = f"{{:.{digits}g}}"
        return f"{f.format(self.mean)} [{f.format(self.lo)}, {f.format(self.hi)}] (n={self.n})"


def paired_ci(a: Sequence[float | None], b: Sequence[float | None]) -> PairedCI | None:
    """95 % t-interval of the mean paired difference; pairs with a missing side are dropped."""
    d = np.array(
        [
            x - y
            for x, y in zip(a, b, strict=True)
            if x is not None and y is not None and np.isfinite(x) and np.isfinite(y)
        ],
        dtype=float,
    )
    if d.size < 2:
        return None
    mean = float(d.mean())
    half = t_crit(d.size - 1) * float(d.std(ddof=1)) / math.sqrt(d.size)
    return PairedCI(mean, mean - half, mean + half, int(d.size))


def one_sided_t(d: np.ndarray, shift: float = 0.0) -> tuple[float, float]:
    """(p of "mean(d) < shift", p of "mean(d) > shift") from a one-sample t-test.

    Zero variance gives (1, 1): a constant difference is not evidence.
    """
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    if d.size < 2 or sd == 0.0:
        return 1.0, 1.0
    t = (float(d.mean()) - shift) / (sd / math.sqrt(d.size))
    return float(sps.t.cdf(t, d.size - 1)), float(sps.t.sf(t, d.size - 1))


def sign_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int, int]:
    """Exact sign test on pairs, valid with censored (``inf``) values.

    Returns (p of "a < b more often", p of "a > b more often", #a<b, #a>b); ties are dropped.
    """
    less, more = int(np.sum(a < b)), int(np.sum(a > b))
    n = less + more
    if n == 0:
        return 1.0, 1.0, 0, 0
    return (
        float(sps.binom.sf(less - 1, n, 0.5)),
        float(sps.binom.sf(more - 1, n, 0.5)),
        less,
        more,
    )


def holm(pvals: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (monotone, capped at 1), in the input order."""
    p = np.asarray(pvals, float)
    order = np.argsort(p, kind="stable")
    m = p.size
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj.tolist()


@dataclass
class Comparison:
    """One paired comparison of a method with a baseline (lower values are better)."""

    label: str
    method: str
    baseline: str
    baseline_config: str
    n: int
    delta: PairedCI | None  # mean method − baseline with its 95 % CI (None when censored)
    p_better: float
    p_worse: float
    p_equiv: float
    margin: float
    censored: tuple[int, int] = (0, 0)  # censored runs of (method, baseline)
    wins: tuple[int, int] = (0, 0)  # pairs where method < baseline, > baseline
    zero_variance: bool = False
    resolution: float | None = None
    verdict: str = "inconclusive"
    p_holm: float = 1.0
    notes: list[str] = field(default_factory=list)

    def delta_text(self) -> str:
        """The difference as printed in a report (censored comparisons show counts)."""
        if self.delta is None and self.censored == (0, 0):
            return f"too few pairs (n={self.n})"
        if self.delta is None:
            return (
                f"censored: method better in {self.wins[0]}/{self.n} pairs, worse in "
                f"{self.wins[1]} (> window: method {self.censored[0]}, baseline "
                f"{self.censored[1]})"
            )
        res = f", resolution {self.resolution:g}" if self.resolution else ""
        zv = ", zero variance: not evidence" if self.zero_variance else ""
        return f"{self.delta.fmt()}{res}{zv}"


def _paired_arrays(
    method: Mapping[int, float], baseline: Mapping[int, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Values of the seeds both sides have, as float arrays (``None`` counts as censored)."""
    seeds = sorted(set(method) & set(baseline))

    def v(x: float | None) -> float:
        return math.inf if x is None else float(x)

    return (np.array([v(method[s]) for s in seeds]), np.array([v(baseline[s]) for s in seeds]))


def compare(
    label: str,
    method: str,
    baseline: str,
    baseline_config: str,
    method_vals: Mapping[int, float | None],
    baseline_vals: Mapping[int, float | None],
    *,
    margin: float | None = None,
    resolution: float | None = None,
) -> Comparison:
    """Paired comparison over the common seeds (lower is better; ``inf``/None = censored).

    ``margin`` defaults to :data:`EQUIV_REL` × |baseline mean|, raised to ``resolution``
    for quantized metrics. The verdict is set by :func:`decide` across a claim.
    """
    a, b = _paired_arrays(method_vals, baseline_vals)
    cens = (int(np.sum(~np.isfinite(a))), int(np.sum(~np.isfinite(b))))
    if margin is None:
        base = float(np.mean(np.abs(b[np.isfinite(b)]))) if np.isfinite(b).any() else 0.0
        margin = max(EQUIV_REL * base, resolution or 0.0)
    if cens != (0, 0) or a.size < 2:
        p_b, p_w, less, more = sign_test(a, b)
        return Comparison(
            label,
            method,
            baseline,
            baseline_config,
            int(a.size),
            None,
            p_b,
            p_w,
            1.0,
            margin,
            cens,
            (less, more),
            resolution=resolution,
        )
    d = a - b
    p_b, p_w = one_sided_t(d)
    lo_p = one_sided_t(d, -margin)[1]  # H0: mean <= -margin
    hi_p = one_sided_t(d, margin)[0]  # H0: mean >= +margin
    zero_var = bool(np.all(d == d[0]))
    return Comparison(
        label,
        method,
        baseline,
        baseline_config,
        int(d.size),
        paired_ci(a, b),
        p_b,
        p_w,
        max(lo_p, hi_p),
        margin,
        cens,
        (int(np.sum(d < 0)), int(np.sum(d > 0))),
        zero_var,
        resolution,
    )


def decide(comps: list[Comparison], alpha: float = ALPHA) -> list[Comparison]:
    """Set each comparison's verdict and Holm p (see module docstring); returns ``comps``.

    "better", "worse" and "equivalent" each run Holm's correction over all comparisons of
    the claim, so a claim with more comparisons needs stronger evidence per comparison.
    """
    if not comps:
        return comps
    # Two-sided p of "no difference": twice the smaller one-sided p (capped at 1).
    differs = holm([min(1.0, 2.0 * min(c.p_better, c.p_worse)) for c in comps])
    equiv = holm([c.p_equiv for c in comps])
    for c, pd, pe in zip(comps, differs, equiv, strict=True):
        if pd < alpha:
            c.verdict = "better" if c.p_better < c.p_worse else "worse"
            c.p_holm = pd
        elif pe < alpha:
            c.verdict, c.p_holm = "equivalent", pe
        else:
            c.verdict, c.p_holm = "inconclusive", min(pd, pe)
    return comps


def claim_verdict(verdicts: Sequence[str]) -> str:
    """One word for a claim: ``better`` (some comparison better, none worse), ``worse``
    (the reverse), ``mixed`` (both), ``equivalent`` (all equivalent), else ``inconclusive``
    (``no data`` without comparisons)."""
    if not verdicts:
        return "no data"
    b, w = "better" in verdicts, "worse" in verdicts
    if b and w:
        return "mixed"
    if b:
        return "better"
    if w:
        return "worse"
    if all(v == "equivalent" for v in verdicts):
        return "equivalent"
    return "inconclusive"


VERDICT_RULE = (
    f"paired over evaluation seeds (never the tuning seeds); **better**/**worse**: two-sided "
    f"paired t-test (sign test when a run is censored) significant at {ALPHA} after Holm's "
    f"correction across the claim's comparisons; **equivalent**: TOST inside ±{EQUIV_REL:.0%} "
    f"of the baseline's mean (at least one resolution unit for step counts), Holm-corrected; "
    f"otherwise **inconclusive**. Zero-variance differences count as no evidence; censored "
    f"runs (never reached the target in the window) are shown as > N, never averaged"
)
