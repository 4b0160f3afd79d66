"""Scale stages: turn the (filtered) gradient and the new moments into an update.

A scale stage reads the moments *after* this step's moment rule, through the
keyword-only extra argument ``moments=`` that :func:`filtered_optax.with_moments`
supplies. Used straight in ``optax.chain`` it raises a ``TypeError`` saying so.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from optax import tree as otu

from filtered_optax import _record, _validation
from filtered_optax._types import Moments


def require_moments(
    stage: str, moments: Moments | None, *, need_mu: bool, need_nu: bool
) -> Moments:
    """The ``moments=`` a scale stage received, or a ``TypeError`` saying what is missing."""
    if moments is None:
        raise TypeError(
            f"{stage} is a scale stage: it reads the moment buffers through the keyword "
            "argument moments=, which fo.with_moments(scale=...) supplies. Put it inside "
            "fo.with_moments instead of straight into optax.chain."
        )
    if (need_mu and moments.mu is None) or (need_nu and moments.nu is None):
        missing = "first (mu)" if need_mu and moments.mu is None else "second (nu)"
        raise TypeError(
            f"{stage} needs a {missing} moment, but the moment rule keeps none; pair it "
            "with fo.ema or fo.belief (or fo.ema_momentum for Muon)."
        )
    return moments


@_record.recorded
def normalize(
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam's scaled update: bias-corrected first moment over root second moment.

    .. math::
      \hat m_t = \frac{m_t}{1 - b_1^t}, \quad \hat v_t = \frac{v_t}{1 - b_2^t}, \quad
      u_t = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}

    With ``nesterov=True`` the numerator is NAdam's look-ahead
    :math:`b_1 m_t / (1 - b_1^{t+1}) + (1 - b_1) \tilde g_t / (1 - b_1^t)`.
    The operations are ordered as in ``optax.scale_by_adam``, so the result is bitwise
    equal to it.

    Args:
      eps: added to the denominator outside the square root, >= 0.
      eps_root: added inside the square root, >= 0.
      nesterov: use Nesterov momentum (NAdam, Dozat 2016).

    Returns:
      A scale stage for :func:`filtered_optax.with_moments`.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.with_moments(scale=fo.normalize(eps=1e-8))

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", arXiv:1412.6980.
    """
    _validation.check_non_negative("eps", eps)
    _validation.check_non_negative("eps_root", eps_root)
    _validation.check_bool("nesterov", nesterov)

    def update_fn(updates, state, params=None, *, moments: Moments | None = None, **extra):
        del params, extra
        moments = require_moments("fo.normalize", moments, need_mu=True, need_nu=True)
        b1, count = moments.b1, moments.count
        if nesterov:
            mu_hat = jax.tree.map(
                lambda m, g: b1 * m + (1 - b1) * g,
                otu.bias_correction(moments.mu, b1, optax.safe_increment(count)),
                otu.bias_correction(updates, b1, count),
            )
        else:
            mu_hat = otu.bias_correction(moments.mu, b1, count)
        nu_hat = otu.bias_correction(moments.nu, moments.b2, count)
        scaled = jax.tree.map(
            lambda m, v: None if m is None else m / (jnp.sqrt(v + eps_root) + eps),
            mu_hat,
            nu_hat,
            is_leaf=lambda x: x is None,
        )
        return scaled, state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


@_record.recorded
def rms_normalize(
    eps: float = 1e-8,
    *,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    centered: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""RMSProp's scaled update: the gradient over the root second moment.

    .. math::
      u_t = \frac{\tilde g_t}{\sqrt{\hat v_t + \epsilon}} \ \text{(eps\_in\_sqrt)}
      \quad\text{or}\quad u_t = \frac{\tilde g_t}{\sqrt{\hat v_t} + \epsilon}

    where :math:`\hat v_t = v_t / (1 - b_2^t)` with ``bias_correction`` and
    :math:`v_t` otherwise, as in ``optax.scale_by_rms``. ``centered`` replaces
    :math:`\hat v_t` by the variance estimate :math:`\hat v_t - |\hat m_t|^2`, as in
    ``optax.scale_by_stddev`` (pair it with ``fo.second_moment(centered=True)``).

    Args:
      eps: stabilizer, >= 0.
      eps_in_sqrt: put ``eps`` inside the square root (optax's default).
      bias_correction: divide ``v`` (and ``m``) by ``1 - b2^t``.
      centered: subtract the squared first moment (centred RMSProp).

    Returns:
      A scale stage for :func:`filtered_optax.with_moments`.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.with_moments(moments=fo.second_moment(0.9), scale=fo.rms_normalize())

    References:
      Tieleman & Hinton, Lecture 6.5 of "Neural Networks for Machine Learning", 2012.
    """
    _validation.check_non_negative("eps", eps)
    _validation.check_bool("eps_in_sqrt", eps_in_sqrt)
    _validation.check_bool("bias_correction", bias_correction)
    _validation.check_bool("centered", centered)

    def update_fn(updates, state, params=None, *, moments: Moments | None = None, **extra):
        del params, extra
        moments = require_moments("fo.rms_normalize", moments, need_mu=centered, need_nu=True)
        nu = moments.nu
        if bias_correction:
            nu = otu.bias_correction(nu, moments.b2, moments.count)
        if centered:
            mu = moments.mu
            if bias_correction:
                mu = otu.bias_correction(mu, moments.b1, moments.count)
            # optax.scale_by_stddev's variance: v - |m|^2 (abs_sq keeps it real).
            nu = jax.tree.map(lambda n, m: n - (jnp.conj(m) * m).real, nu, mu)
        if eps_in_sqrt:
            scaling = jax.tree.map(lambda n: jax.lax.rsqrt(n + eps), nu)
        else:
            scaling = jax.tree.map(lambda n: 1 / (jnp.sqrt(n) + eps), nu)
        return jax.tree.map(lambda s, g: s * g, scaling, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


@_record.recorded
def momentum_output(*, nesterov: bool = False) -> optax.GradientTransformationExtraArgs:
    r"""SGD-with-momentum's update: the trace, or its Nesterov look-ahead.

    .. math:: u_t = m_t \quad\text{or (Nesterov)}\quad u_t = \tilde g_t + \mu\, m_t

    Args:
      nesterov: use the Nesterov look-ahead.

    Returns:
      A scale stage for :func:`filtered_optax.with_moments` paired with
      :func:`filtered_optax.heavy_ball`.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.with_moments(moments=fo.heavy_ball(0.9), scale=fo.momentum_output())

    References:
      Sutskever et al., "On the importance of initialization and momentum in deep
      learning", ICML 2013.
    """
    _validation.check_bool("nesterov", nesterov)

    def update_fn(updates, state, params=None, *, moments: Moments | None = None, **extra):
        del params, extra
        moments = require_moments("fo.momentum_output", moments, need_mu=True, need_nu=False)
        if not nesterov:
            return moments.mu, state
        momentum = moments.b1
        return jax.tree.map(lambda g, m: g + momentum * m, updates, moments.mu), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


@_record.recorded
def sign_update() -> optax.GradientTransformationExtraArgs:
    r"""Sign of the first moment: :math:`u_t = \operatorname{sign}(m_t)`.

    A scale variant for ablations (the update direction of signSGD with momentum).

    Returns:
      A scale stage for :func:`filtered_optax.with_moments`.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.with_moments(scale=fo.sign_update())

    References:
      Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems",
      arXiv:1802.04434.
    """

    def update_fn(updates, state, params=None, *, moments: Moments | None = None, **extra):
        del updates, params, extra
        moments = require_moments("fo.sign_update", moments, need_mu=True, need_nu=False)
        return jax.tree.map(jnp.sign, moments.mu), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)
