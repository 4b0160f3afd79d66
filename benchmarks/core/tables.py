"""Markdown tables and number formatting shared by every report."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table (``|`` inside a cell is replaced by ``/``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def mean_sd(xs: Sequence[float | None], digits: int = 4) -> str:
    """``mean ± sd`` of the finite values (``n/a`` when none)."""
    v = np.array([x for x in xs if x is not None and np.isfinite(x)], float)
    if v.size == 0:
        return "n/a"
    f = f"{{:.{digits}g}}"
    return f"{f.format(v.mean())} ± {f.format(v.std(ddof=1) if v.size > 1 else 0.0)}"


def lr_text(lr: float) -> str:
    """A learning rate on the ×2 lattice as ``0.00391 (2^-8)``."""
    k = math.log2(lr) if lr > 0 else float("nan")
    # Records store 6 significant digits, so 2^k comes back within ~1e-6 of the lattice.
    on_lattice = math.isfinite(k) and abs(k - round(k)) < 1e-4
    return f"{lr:.3g} (2^{round(k)})" if on_lattice else f"{lr:.3g}"


def censored(value: float | None, cap: float) -> str:
    """A step count, or ``> cap`` when the run never got there inside its window."""
    if value is None or not math.isfinite(value) or value > cap:
        return f"> {cap:g}"
    return f"{value:g}"
