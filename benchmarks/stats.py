"""Small statistics helpers: paired t-intervals and the verdict rule used by the claims table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Two-sided 95 % Student-t critical values t_{0.975, df}; values between entries are
# interpolated linearly in 1/df, which is accurate to ~1e-3 here.
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
    9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021,
    60: 2.000, 120: 1.980,
}
_Z975 = 1.959964


def t_crit(df: int) -> float:
    """Two-sided 95 % critical value of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"df must be ≥ 1, got {df}")
    if df in _T975:
        return _T975[df]
    keys = sorted(_T975)
    if df > keys[-1]:
        lo, hi, tlo, thi = keys[-1], math.inf, _T975[keys[-1]], _Z975
    else:
        lo = max(k for k in keys if k < df)
        hi = min(k for k in keys if k > df)
        tlo, thi = _T975[lo], _T975[hi]
    w = (1 / lo - 1 / df) / (1 / lo - (0 if hi == math.inf else 1 / hi))
    return tlo + w * (thi - tlo)


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
        [x - y for x, y in zip(a, b, strict=True)
         if x is not None and y is not None and np.isfinite(x) and np.isfinite(y)],
        dtype=float,
    )
    if d.size < 2:
        return None
    mean = float(d.mean())
    half = t_crit(d.size - 1) * float(d.std(ddof=1)) / math.sqrt(d.size)
    return PairedCI(mean, mean - half, mean + half, int(d.size))


def outcome(ci: PairedCI | None, lower_is_better: bool = True) -> str:
    """``win`` / ``loss`` / ``tie`` for "new − baseline" (``n/a`` without data)."""
    if ci is None:
        return "n/a"
    better = ci.hi < 0 if lower_is_better else ci.lo > 0
    worse = ci.lo > 0 if lower_is_better else ci.hi < 0
    return "win" if better else "loss" if worse else "tie"


VERDICT_RULE = (
    "supported: at least half of the comparisons are significant wins and none is a "
    "significant loss; not supported: no significant win; mixed: otherwise; "
    "no data: no comparison could be made"
)


def verdict(outcomes: Sequence[str]) -> str:
    """Combine per-comparison outcomes into one verdict (see :data:`VERDICT_RULE`)."""
    known = [o for o in outcomes if o != "n/a"]
    if not known:
        return "no data"
    wins, losses = known.count("win"), known.count("loss")
    if wins == 0:
        return "not supported"
    if losses == 0 and wins * 2 >= len(known):
        return "supported"
    return "mixed"
