r"""Gradient filters: :math:`\tilde g_t = F(g_t, m_{t-1}, v_{t-1}, c)`.

Every filter reads only the buffers the moment stage already holds (the previous
``mu``, ``nu`` and ``count``), so a filtered Adam needs no memory beyond Adam's. The math
lives in small pure per-array functions (``*_math``); the stages only map them over the
gradient tree inside :func:`filtered_optax.with_moments`, which supplies
``prev_moments=``.

Shared gate: every filter returns the raw gradient where ``c < warmup``, ``c == 0``,
``v_{t-1} == 0``, ``g == 0`` or ``g`` is NaN. (A coordinate first seen late, such as a
rare embedding row, would otherwise lock at zero; a masked or frozen coordinate stays
frozen; and a NaN stays visible, since it is a bug upstream - ``optax.apply_if_finite``
is the guard for it.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from filtered_optax import _record, _validation
from filtered_optax._types import FilterResult, FilterStats, Moments

# rho_c is capped below 1 so that 1 / (1 - rho_c), which turns the spread of the EMA
# into the noise variance, stays finite on the first step (where rho_1 == 1 exactly).
_MAX_RHO = 0.9999

# The one spelling of "filter off" (README, "The filter"): gamma=inf (and eta=1).
CLIP_OFF_HINT = "use gamma=float('inf') to turn the spike clip off"
GAMMA_OFF_HINT = "use gamma=float('inf') to turn the spike clip off (and eta=1.0 for no smoothing)"


class _Prior(NamedTuple):
    """Bias-corrected previous moments of one array, in float32 (or wider)."""

    g: jax.Array  # the raw gradient, upcast
    m_hat: jax.Array  # m_{t-1} / (1 - b1^c)
    v_hat: jax.Array  # v_{t-1} / (1 - b2^c); 1 where that is not positive (a safe placeholder)
    scale: jax.Array  # s = sqrt(v_hat)
    innovation: jax.Array  # d = g - m_hat where the filter acts, exactly 0 where the gate is open
    acts: jax.Array  # bool: the shared gate is closed, so F may change g here
    count: jax.Array  # c, clamped to >= 1 so that 1 - b^c never divides by zero


def _real(x: Any) -> Any:
    """The real part of a complex array, anything else unchanged.

    ``optax.inject_hyperparams`` casts hyperparameters to complex parameters' dtype; a
    Python float stays a float, so short-cuts at trace time still see it.
    """
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.complexfloating):
        return jnp.real(x)
    return x


def _as(x: jax.Array, dtype: Any) -> jax.Array:
    """``x`` cast to ``dtype``, dropping an (always zero) imaginary part for a real dtype.

    A complex ``mu_dtype`` with real gradients keeps a zero imaginary part in ``mu``.
    """
    if not jnp.issubdtype(dtype, jnp.complexfloating):
        x = _real(x)
    return x.astype(dtype)


def _abs2(x: jax.Array) -> jax.Array:
    """|x|^2, real, for real and complex x."""
    return jnp.real(x * jnp.conj(x)) if jnp.iscomplexobj(x) else x * x


def _phase(d: jax.Array) -> jax.Array:
    """d / |d| (0 at 0): sign(d) for real d, the unit phase for complex d.

    For a complex d with an infinite part the phase is taken from the infinite parts
    (d / |d| would be inf / inf = NaN), so an infinite complex gradient is clipped as a
    spike as a real one is.
    """
    if not jnp.iscomplexobj(d):
        return jnp.sign(d)
    re, im = jnp.real(d), jnp.imag(d)
    inf_dir = jax.lax.complex(
        jnp.where(jnp.isinf(re), jnp.sign(re), 0.0), jnp.where(jnp.isinf(im), jnp.sign(im), 0.0)
    )
    return jnp.where(jnp.isinf(jnp.abs(d)), jnp.sign(inf_dir), jnp.sign(d))


def _prior(g, m, v, count, b1, b2, warmup) -> _Prior:
    compute = jnp.promote_types(g.dtype, jnp.float32)
    real = jnp.finfo(compute).dtype  # float32 for complex64, float64 for complex128
    b1, b2 = _real(b1), _real(b2)
    g32 = g.astype(compute)
    c = jnp.maximum(jnp.asarray(count), 1)
    # Multiply by scalar reciprocals: a per-element divide would keep XLA from fusing the
    # whole filter into one loop. v is an EMA of |g|^2, real even when stored complex.
    m_hat = _as(m, compute) * (1 / (1 - jnp.asarray(b1, real) ** c))
    v_hat = _as(v, real) * (1 / (1 - jnp.asarray(b2, real) ** c))
    positive = v_hat > 0
    # |g| > 0 is False both for g == 0 and for NaN g.
    gate_closed = (jnp.asarray(count) >= warmup) & (jnp.asarray(count) > 0)
    acts = gate_closed & positive & (jnp.abs(g32) > 0)
    # Safe placeholder where v_hat is 0, so that no branch computes sqrt'(0) = inf (NaN in
    # jax.grad). Every filter maps a zero innovation to g itself, so the gate needs no
    # final select; the mask is used once, which keeps XLA from writing it to memory as a
    # separate boolean array (measured 1.8x the filter's time at 1e7 parameters on CPU).
    v_safe = jnp.where(positive, v_hat, 1.0)
    innovation = jnp.where(acts, g32 - m_hat, 0.0)
    return _Prior(g32, m_hat, v_safe, jnp.sqrt(v_safe), innovation, acts, c)


def _noise_variance(prior: _Prior, b1, kappa) -> jax.Array:
    """sigma^2 = max(max(v_hat - m_hat^2, 0) / (1 - rho_c), kappa * v_hat)."""
    b1, kappa = _real(b1), _real(kappa)
    b1c = jnp.asarray(b1, prior.v_hat.dtype) ** prior.count
    rho = jnp.minimum(_MAX_RHO, (1 - b1) * (1 + b1c) / ((1 + b1) * (1 - b1c)))
    spread = jnp.maximum(prior.v_hat - _abs2(prior.m_hat), 0.0) / (1 - rho)
    return jnp.maximum(spread, kappa * prior.v_hat)


def _clip_to(prior: _Prior, is_spike, threshold, unit) -> jax.Array:
    """m_hat + (d / |d|) * threshold * unit where is_spike (sign(d) for real d; for
    complex d the clip is along d, so the phase of the innovation is kept).

    The threshold is zeroed where no spike was flagged, so an infinite threshold never
    meets a zero cotangent (inf * 0 = NaN) in ``jax.grad``.
    """
    size = jnp.where(is_spike, threshold, 0.0) * unit
    return prior.m_hat + _phase(prior.innovation) * size


def _filter_result(g, prior: _Prior, filtered, is_spike) -> FilterResult:
    """Casts back to the gradient dtype and derives the gain.

    ``filtered`` must already equal ``g`` and ``is_spike`` be False where the gate is
    open; every filter gets that from the zero innovation there.
    """
    d = prior.innovation
    nonzero = d != 0
    gain = _real(jnp.where(nonzero, (filtered - prior.m_hat) / jnp.where(nonzero, d, 1.0), 1.0))
    gain = jnp.where(jnp.isfinite(gain), gain, 0.0)
    return FilterResult(filtered.astype(g.dtype), is_spike, gain.astype(jnp.float32))


def _is_concrete(value, target: float) -> bool:
    x = _validation.concrete_float(value)
    return x is not None and x == target


def kalman_filter_math(
    g: jax.Array,
    m: jax.Array,
    v: jax.Array,
    count: jax.Array | int,
    *,
    b1: float,
    b2: float,
    eta: float = 1.0,
    gamma: float = 10.0,
    warmup: int = 20,
    kappa: float = 1e-2,
) -> FilterResult:
    r"""The robust Kalman innovation filter on one array (README, "The filter").

    With :math:`\hat m, \hat v` the bias-corrected previous moments, :math:`s=\sqrt{\hat v}`,
    :math:`d = g - \hat m` and

    .. math::
      \rho_c = \min\!\Big(0.9999, \tfrac{(1-b_1)(1+b_1^c)}{(1+b_1)(1-b_1^c)}\Big), \quad
      \hat\sigma^2 = \max\!\Big(\tfrac{\max(\hat v - \hat m^2, 0)}{1-\rho_c},
                                \kappa \hat v\Big), \quad
      K = \max\!\big(\eta, 1 - \hat\sigma^2/d^2\big),

    .. math::
      \tilde g = \begin{cases} \hat m + \operatorname{sign}(d)\,\gamma s & |d| > \gamma s
                 \ \text{(spike)} \\ g - (1-K)\,d & \text{otherwise.} \end{cases}

    The gate (``c < warmup``, ``c == 0``, ``v == 0``, ``g == 0``, NaN ``g``) returns ``g``.
    By Chebyshev, at most :math:`1/\gamma^2` of clean steps are flagged as spikes,
    whatever the noise law. ``eta = 1`` skips the smoothing branch at trace time.

    Args:
      g: the raw gradient.
      m: the previous first moment :math:`m_{t-1}` (not bias corrected).
      v: the previous second moment :math:`v_{t-1}` (not bias corrected).
      count: completed steps :math:`c` (the moment state's count before this update).
      b1: decay of ``m``.
      b2: decay of ``v``.
      eta: gain floor in [0, 1]; 1 = no sub-threshold smoothing.
      gamma: spike threshold in RMS units, > 0; ``inf`` disables clipping.
      warmup: steps during which the filter is the identity.
      kappa: floor of the noise variance relative to :math:`\hat v`.

    Returns:
      A :class:`FilterResult`; ``filtered`` has ``g``'s dtype, arithmetic is float32
      (float64 for float64 inputs).

    Example:
      >>> import jax.numpy as jnp, filtered_optax as fo
      >>> r = fo.kalman_filter_math(jnp.array([100.0]), jnp.array([0.0]),
      ...                           jnp.array([1.0]), 50, b1=0.9, b2=0.999)
      >>> bool(r.is_spike[0])
      True

    References:
      Mehra, "On the identification of variances and adaptive Kalman filtering", IEEE
      TAC 1970 (covariance matching); Chebyshev's inequality for the threshold.
    """
    eta, gamma, kappa = _real(eta), _real(gamma), _real(kappa)
    prior = _prior(g, m, v, count, b1, b2, warmup)
    is_spike = jnp.abs(prior.innovation) > gamma * prior.scale
    if _is_concrete(eta, 1.0):
        smoothed = prior.g  # K = max(1, .) = 1: g - 0 * d == g exactly
    else:
        d = jnp.where(is_spike, 0.0, prior.innovation)
        d2 = _abs2(d)
        sigma2 = _noise_variance(prior, b1, kappa)
        gain = jnp.where(d2 > 0, jnp.maximum(eta, 1 - sigma2 / jnp.where(d2 > 0, d2, 1.0)), 1.0)
        smoothed = prior.g - (1 - gain) * d
    filtered = jnp.where(is_spike, _clip_to(prior, is_spike, gamma, prior.scale), smoothed)
    return _filter_result(g, prior, filtered, is_spike)


def spam_filter_math(g, m, v, count, *, b1, b2, threshold=5000.0, warmup=0) -> FilterResult:
    r"""SPAM's spike-aware clipping on one array.

    .. math:: \tilde g = \operatorname{sign}(g) \sqrt{\theta\, v_{t-1}}
              \quad\text{where } g^2 > \theta\, v_{t-1} \text{ and } v_{t-1} > 0

    ``v`` is the raw (not bias-corrected) second moment, as in SPAM. The ``v > 0`` gate
    keeps coordinates first seen late from locking at zero.

    References:
      Huang et al., "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM
      Training", arXiv:2501.06842.
    """
    del m
    prior = _prior(g, jnp.zeros_like(v), v, count, b1, b2, warmup)
    v_raw = jnp.where(prior.acts, _as(v, prior.v_hat.dtype), 1.0)
    bound = jnp.sqrt(_real(threshold) * v_raw)
    is_spike = prior.acts & (jnp.abs(prior.g) > bound)
    filtered = jnp.where(is_spike, _phase(prior.g) * bound, prior.g)
    return _filter_result(g, prior, filtered, is_spike)


def zscore_filter_math(g, m, v, count, *, b1, b2, gamma=5.0, warmup=20, kappa=1e-2) -> FilterResult:
    r"""Centred z-score clip: :math:`|d| > \gamma\hat\sigma \Rightarrow
    \tilde g = \hat m + \operatorname{sign}(d)\gamma\hat\sigma`, with :math:`\hat\sigma^2`
    as in :func:`kalman_filter_math`.

    Thresholds against the noise scale rather than the RMS, so it also flags moderate
    outliers on signal-dominated coordinates.
    """
    gamma = _real(gamma)
    prior = _prior(g, m, v, count, b1, b2, warmup)
    sigma = jnp.sqrt(_noise_variance(prior, b1, kappa))
    is_spike = jnp.abs(prior.innovation) > gamma * sigma
    filtered = jnp.where(is_spike, _clip_to(prior, is_spike, gamma, sigma), prior.g)
    return _filter_result(g, prior, filtered, is_spike)


def soft_clip_filter_math(g, m, v, count, *, b1, b2, gamma=10.0, warmup=20) -> FilterResult:
    r"""Soft clip: :math:`\tilde g = \hat m + \gamma s \tanh\big(d / (\gamma s)\big)`.

    Smooth in ``g``; close to the identity for :math:`|d| \ll \gamma s` and saturating at
    :math:`\hat m \pm \gamma s`. ``is_spike`` marks :math:`|d| > \gamma s`.
    """
    gamma = _real(gamma)
    prior = _prior(g, m, v, count, b1, b2, warmup)
    radius = gamma * prior.scale
    x = jnp.abs(prior.innovation) / radius  # |d| / r: the tanh acts on the modulus
    # An infinite innovation with a finite radius saturates at m_hat +- radius (the limit
    # of r * tanh(d / r)); computing d * tanh(x) / x there would give inf * 0 = NaN.
    saturated = jnp.isinf(x)
    # r * tanh(d / r) -> d as r -> inf; written through x so that gamma = inf (x = 0)
    # gives the identity instead of inf * 0.
    safe_x = jnp.where((x == 0) | saturated, 1.0, x)
    shrink = jnp.where(x == 0, 1.0, jnp.tanh(safe_x) / safe_x)
    d = jnp.where(saturated, 0.0, prior.innovation)
    # g - d (1 - shrink) rather than m_hat + d shrink: equal, and exactly g where d == 0.
    filtered = jnp.where(
        saturated, _clip_to(prior, saturated, gamma, prior.scale), prior.g - d * (1 - shrink)
    )
    return _filter_result(g, prior, filtered, jnp.abs(prior.innovation) > radius)


def _tree_stats(results, total_size: int) -> FilterStats:
    spikes = sum(jnp.sum(r.is_spike, dtype=jnp.float32) for r in results)
    gains = sum(jnp.sum(r.gain, dtype=jnp.float32) for r in results)
    n = max(total_size, 1)
    return FilterStats(jnp.asarray(spikes / n, jnp.float32), jnp.asarray(gains / n, jnp.float32))


def _materialized(fn: Callable[..., Any], count: jax.Array, *operands: jax.Array) -> Any:
    """``fn(*operands)``, computed once into its own buffer.

    XLA fuses an elementwise producer into each of its consumers. The filtered gradient
    feeds both moment updates, which overwrite the (donated) ``mu`` and ``nu`` in place
    while each also reads the other's old value through the filter, so fused it is
    computed twice and XLA copies both buffers every step. A conditional is a fusion
    boundary XLA keeps (an optimization barrier is dropped by the CPU pipeline), so the
    filter runs in one: both branches are ``fn``, on a predicate that XLA cannot fold.
    One conditional for the whole tree: on accelerators each one costs a predicate read.
    """
    return jax.lax.cond(jnp.asarray(count) >= 0, fn, fn, *operands)


def _filter_stage(
    name: str, math_fn: Callable[..., FilterResult], *, warmup: Any, stats: bool
) -> optax.GradientTransformationExtraArgs:
    """Maps ``math_fn(g, m, v, count, b1=, b2=)`` over the tree, reading prev_moments.

    The tree is filtered in one pass per leaf (see :func:`_materialized`); during warmup
    the gate inside the math returns the gradient unchanged.
    """

    def init_fn(params):
        del params
        if stats:
            return FilterStats(jnp.zeros([], jnp.float32), jnp.ones([], jnp.float32))
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, prev_moments: Moments | None = None, **extra):
        del params, extra
        if prev_moments is None:
            raise TypeError(
                f"{name} is a filter stage: it reads the previous moments through the "
                "keyword argument prev_moments=, which fo.with_moments(filter=...) "
                "supplies. Put it inside fo.with_moments instead of straight into "
                "optax.chain."
            )
        if prev_moments.mu is None or prev_moments.nu is None:
            raise TypeError(
                f"{name} reads both moments (mu and nu); pair it with fo.ema or fo.belief."
            )
        leaves, treedef = jax.tree.flatten(updates, is_leaf=lambda x: x is None)
        mus = treedef.flatten_up_to(prev_moments.mu)
        nus = treedef.flatten_up_to(prev_moments.nu)
        count = prev_moments.count

        def filter_tree(leaves, mus, nus):
            results = [
                None
                if g is None
                else math_fn(g, m, v, count, b1=prev_moments.b1, b2=prev_moments.b2)
                for g, m, v in zip(leaves, mus, nus)
            ]
            filtered = treedef.unflatten([None if r is None else r.filtered for r in results])
            if not stats:
                return filtered, state
            present = [r for r in results if r is not None]
            return filtered, _tree_stats(present, sum(math.prod(r.filtered.shape) for r in present))

        return _materialized(filter_tree, count, leaves, mus, nus)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@_record.recorded
def identity_filter() -> optax.GradientTransformationExtraArgs:
    r"""The identity filter :math:`\tilde g = g`: with it, ``with_moments`` is plain Adam.

    Returns:
      A filter stage for :func:`filtered_optax.with_moments`.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.with_moments(filter=fo.identity_filter())
    """

    def update_fn(updates, state, params=None, **extra):
        del params, extra
        return updates, state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


@_record.recorded
def kalman_filter(
    eta: float = 1.0,
    gamma: float = 10.0,
    warmup: int = 20,
    kappa: float = 1e-2,
    *,
    stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""The default filter: robust Kalman innovation filter with spike clipping.

    Smooths noise-sized deviations of the gradient from the trend with an adaptive gain
    :math:`K = \max(\eta, 1 - \hat\sigma^2/d^2)` and clips deviations beyond
    :math:`\gamma` RMS units to :math:`\hat m \pm \gamma s` before they enter ``m`` and
    ``v``; see :func:`kalman_filter_math` for the math. ``eta=1, gamma=inf`` is exactly
    the identity (short-circuited at trace time, so the optimizer is bitwise Adam).

    Args:
      eta: gain floor in [0, 1]; 1 = no sub-threshold smoothing.
      gamma: spike threshold in RMS units, > 0 (``float('inf')`` disables clipping).
      warmup: integer >= 0; the filter is the identity while ``count < warmup``.
      kappa: noise-variance floor relative to the second moment, >= 0.
      stats: keep :class:`FilterStats` (two scalars) in the state; read them with
        :func:`filtered_optax.filter_stats`.

    Returns:
      A filter stage for :func:`filtered_optax.with_moments`.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.with_moments(filter=fo.kalman_filter(eta=0.9, gamma=10.0))

    References:
      README, "The filter"; Mehra, "On the identification of variances and adaptive
      Kalman filtering", IEEE TAC 1970 (covariance matching).
    """
    _validation.check_range("eta", eta, low=0.0, high=1.0)
    _validation.check_range("gamma", gamma, low=0.0, low_open=True, hint=GAMMA_OFF_HINT)
    _validation.check_non_negative_int("warmup", warmup)
    _validation.check_non_negative("kappa", kappa)
    _validation.check_bool("stats", stats)
    if _is_concrete(eta, 1.0) and _is_concrete(gamma, math.inf) and not stats:
        return identity_filter()

    def math_fn(g, m, v, count, *, b1, b2):
        return kalman_filter_math(
            g, m, v, count, b1=b1, b2=b2, eta=eta, gamma=gamma, warmup=warmup, kappa=kappa
        )

    return _filter_stage("fo.kalman_filter", math_fn, warmup=warmup, stats=stats)


@_record.recorded
def spam_filter(
    threshold: float = 5000.0, warmup: int = 0, *, stats: bool = False
) -> optax.GradientTransformationExtraArgs:
    r"""SPAM's spike clipping rule as a filter stage.

    :math:`\tilde g = \operatorname{sign}(g)\sqrt{\theta v_{t-1}}` where
    :math:`g^2 > \theta v_{t-1}` and :math:`v_{t-1} > 0`; see :func:`spam_filter_math`.

    Args:
      threshold: :math:`\theta > 0`; SPAM's default is 5000.
      warmup: integer >= 0; the filter is the identity while ``count < warmup``.
      stats: keep :class:`FilterStats` in the state.

    Returns:
      A filter stage for :func:`filtered_optax.with_moments`.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.with_moments(filter=fo.spam_filter(5000.0))

    References:
      Huang et al., "SPAM: Spike-Aware Adam with Momentum Reset", arXiv:2501.06842.
    """
    _validation.check_range(
        "threshold",
        threshold,
        low=0.0,
        low_open=True,
        hint="use threshold=float('inf') to turn the clip off",
    )
    _validation.check_non_negative_int("warmup", warmup)
    _validation.check_bool("stats", stats)

    def math_fn(g, m, v, count, *, b1, b2):
        return spam_filter_math(g, m, v, count, b1=b1, b2=b2, threshold=threshold, warmup=warmup)

    return _filter_stage("fo.spam_filter", math_fn, warmup=warmup, stats=stats)


@_record.recorded
def zscore_filter(
    gamma: float = 5.0, warmup: int = 20, kappa: float = 1e-2, *, stats: bool = False
) -> optax.GradientTransformationExtraArgs:
    r"""Centred z-score clip as a filter stage (see :func:`zscore_filter_math`).

    An ablation of the default filter (README, "The stages, for ablations"): the same
    noise estimate :math:`\hat\sigma`, a hard clip at :math:`\gamma\hat\sigma` and no
    smoothing.

    Args:
      gamma: threshold in units of the estimated noise standard deviation, > 0.
      warmup: integer >= 0; identity while ``count < warmup``.
      kappa: noise-variance floor relative to the second moment, >= 0.
      stats: keep :class:`FilterStats` in the state.

    Returns:
      A filter stage for :func:`filtered_optax.with_moments`.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.with_moments(filter=fo.zscore_filter(gamma=5.0))

    References:
      Mehra, IEEE TAC 1970 (the noise variance by covariance matching, as in
      :func:`kalman_filter_math`).
    """
    _validation.check_range("gamma", gamma, low=0.0, low_open=True, hint=CLIP_OFF_HINT)
    _validation.check_non_negative_int("warmup", warmup)
    _validation.check_non_negative("kappa", kappa)
    _validation.check_bool("stats", stats)

    def math_fn(g, m, v, count, *, b1, b2):
        return zscore_filter_math(
            g, m, v, count, b1=b1, b2=b2, gamma=gamma, warmup=warmup, kappa=kappa
        )

    return _filter_stage("fo.zscore_filter", math_fn, warmup=warmup, stats=stats)


@_record.recorded
def soft_clip_filter(
    gamma: float = 10.0, warmup: int = 20, *, stats: bool = False
) -> optax.GradientTransformationExtraArgs:
    r"""Soft clip as a filter stage (see :func:`soft_clip_filter_math`).

    An ablation of the default filter's hard clip (README, "The stages, for ablations"):
    deviations saturate smoothly at :math:`\pm\gamma s` through a tanh.

    Args:
      gamma: saturation radius in RMS units, > 0.
      warmup: integer >= 0; identity while ``count < warmup``.
      stats: keep :class:`FilterStats` in the state.

    Returns:
      A filter stage for :func:`filtered_optax.with_moments`; spikes in its statistics
      are the deviations beyond the radius.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.with_moments(filter=fo.soft_clip_filter(gamma=10.0))
    """
    _validation.check_range("gamma", gamma, low=0.0, low_open=True, hint=CLIP_OFF_HINT)
    _validation.check_non_negative_int("warmup", warmup)
    _validation.check_bool("stats", stats)

    def math_fn(g, m, v, count, *, b1, b2):
        return soft_clip_filter_math(g, m, v, count, b1=b1, b2=b2, gamma=gamma, warmup=warmup)

    return _filter_stage("fo.soft_clip_filter", math_fn, warmup=warmup, stats=stats)


def filter_stats(state: optax.OptState) -> dict[str, jax.Array] | None:
    """Reads the filter statistics from an optimizer state.

    Finds the (first) :class:`FilterStats` anywhere in ``state`` - inside chains,
    ``inject_hyperparams``, ``MultiSteps`` and the like, and in a Flax
    ``nnx.Optimizer``'s ``opt_state``. With several filters (e.g. one per branch of
    ``optax.partition``), :func:`filtered_optax.read_stats` names each one.

    Args:
      state: an optimizer state.

    Returns:
      ``{"spike_fraction": ..., "mean_gain": ...}`` for the last step, or None when the
      optimizer was built without ``stats=True``.

    Example:
      >>> import jax.numpy as jnp, filtered_optax as fo
      >>> tx = fo.filtered_adam(1e-3, stats=True)
      >>> sorted(fo.filter_stats(tx.init({"w": jnp.zeros(3)})))
      ['mean_gain', 'spike_fraction']
    """
    found = [
        x
        for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, FilterStats))
        if isinstance(x, FilterStats)
    ]
    if not found:
        return None
    # jnp.asarray also unwraps containers such as flax.nnx's OptArray.
    return {k: jnp.asarray(v) for k, v in found[0]._asdict().items()}
