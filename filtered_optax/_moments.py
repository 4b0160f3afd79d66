"""The moment-owning combinator: filter -> moment rule -> scale.

``with_moments`` owns the only ``count`` / ``mu`` / ``nu`` buffers of an Adam-family
optimizer. Per step it runs three pluggable stages:

    g~  = filter(g;   prev_moments = (count_{t-1}, m_{t-1}, v_{t-1}))
    m, v = rule(g~, m_{t-1}, v_{t-1})
    u   = scale(g~;   moments = (count_t, m_t, v_t))

A filter or scale stage is an ordinary ``optax.GradientTransformationExtraArgs`` that
reads the moments through a keyword-only extra argument (``prev_moments=`` or
``moments=``), a read-only :class:`Moments` view. Stages hold no parameter-sized state,
so a filtered Adam holds exactly Adam's buffers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import tree as otu

from filtered_optax import _record, _validation
from filtered_optax._filters import identity_filter
from filtered_optax._scaling import normalize
from filtered_optax._types import MomentRule, Moments, Updates


class WithMomentsState(NamedTuple):
    """State of :func:`with_moments`, with optax's field names.

    ``optax.tree.get(state, "mu")`` and ``optax.tree.get(state, "nu")`` work as they do
    for ``optax.scale_by_adam``. ``filter_state`` and ``scale_state`` hold only scalars
    (or nothing).
    """

    count: jax.Array
    mu: Updates
    nu: Updates
    filter_state: optax.OptState
    scale_state: optax.OptState


@_record.recorded
def ema(b1: float = 0.9, b2: float = 0.999) -> MomentRule:
    r"""Adam's moment rule: exponential moving averages of g and g^2.

    .. math::
      m_t = b_1 m_{t-1} + (1 - b_1) \tilde g_t, \qquad
      v_t = b_2 v_{t-1} + (1 - b_2) \tilde g_t^2

    Args:
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second moment, in [0, 1).

    Returns:
      A :class:`MomentRule` for :func:`with_moments`.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.with_moments(moments=fo.ema(0.9, 0.999), scale=fo.normalize(1e-8))

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", arXiv:1412.6980.
    """
    _validation.check_decay("b1", b1)
    _validation.check_decay("b2", b2)

    def init(params):
        return otu.zeros_like(params), otu.zeros_like(params)

    def update(g, mu, nu):
        return otu.update_moment(g, mu, b1, 1), otu.update_moment_per_elem_norm(g, nu, b2, 2)

    return MomentRule(init, update, b1, b2)


@_record.recorded
def belief(b1: float = 0.9, b2: float = 0.999, eps_root: float = 1e-16) -> MomentRule:
    r"""AdaBelief's moment rule: the second moment is the centred "belief" variance.

    .. math::
      m_t = b_1 m_{t-1} + (1 - b_1) \tilde g_t, \qquad
      s_t = b_2 s_{t-1} + (1 - b_2) (\tilde g_t - m_t)^2 + \epsilon_{root}

    Args:
      b1: decay of the first moment, in [0, 1).
      b2: decay of the centred second moment, in [0, 1).
      eps_root: added to the second moment every step, as in ``optax.scale_by_belief``.

    Returns:
      A :class:`MomentRule` for :func:`with_moments`.

    References:
      Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
      Gradients", arXiv:2010.07468.
    """
    _validation.check_decay("b1", b1)
    _validation.check_decay("b2", b2)
    _validation.check_non_negative("eps_root", eps_root)

    def init(params):
        return otu.zeros_like(params), otu.zeros_like(params)

    def update(g, mu, nu):
        mu = otu.update_moment(g, mu, b1, 1)
        nu = otu.update_moment_per_elem_norm(otu.sub(g, mu), nu, b2, 2)
        return mu, jax.tree.map(lambda v: v + eps_root, nu)

    return MomentRule(init, update, b1, b2)


@_record.recorded
def second_moment(
    decay: float = 0.9, initial_scale: float = 0.0, *, centered: bool = False
) -> MomentRule:
    r"""RMSProp's moment rule: an EMA of g^2 (and, centred, of g).

    .. math:: v_t = \rho v_{t-1} + (1 - \rho) |\tilde g_t|^2, \qquad
              m_t = \rho m_{t-1} + (1 - \rho) \tilde g_t \ \text{(centered only)}

    Args:
      decay: the decay rho, in [0, 1).
      initial_scale: starting value of ``v`` (``optax.rmsprop``'s ``initial_scale``).
      centered: also keep the EMA ``m`` of the gradient, for the centred RMSProp of
        ``optax.rmsprop(centered=True)`` (pair with ``fo.rms_normalize(centered=True)``).

    Returns:
      A :class:`MomentRule` whose ``mu`` is None unless ``centered``.

    References:
      Tieleman & Hinton, Lecture 6.5 of "Neural Networks for Machine Learning", 2012;
      Graves, "Generating Sequences With Recurrent Neural Networks", arXiv:1308.0850
      (the centred form).
    """
    _validation.check_decay("decay", decay)
    _validation.check_non_negative("initial_scale", initial_scale)
    _validation.check_bool("centered", centered)

    def init(params):
        return (otu.zeros_like(params) if centered else None), otu.full_like(params, initial_scale)

    def update(g, mu, nu):
        mu = otu.update_moment(g, mu, decay, 1) if centered else None
        return mu, otu.update_moment_per_elem_norm(g, nu, decay, 2)

    return MomentRule(init, update, decay if centered else 0.0, decay)


@_record.recorded
def heavy_ball(momentum: float = 0.9) -> MomentRule:
    r"""SGD's momentum rule: an undamped trace, no second moment is stored.

    .. math:: m_t = \mu\, m_{t-1} + \tilde g_t

    Args:
      momentum: the momentum mu, >= 0.

    Returns:
      A :class:`MomentRule` whose ``nu`` is None.

    References:
      Polyak, "Some methods of speeding up the convergence of iteration methods", 1964.
    """
    _validation.check_non_negative("momentum", momentum)

    def init(params):
        return otu.zeros_like(params), None

    def update(g, mu, nu):
        del nu
        return jax.tree.map(lambda m, x: x + momentum * m, mu, g), None

    return MomentRule(init, update, momentum, 0.0)


def _at_least_float32(dtype: Any) -> Any:
    """The wider of ``dtype`` and float32: bfloat16 computes in float32, float64 stays."""
    return jnp.promote_types(dtype, jnp.float32)


@_record.recorded
def ema_momentum(beta: float = 0.95, b2: float | None = None) -> MomentRule:
    r"""Muon's moment rule: momentum in EMA form, computed at float32 or wider.

    .. math::
      m_t = \beta m_{t-1} + (1 - \beta) \tilde g_t, \qquad
      v_t = b_2 v_{t-1} + (1 - b_2) \tilde g_t^2 \ \text{(only when } b_2 \text{ is given)}

    The arithmetic runs in the wider of the gradient's dtype and float32 (bfloat16
    gradients and momenta are upcast, float64 stays float64); :func:`with_moments` casts
    ``m`` back to its storage dtype. ``v`` exists only for a filter, which reads both
    moments: it is stored at float32 or the parameters' dtype if wider.

    Args:
      beta: momentum decay in [0, 1).
      b2: decay of the second moment in [0, 1), or None to keep none (plain Muon).

    Returns:
      A :class:`MomentRule` whose ``nu`` is None unless ``b2`` is given.

    Example:
      >>> import filtered_optax as fo
      >>> rule = fo.ema_momentum(0.95)

    References:
      Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024
      (github.com/KellerJordan/Muon): ``momentum.lerp_(grad, 1 - beta)``.
    """
    _validation.check_decay("beta", beta)
    keep_nu = b2 is not None
    if keep_nu:
        _validation.check_decay("b2", b2)

    def init(params):
        nu = jax.tree.map(lambda p: jnp.zeros(p.shape, _at_least_float32(p.dtype)), params)
        return otu.zeros_like(params), nu if keep_nu else None

    def update(g, mu, nu):
        def wide(*xs):
            dtype = _at_least_float32(jnp.result_type(*xs))
            return [x.astype(dtype) for x in xs]

        def momentum(m, x):
            m, x = wide(m, x)
            return beta * m + (1 - beta) * x

        def second(v, x):
            v, x = wide(v, x)
            return b2 * v + (1 - b2) * x * x

        mu_new = jax.tree.map(momentum, mu, g)
        return mu_new, jax.tree.map(second, nu, g) if keep_nu else None

    return MomentRule(init, update, beta, b2 if keep_nu else 0.0)


def _as_storage(tree: Any, dtype: Any) -> Any:
    """Initial buffers in their storage dtype (None keeps each leaf's own).

    A real storage dtype for complex parameters keeps the real part explicitly: the initial
    values are real (zeros, ``initial_scale``), and JAX deprecates implicit complex → real
    casts.
    """
    if dtype is None:
        return tree

    def cast(x: jax.Array) -> jax.Array:
        if jnp.iscomplexobj(x) and not jnp.issubdtype(dtype, jnp.complexfloating):
            x = jnp.real(x)
        return x.astype(dtype)

    return jax.tree.map(cast, tree)


def _call_stage(stage: optax.GradientTransformation, updates, state, params, extra):
    if isinstance(stage, optax.GradientTransformationExtraArgs):
        return stage.update(updates, state, params, **extra)
    return stage.update(updates, state, params)


# Which slot of with_moments each of our recorded constructors belongs in.
_FILTERS = ("identity_filter", "kalman_filter", "spam_filter", "zscore_filter", "soft_clip_filter")
_RULES = ("ema", "belief", "second_moment", "heavy_ball", "ema_momentum")
_SCALES = ("normalize", "rms_normalize", "momentum_output", "sign_update", "orthogonal_update")
_KIND = {
    **{f"fo.{n}": "filter" for n in _FILTERS},
    **{f"fo.{n}": "moments" for n in _RULES},
    **{f"fo.{n}": "scale" for n in _SCALES},
}
_SLOT = {
    "filter": "a filter stage (fo.kalman_filter(), fo.spam_filter(), fo.zscore_filter(), "
    "fo.soft_clip_filter(), fo.identity_filter(), or your own transformation reading "
    "prev_moments=)",
    "moments": "a moment rule (a fo.MomentRule such as fo.ema(b1, b2), fo.belief(b1, b2), "
    "fo.second_moment(decay), fo.heavy_ball(momentum) or fo.ema_momentum(beta))",
    "scale": "a scale stage (fo.normalize(), fo.rms_normalize(), fo.momentum_output(), "
    "fo.sign_update(), fo.orthogonal_update(), or your own transformation reading moments=)",
}


def _check_stage(slot: str, stage: Any) -> None:
    """Raises ``TypeError`` when ``stage`` does not belong in ``with_moments(slot=...)``.

    Our own constructors are recognised by their record, so a moment rule or a scale
    stage given as ``filter=`` (and so on) is named with the slot it belongs in. A
    transformation of unknown origin is accepted in the filter and scale slots (a custom
    stage) if it has ``init`` and ``update``.
    """
    record = _record.lookup(stage)
    kind = None if record is None else _KIND.get(record.name, "optimizer")
    if kind == slot:
        return
    if kind is None and isinstance(stage, MomentRule) == (slot == "moments"):
        if slot == "moments" or (hasattr(stage, "init") and hasattr(stage, "update")):
            return  # a custom moment rule or a custom stage
    if kind == "optimizer":
        got = f"{record.name}(...), a complete optimizer, not a stage"
    elif kind is not None:
        got = f"{record.name}(), {_SLOT[kind].split(' (')[0]}: pass it as {kind}="
    elif isinstance(stage, MomentRule):
        got = "a fo.MomentRule: pass it as moments="
    else:
        got = type(stage).__name__
    raise TypeError(f"{slot}= of fo.with_moments expects {_SLOT[slot]}; got {got}.")


def with_moments(
    *,
    filter: optax.GradientTransformation | None = None,  # noqa: A002 - the stage's name
    moments: MomentRule | None = None,
    scale: optax.GradientTransformation | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Owns the moment buffers and runs filter -> moment rule -> scale.

    .. math::
      \tilde g_t = F(g_t;\ m_{t-1}, v_{t-1}, c), \quad
      (m_t, v_t) = R(\tilde g_t, m_{t-1}, v_{t-1}), \quad
      u_t = S(\tilde g_t;\ m_t, v_t, c + 1)

    ``filter`` receives ``prev_moments=Moments(count, mu, nu, b1, b2)`` holding the
    buffers *before* this step; ``scale`` receives ``moments=`` holding them after it.
    Further extra arguments given to ``update`` are passed on to both stages.

    Args:
      filter: a filter stage (default: identity, i.e. no filtering).
      moments: the moment rule (default: :func:`ema` with b1=0.9, b2=0.999).
      scale: a scale stage (default: :func:`normalize` with eps=1e-8).
      mu_dtype: storage dtype of ``mu`` (e.g. ``jnp.bfloat16``), None = the parameters'.
      nu_dtype: storage dtype of ``nu`` likewise. Storage only: the moment rule computes in
        the wider of the gradient's and the buffer's dtype (float32 for float32 gradients),
        the filter always in float32, and the buffers are cast back at the end of the step.
        bfloat16 storage of both moments halves the state's bytes.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is
      :class:`WithMomentsState`.

    Example:
      >>> import optax, filtered_optax as fo
      >>> tx = optax.chain(
      ...     fo.with_moments(filter=fo.kalman_filter(eta=1.0, gamma=10.0),
      ...                     moments=fo.ema(0.9, 0.999), scale=fo.normalize(1e-8)),
      ...     optax.scale_by_learning_rate(1e-3))

    References:
      The stage split follows optax's ``scale_by_adam`` (Kingma & Ba, arXiv:1412.6980).
    """
    filter = identity_filter() if filter is None else filter  # noqa: A001
    moments = ema() if moments is None else moments
    scale = normalize() if scale is None else scale
    _check_stage("filter", filter)
    _check_stage("moments", moments)
    _check_stage("scale", scale)
    mu_dtype = _validation.check_float_dtype("mu_dtype", mu_dtype, allow_complex=True)
    nu_dtype = _validation.check_float_dtype("nu_dtype", nu_dtype)

    def init_fn(params):
        _validation.check_leaf_dtypes(params, "parameter", owner="fo.with_moments")
        mu, nu = moments.init(params)
        return WithMomentsState(
            count=jnp.zeros([], jnp.int32),
            mu=_as_storage(mu, mu_dtype),
            nu=_as_storage(nu, nu_dtype),
            filter_state=filter.init(params),
            scale_state=scale.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        for reserved in ("prev_moments", "moments"):
            if reserved in extra_args:
                raise TypeError(
                    f"with_moments supplies the {reserved}= argument to its stages itself; "
                    "do not pass it to update()."
                )
        _validation.check_leaf_dtypes(updates, "gradient", owner="fo.with_moments")
        _validation.check_like_state(updates, state.nu if state.mu is None else state.mu)
        prev = Moments(state.count, state.mu, state.nu, moments.b1, moments.b2)
        filtered, filter_state = _call_stage(
            filter, updates, state.filter_state, params, dict(extra_args, prev_moments=prev)
        )
        mu, nu = moments.update(filtered, state.mu, state.nu)
        count = optax.safe_increment(state.count)
        new = Moments(count, mu, nu, moments.b1, moments.b2)
        updates, scale_state = _call_stage(
            scale, filtered, state.scale_state, params, dict(extra_args, moments=new)
        )
        return updates, WithMomentsState(
            count=count,
            mu=otu.cast_like(mu, state.mu),
            nu=otu.cast_like(nu, state.nu),
            filter_state=filter_state,
            scale_state=scale_state,
        )

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    stages = dict(filter=filter, moments=moments, scale=scale)
    return _record.record(tx, "fo.with_moments", dict(stages, mu_dtype=mu_dtype, nu_dtype=nu_dtype))
