"""Scalar metrics computed from one run's curves (pure NumPy, no JAX)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# A "loss spike" is a step whose training loss exceeds this multiple of the running EMA of the
# previous losses (EMA decay 0.9, counted from step 10 on, so initial transients don't count).
SPIKE_FACTOR = 2.0
SPIKE_EMA = 0.9
SPIKE_SKIP = 10
EARLY_STEPS = 100  # "early-step bias" window: steps 1–100
RECOVERY_TOL = 1.1  # recovered = probe loss back within 10 % of the pre-spike level


def _f(x: Any) -> float | None:
    """Finite float or None."""
    x = float(x)
    return x if math.isfinite(x) else None


def count_loss_spikes(loss: np.ndarray) -> int:
    """Number of loss spikes (see :data:`SPIKE_FACTOR`); a first non-finite loss counts once."""
    ema = float(loss[0])
    n = 0
    for t, x in enumerate(np.asarray(loss, float)):
        if not math.isfinite(x):
            return n + 1
        if t >= SPIKE_SKIP and x > SPIKE_FACTOR * ema:
            n += 1
        ema = SPIKE_EMA * ema + (1 - SPIKE_EMA) * x
    return n


def steps_to_target(
    values: np.ndarray, eval_every: int, target: float, higher_better: bool
) -> int | None:
    """First evaluated step at which the metric reaches ``target`` (None if never)."""
    v = np.asarray(values, float)
    hit = v >= target if higher_better else v <= target
    idx = np.nonzero(hit & np.isfinite(v))[0]
    return int((idx[0] + 1) * eval_every) if idx.size else None


def net_metrics(
    out: dict[str, np.ndarray], eval_every: int, targets: tuple[float, ...], higher_better: bool
) -> dict[str, Any]:
    """Metrics of one network run (``out`` = one seed's slice of the training output).

    ``steps_to_target`` holds one entry per target: the first evaluated step that reaches it,
    or None (censored: not reached within the run; reports show ``> steps``).
    """
    train = np.asarray(out["train_loss"], float)
    val_loss = float(out["val_loss"][-1])
    diverged = (not math.isfinite(val_loss)) or val_loss > float(train[0])
    m: dict[str, Any] = {
        "final_val_loss": _f(val_loss),
        "final_val_metric": _f(out["val_metric"][-1]),
        "test_loss": _f(out["test_loss"]),
        "test_metric": _f(out["test_metric"]),
        "steps_to_target": [
            steps_to_target(out["val_metric"], eval_every, t, higher_better) for t in targets
        ],
        "loss_spikes": count_loss_spikes(train),
        "diverged": bool(diverged),
        "early_loss": _f(np.mean(train[:EARLY_STEPS])),
    }
    if "spike_fraction" in out:
        m["mean_spike_fraction"] = _f(np.mean(out["spike_fraction"]))
        m["mean_gain"] = _f(np.mean(out["mean_gain"]))
    return m


def spike_metrics(
    probe: np.ndarray, sqrt_nu: np.ndarray, spike_step: int, window: int
) -> dict[str, Any]:
    """Response to an injected spike, from the per-step probe loss (recorded after each update).

    ``loss_ratio`` = peak probe loss in the ``window`` steps from the spike on / mean of the 5
    steps before; ``recovery_steps`` = steps from the spike until, after that peak, the probe
    loss is back within 10 % of the pre-spike level (censored at ``window``; then
    ``recovered`` is False); ``sqrt_nu_ratio`` = max √ν right after the spike / right before
    (None when the optimizer has no ν).
    """
    p = np.asarray(probe, float)
    s = spike_step
    pre = float(np.mean(p[max(0, s - 5) : s]))
    post = p[s : s + window]
    finite = np.isfinite(post)
    peak_i = int(np.nanargmax(np.where(finite, post, np.inf))) if post.size else 0
    peak = float(post[peak_i]) if post.size else math.nan
    ok = np.nonzero(finite[peak_i:] & (post[peak_i:] <= RECOVERY_TOL * pre))[0]
    nu = np.asarray(sqrt_nu, float)
    ratio_nu = nu[s] / nu[s - 1] if s >= 1 and np.isfinite(nu[s - 1]) and nu[s - 1] > 0 else None
    return {
        "pre_spike_loss": _f(pre),
        "loss_ratio": _f(peak / pre) if pre > 0 else None,
        "peak_step_after_spike": peak_i,
        "recovery_steps": int(peak_i + ok[0]) if ok.size else int(len(post)),
        "recovered": bool(ok.size),
        "sqrt_nu_ratio": None if ratio_nu is None else _f(ratio_nu),
    }
