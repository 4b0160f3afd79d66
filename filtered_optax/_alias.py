"""Flat, user-facing optimizers built from the stages.

Every alias takes numeric hyperparameters only (plus optional dtypes and masks, as
optax's aliases do), so ``optax.inject_hyperparams(fo.filtered_adam)(learning_rate=...,
gamma=...)`` works without ``static_args``. The classic optimizers of the article's
comparison table are rebuilt from the same stages and equal optax's own step for step.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from filtered_optax import _record, _validation
from filtered_optax._filters import kalman_filter
from filtered_optax._moments import (
    WithMomentsState,
    belief,
    ema,
    heavy_ball,
    second_moment,
    with_moments,
)
from filtered_optax._scaling import momentum_output, normalize, rms_normalize
from filtered_optax._types import MaskOrFn, ScalarOrSchedule


def with_learning_rate(
    tx: optax.GradientTransformation,
    learning_rate: ScalarOrSchedule,
    weight_decay: float | None = None,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    """Appends the optional decoupled weight decay and the learning rate (negated).

    ``weight_decay=None`` means no decay stage (for the aliases without one); the AdamW
    aliases check theirs first, so None there is a ``TypeError``.
    """
    _validation.check_learning_rate(learning_rate)
    stages = [tx]
    if weight_decay is not None:
        # optax.add_decayed_weights accepts a schedule, and so do optax's adamw and ours.
        _validation.check_non_negative("weight_decay", weight_decay, schedule=True)
        stages.append(optax.add_decayed_weights(weight_decay, mask))
    stages.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*stages)


def _kalman_adam(
    b1: Any, b2: Any, eps: Any, kalman: tuple[Any, ...], mu_dtype: Any, nu_dtype: Any, stats: bool
) -> optax.GradientTransformationExtraArgs:
    """``with_moments(kalman_filter(*kalman), ema(b1, b2), normalize(eps))``: the filtered
    Adam family's stage before weight decay and the learning rate."""
    _validation.check_non_negative("eps", eps)
    return with_moments(
        filter=kalman_filter(*kalman, stats=stats),
        moments=ema(b1, b2),
        scale=normalize(eps),
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )


@_record.recorded
def filtered_adam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eta: float = 1.0,
    gamma: float = 10.0,
    warmup: int = 20,
    kappa: float = 1e-2,
    mu_dtype: Any = None,
    *,
    nu_dtype: Any = None,
    stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam with the robust Kalman gradient filter in front of its moments.

    .. math::
      \tilde g_t = F(g_t, m_{t-1}, v_{t-1}), \quad
      m_t = b_1 m_{t-1} + (1-b_1)\tilde g_t, \quad
      v_t = b_2 v_{t-1} + (1-b_2)\tilde g_t^2, \quad
      \theta_{t+1} = \theta_t - \alpha_t \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}

    with :math:`F` = :func:`filtered_optax.kalman_filter_math`. The state is Adam's
    (``count``, ``mu``, ``nu``): no extra memory. ``eta=1, gamma=inf`` is bitwise
    ``optax.adam``.

    Args:
      learning_rate: a constant >= 0 or a schedule.
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: denominator stabilizer, >= 0.
      eta: gain floor in [0, 1]; 1 = no sub-threshold smoothing.
      gamma: spike threshold in RMS units, > 0; ``inf`` disables clipping.
      warmup: steps (integer >= 0) during which the filter is the identity.
      kappa: noise-variance floor relative to the second moment, >= 0.
      mu_dtype: storage dtype of the first moment (e.g. ``jnp.bfloat16``).
      nu_dtype: storage dtype of the second moment; arithmetic stays float32.
      stats: keep the filter's spike fraction and mean gain (two scalars) in the state;
        read them with :func:`filtered_optax.filter_stats`.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp, optax, filtered_optax as fo
      >>> tx = fo.filtered_adam(learning_rate=1e-3, gamma=10.0)
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)
      >>> params = optax.apply_updates(params, updates)

    References:
      Kingma & Ba, arXiv:1412.6980 (Adam); README, "The filter" (the filter).
    """
    stage = _kalman_adam(b1, b2, eps, (eta, gamma, warmup, kappa), mu_dtype, nu_dtype, stats)
    return with_learning_rate(stage, learning_rate)


@_record.recorded
def filtered_adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    eta: float = 1.0,
    gamma: float = 10.0,
    warmup: int = 20,
    kappa: float = 1e-2,
    mu_dtype: Any = None,
    mask: MaskOrFn = None,
    *,
    nu_dtype: Any = None,
    stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r""":func:`filtered_adam` with decoupled weight decay.

    .. math:: \theta_{t+1} = \theta_t - \alpha_t (u_t + \lambda \theta_t)

    Args:
      learning_rate: a constant >= 0 or a schedule.
      b1, b2, eps, eta, gamma, warmup, kappa, mu_dtype, nu_dtype, stats: as in
        :func:`filtered_adam`.
      weight_decay: :math:`\lambda \ge 0` (optax.adamw's default 1e-4).
      mask: which parameters decay, as in ``optax.adamw``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.filtered_adamw(learning_rate=1e-3, weight_decay=0.1)

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101.
    """
    _validation.check_non_negative("weight_decay", weight_decay, schedule=True)
    stage = _kalman_adam(b1, b2, eps, (eta, gamma, warmup, kappa), mu_dtype, nu_dtype, stats)
    return with_learning_rate(stage, learning_rate, weight_decay, mask)


@_record.recorded
def adam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam from the stages: identity filter, :func:`ema`, :func:`normalize`.

    .. math:: \theta_{t+1} = \theta_t - \alpha_t \frac{\hat m_t}{\sqrt{\hat v_t +
              \epsilon_{root}} + \epsilon}

    Equal to ``optax.adam`` with the same arguments.

    Args:
      learning_rate: a constant >= 0 or a schedule.
      b1, b2: moment decays in [0, 1).
      eps, eps_root: stabilizers outside / inside the square root, >= 0.
      mu_dtype: storage dtype of the first moment.
      nesterov: NAdam's look-ahead.
      nu_dtype: storage dtype of the second moment (optax has no such option).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.adam(1e-3)

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", arXiv:1412.6980.
    """
    return with_learning_rate(
        with_moments(
            moments=ema(b1, b2),
            scale=normalize(eps, eps_root, nesterov=nesterov),
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        learning_rate,
    )


@_record.recorded
def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: float = 1e-4,
    mask: MaskOrFn = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdamW from the stages: :func:`adam` plus decoupled weight decay.

    .. math:: \theta_{t+1} = \theta_t - \alpha_t (u_t + \lambda\theta_t)

    Equal to ``optax.adamw`` with the same arguments.

    Args:
      learning_rate: a constant >= 0 or a schedule.
      b1, b2, eps, eps_root, mu_dtype, nesterov, nu_dtype: as in :func:`adam`.
      weight_decay: :math:`\lambda \ge 0`.
      mask: which parameters decay, as in ``optax.adamw``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.adamw(1e-3, weight_decay=0.1)

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101.
    """
    _validation.check_non_negative("weight_decay", weight_decay, schedule=True)
    return with_learning_rate(
        with_moments(
            moments=ema(b1, b2),
            scale=normalize(eps, eps_root, nesterov=nesterov),
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        learning_rate,
        weight_decay,
        mask,
    )


@_record.recorded
def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""RMSProp from the stages: :func:`second_moment` and :func:`rms_normalize`.

    .. math:: v_t = \rho v_{t-1} + (1-\rho) g_t^2, \quad
              \theta_{t+1} = \theta_t - \alpha_t \frac{g_t}{\sqrt{v_t + \epsilon}}

    and, ``centered``, :math:`m_t = \rho m_{t-1} + (1-\rho) g_t` with
    :math:`v_t - m_t^2` in place of :math:`v_t`. Equal to ``optax.rmsprop`` with the same
    arguments (in the same positional order); ``momentum`` adds optax's trace after the
    learning rate, as optax does.

    Args:
      learning_rate: a constant >= 0 or a schedule.
      decay: :math:`\rho` in [0, 1).
      eps: stabilizer, >= 0.
      initial_scale: starting value of ``v``.
      eps_in_sqrt: put ``eps`` inside the square root.
      centered: divide by the (estimated) standard deviation of the gradient rather than
        its root mean square; keeps one more parameter-sized buffer, ``mu``.
      momentum: optional heavy-ball momentum applied to the scaled update.
      nesterov: Nesterov form of that momentum.
      bias_correction: divide ``v`` (and ``m``) by ``1 - decay^t``.
      mu_dtype: storage dtype of the momentum trace (None = the parameters' dtype).
      nu_dtype: storage dtype of ``v`` (None = the parameters' dtype); arithmetic is float32.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.rmsprop(1e-3, decay=0.9, centered=True)

    References:
      Tieleman & Hinton, Lecture 6.5 of "Neural Networks for Machine Learning", 2012;
      Graves, arXiv:1308.0850 (centred).
    """
    _validation.check_bool("nesterov", nesterov)
    tx = with_moments(
        moments=second_moment(decay, initial_scale, centered=centered),
        scale=rms_normalize(
            eps, eps_in_sqrt=eps_in_sqrt, bias_correction=bias_correction, centered=centered
        ),
        nu_dtype=nu_dtype,
    )
    tx = with_learning_rate(tx, learning_rate)
    mu_dtype = _validation.check_float_dtype("mu_dtype", mu_dtype, allow_complex=True)
    if momentum is None:
        return tx
    _validation.check_non_negative("momentum", momentum)
    # optax.rmsprop applies the momentum trace after the learning rate; keep its order.
    return optax.chain(
        tx, optax.trace(decay=momentum, nesterov=nesterov, accumulator_dtype=mu_dtype)
    )


@_record.recorded
def adabelief(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    *,
    nesterov: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaBelief from the stages: :func:`belief` and :func:`normalize`.

    .. math:: s_t = b_2 s_{t-1} + (1-b_2)(g_t - m_t)^2 + \epsilon_{root}, \quad
              \theta_{t+1} = \theta_t - \alpha_t \frac{\hat m_t}{\sqrt{\hat s_t} + \epsilon}

    Equal to ``optax.adabelief`` with the same arguments.

    Args:
      learning_rate: a constant >= 0 or a schedule.
      b1, b2: moment decays in [0, 1).
      eps: denominator stabilizer, >= 0.
      eps_root: added to the second moment each step, >= 0.
      nesterov: Nesterov look-ahead on the first moment.
      mu_dtype, nu_dtype: storage dtypes of the two moments (None = the parameters');
        arithmetic is float32.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.adabelief(1e-3)

    References:
      Zhuang et al., "AdaBelief Optimizer", arXiv:2010.07468.
    """
    return with_learning_rate(
        with_moments(
            moments=belief(b1, b2, eps_root),
            scale=normalize(eps, nesterov=nesterov),
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        learning_rate,
    )


@_record.recorded
def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
    *,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""SGD, optionally with (Nesterov) momentum, from :func:`heavy_ball` and
    :func:`momentum_output`.

    .. math:: m_t = \mu m_{t-1} + g_t, \quad
              \theta_{t+1} = \theta_t - \alpha_t\, (m_t \ \text{or}\ g_t + \mu m_t)

    Equal to ``optax.sgd`` with the same arguments (in the same positional order).

    Args:
      learning_rate: a constant >= 0 or a schedule.
      momentum: :math:`\mu \ge 0`, or None for plain SGD (no state).
      nesterov: Nesterov look-ahead.
      accumulator_dtype: storage dtype of the momentum ``m`` (None = the parameters'
        dtype), optax's name for it.
      mu_dtype: the same, under the name the other optimizers of this package use; give
        at most one of the two.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.sgd(1e-2, momentum=0.9, nesterov=True)

    References:
      Sutskever et al., "On the importance of initialization and momentum in deep
      learning", ICML 2013.
    """
    if accumulator_dtype is not None and mu_dtype is not None:
        raise TypeError(
            "accumulator_dtype and mu_dtype name the same thing (the momentum's storage "
            f"dtype); give one of them, got accumulator_dtype={accumulator_dtype!r} and "
            f"mu_dtype={mu_dtype!r}."
        )
    name = "mu_dtype" if accumulator_dtype is None else "accumulator_dtype"
    given = accumulator_dtype if mu_dtype is None else mu_dtype
    dtype = _validation.check_float_dtype(name, given, allow_complex=True)
    _validation.check_bool("nesterov", nesterov)
    if momentum is None:
        return with_learning_rate(optax.identity(), learning_rate)
    return with_learning_rate(
        _trace_state(
            with_moments(
                moments=heavy_ball(momentum),
                scale=momentum_output(nesterov=nesterov),
                mu_dtype=dtype,
            )
        ),
        learning_rate,
    )


def _trace_state(
    tx: optax.GradientTransformationExtraArgs,
) -> optax.GradientTransformationExtraArgs:
    """``with_moments(heavy_ball, momentum_output)`` keeping optax.sgd's state layout.

    The state is ``optax.TraceState(trace=m)``, as ``optax.sgd``'s, so checkpoints are
    interchangeable and ``optax.tree.get(state, "trace")`` works. Neither stage reads the
    step count or holds state of its own, so ``m`` is all there is to keep.
    """

    def unpack(state: optax.TraceState) -> WithMomentsState:
        empty = optax.EmptyState()
        return WithMomentsState(jnp.zeros([], jnp.int32), state.trace, None, empty, empty)

    def init_fn(params):
        return optax.TraceState(trace=tx.init(params).mu)

    def update_fn(updates, state, params=None, **extra_args):
        updates, new = tx.update(updates, unpack(state), params, **extra_args)
        return updates, optax.TraceState(trace=new.mu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
