"""Muon: momentum orthogonalized by Newton–Schulz, on the same spine as filtered Adam.

Per hidden weight matrix ``W`` (viewed as ``fan_in × fan_out``), with gradient ``G``:

    G~  = F(G_t)                                     # optional spike filter (kalman_filter)
    M_t = β M_{t-1} + (1-β) G~_t                     # momentum, EMA form (ema_momentum)
    U   = (1-β) G~_t + β M_t    (Nesterov)  or  M_t
    O   = NS(U)                                      # ≈ orthogonal polar factor of U
    W  ← W - lr (scale(fan_in, fan_out) · O + λ W)   # decoupled weight decay

that is ``with_moments(filter=identity_filter() | kalman_filter(...),
moments=ema_momentum(β[, b2]), scale=orthogonal_update(...))``, then weight decay and the
learning rate, exactly as :func:`filtered_optax.filtered_adamw` is assembled. :func:`muon`
sends everything that is not a hidden matrix to AdamW (routing: :mod:`._routing`).

References:
  Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024,
  https://kellerjordan.github.io/posts/muon/ and github.com/KellerJordan/Muon.
  Liu et al. (Moonshot AI), "Muon is Scalable for LLM Training", arXiv:2502.16982, 2025.
  Amsel et al., "The Polar Express", arXiv:2505.16932, 2025.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from filtered_optax import _record, _validation
from filtered_optax._alias import adamw, with_learning_rate
from filtered_optax._filters import GAMMA_OFF_HINT, identity_filter, kalman_filter
from filtered_optax._moments import WithMomentsState, ema_momentum, with_moments
from filtered_optax._ns_split import Split, check_split
from filtered_optax._orthogonal import (
    MOONSHOT_RMS,
    SCALES,
    orthogonalize_tree,
    resolve_coefficients,
)
from filtered_optax._routing import (
    EMBED_NAMES,
    HEAD_NAMES,
    Routing,
    as_routing,
    muon_labels,
    resolve,
    stage_specs,
)
from filtered_optax._scaling import require_moments
from filtered_optax._types import (
    Coefficients,
    MaskOrFn,
    MatrixSpec,
    Moments,
    PathNames,
    RouteFn,
    ScalarOrSchedule,
    Shape,
)


def _direction(
    g: jax.Array, m: jax.Array, beta: Any, t: jax.Array, nesterov: bool, bias_correction: bool
) -> jax.Array:
    r"""The matrix Newton–Schulz orthogonalizes, from the gradient and the new momentum.

    .. math::
      U = (1-\beta) G + \beta M \ \text{(Nesterov)}, \quad U = M \ \text{(plain)};
      \text{bias-corrected: } U = \tfrac{\beta M}{1-\beta^{t+1}} + \tfrac{(1-\beta) G}{1-\beta^t}
      \ \text{or}\ \tfrac{M}{1-\beta^t} \ \text{(optax.contrib.muon)}.

    Arithmetic in the wider of the two dtypes and float32.
    """
    dtype = jnp.promote_types(jnp.promote_types(g.dtype, m.dtype), jnp.float32)
    g, m = g.astype(dtype), m.astype(dtype)
    tf = t.astype(dtype)
    if nesterov and bias_correction:
        # optax.contrib.muon's NAdam-style correction: M_t is corrected one step ahead.
        c_m, c_g = beta / (1 - beta ** (tf + 1)), (1 - beta) / (1 - beta**tf)
        return c_m * m + c_g * g
    if nesterov:
        return (1 - beta) * g + beta * m
    if bias_correction:
        return m / (1 - beta**tf)
    return m


@_record.recorded
def orthogonal_update(
    *,
    nesterov: bool = True,
    bias_correction: bool = False,
    coefficients: Coefficients = "polar_express",
    ns_steps: int | None = None,
    eps: float = 1e-7,
    compute_dtype: Any = None,
    scale: str | float = "moonshot",
    rms: float = MOONSHOT_RMS,
    dimension_numbers: RouteFn | MatrixSpec | None = None,
    stacked: Sequence[str] = (),
    per_head: bool = False,
    batch_same_shape: bool | None = None,
    ns_split_axes: Split = "auto",
) -> optax.GradientTransformationExtraArgs:
    r"""Muon's scale stage: Nesterov mix of the momentum, Newton–Schulz, shape scaling.

    .. math::
      U = (1-\beta) \tilde G_t + \beta M_t \ \text{(Nesterov)} \ \text{or}\ M_t, \quad
      O = \mathrm{scale}(A, B)\cdot \mathrm{NS}(U)

    with :math:`M_t` and :math:`\beta` read from ``moments=`` (``mu`` and ``b1``), which
    :func:`filtered_optax.with_moments` supplies. Each leaf is viewed as matrices (see
    ``dimension_numbers``) and the whole tree is orthogonalized by one call that groups
    same-shape matrices, spreads them over the mesh (``ns_split_axes``) and handles explicit
    sharding (:func:`~filtered_optax._orthogonal.orthogonalize_tree`).

    Args:
      nesterov, bias_correction, coefficients, ns_steps, eps, compute_dtype, scale, rms,
        dimension_numbers, stacked, per_head, batch_same_shape, ns_split_axes: as in
        :func:`scale_by_muon`.

    Returns:
      A scale stage for :func:`filtered_optax.with_moments`, holding no state; its updates
      have the gradient's dtype.

    Example:
      >>> import filtered_optax as fo
      >>> tx = fo.with_moments(moments=fo.ema_momentum(0.95), scale=fo.orthogonal_update())

    References:
      Jordan, "Muon", 2024 (github.com/KellerJordan/Muon); Liu et al., arXiv:2502.16982;
      Amsel et al., arXiv:2505.16932.
    """
    _check_stage_args(nesterov, bias_correction, coefficients, ns_steps, eps, scale, rms)
    _check_layout_args(dimension_numbers, stacked, per_head, batch_same_shape)
    stacked = (stacked,) if isinstance(stacked, str) else tuple(stacked)
    compute_dtype = _check_dtype("compute_dtype", compute_dtype)
    ns_split_axes = check_split(ns_split_axes)
    ns = dict(coefficients=coefficients, ns_steps=ns_steps, eps=eps, compute_dtype=compute_dtype)

    def init_fn(params: Any) -> optax.EmptyState:
        # Newton-Schulz is defined for real matrices: integer, boolean and complex leaves
        # are rejected here rather than silently cast.
        _validation.check_leaf_dtypes(
            params, "parameter", owner="fo.scale_by_muon", allow_complex=False
        )
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, moments: Moments | None = None, **extra):
        del params, extra
        moments = require_moments("fo.orthogonal_update", moments, need_mu=True, need_nu=False)
        _validation.check_leaf_dtypes(
            updates, "gradient", owner="fo.scale_by_muon", allow_complex=False
        )
        beta, t = moments.b1, moments.count
        u = jax.tree.map(
            lambda g, m: _direction(g, m, beta, t, nesterov, bias_correction), updates, moments.mu
        )
        specs = stage_specs(u, dimension_numbers, stacked=stacked, per_head=per_head)
        batch = jax.default_backend() != "cpu" if batch_same_shape is None else batch_same_shape
        o = orthogonalize_tree(
            u, specs, scale=scale, rms=rms, batch=batch, split=ns_split_axes, **ns
        )
        return jax.tree.map(lambda x, g: x.astype(g.dtype), o, updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_scale(scale: Any) -> None:
    if isinstance(scale, str):
        _validation.check_choice("scale", scale, SCALES)
    elif _validation.concrete_float(scale) is not None or isinstance(scale, jax.core.Tracer):
        _validation.check_non_negative("scale", scale)
    else:
        raise TypeError(
            f"scale must be one of {list(SCALES)} or a real number >= 0; got "
            f"{type(scale).__name__} {scale!r}."
        )


def _check_coefficients(name: str, value: Any) -> None:
    """A preset name or a (sequence of) triple(s); the values are checked when resolved."""
    if not isinstance(value, (str, tuple, list)):
        raise TypeError(
            f"{name} must be a preset name (a str), an (a, b, c) triple or a sequence of "
            f"triples; got {type(value).__name__} {value!r}."
        )


def _check_dtype(name: str, value: Any) -> Any:
    """A storage/compute dtype: TypeError for what names no dtype, ValueError for a
    non-floating one (:func:`_validation.check_float_dtype`)."""
    if value is not None and not isinstance(value, str):
        try:
            jnp.dtype(value)
        except TypeError as err:
            raise TypeError(
                f"{name} must be a floating dtype such as jnp.float32 or jnp.bfloat16 (or "
                f"its name), or None; got {type(value).__name__} {value!r}."
            ) from err
    return _validation.check_float_dtype(name, value)


# An example value for each name-list argument, quoted in its TypeError.
_NAME_EXAMPLES = {
    "stacked": "('layers',)",
    "head_names": "('lm_head',)",
    "embed_names": "('embed',)",
}


def _check_names(name: str, value: Any, *, one_str: bool = False) -> None:
    """A tuple (or list) of path-component names; ``one_str``: a bare name is allowed."""
    ok = isinstance(value, (tuple, list)) and all(isinstance(n, str) for n in value)
    if not (ok or (one_str and isinstance(value, str))):
        example = _NAME_EXAMPLES.get(name, "('layers',)")
        raise TypeError(
            f"{name} must be a tuple of path-component names (str), e.g. {example}; got "
            f"{type(value).__name__} {value!r}."
        )


def _check_mask(name: str, value: Any) -> None:
    """None, a callable of the parameters, a bool, or a pytree of bools (as optax's
    ``mask``); a string or a number is a mistake."""
    if isinstance(value, (str, bytes)) or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
    ):
        raise TypeError(
            f"{name} must be None, a pytree of bools shaped like the parameters (or a prefix "
            f"of it), or a callable returning one, as optax.adamw's mask; got "
            f"{type(value).__name__} {value!r}."
        )


def _check_optional_bool(name: str, value: Any) -> None:
    if value is not None:
        _validation.check_bool(name, value)


def _check_rule(name: str, value: Any, *, spec: bool) -> None:
    """None, a callable rule, or (``spec``) one :class:`MatrixSpec` for every leaf."""
    if value is None or callable(value) or (spec and isinstance(value, MatrixSpec)):
        return
    kinds = "a fo.MatrixSpec, a callable rule" if spec else "a callable rule"
    raise TypeError(
        f"{name} must be {kinds} ``(path_names, shape) -> ...``, or None; got "
        f"{type(value).__name__} {value!r}."
    )


def _check_stage_args(
    nesterov: Any,
    bias_correction: Any,
    coefficients: Any,
    ns_steps: Any,
    eps: Any,
    scale: Any,
    rms: Any,
) -> None:
    """The numeric and switch arguments of :func:`orthogonal_update`."""
    _validation.check_bool("nesterov", nesterov)
    _validation.check_bool("bias_correction", bias_correction)
    _check_coefficients("coefficients", coefficients)
    _validation.check_scalar("ns_steps", ns_steps, optional=True)
    _validation.check_non_negative("eps", eps)
    _validation.check_non_negative("rms", rms)
    _check_scale(scale)
    resolve_coefficients(coefficients, ns_steps)  # validates coefficients and ns_steps


def _check_layout_args(
    dimension_numbers: Any, stacked: Any, per_head: Any, batch_same_shape: Any
) -> None:
    """The structural arguments of :func:`orthogonal_update` (how leaves become matrices)."""
    _check_rule("dimension_numbers", dimension_numbers, spec=True)
    _check_names("stacked", stacked, one_str=True)
    _validation.check_bool("per_head", per_head)
    _check_optional_bool("batch_same_shape", batch_same_shape)


# GAMMA_OFF_HINT with Muon's argument names: "use filter_gamma=float('inf') ...".
FILTER_OFF_HINT = re.sub(r"\b(gamma|eta)=", r"filter_\1=", GAMMA_OFF_HINT)


def _filter_off(gamma: Any, eta: Any) -> bool | None:
    """True when the filter is provably the identity (concrete ``gamma = inf``, ``eta = 1``),
    False when it provably is not, None when a traced value leaves it open."""
    g, e = _validation.concrete_float(gamma), _validation.concrete_float(eta)
    if (g is not None and g != math.inf) or (e is not None and e != 1.0):
        return False
    return None if g is None or e is None else True


def _check_filter(gamma: Any, eta: Any, b2: Any, warmup: Any, kappa: Any, stats: Any) -> None:
    _validation.check_range("filter_gamma", gamma, low=0.0, low_open=True, hint=FILTER_OFF_HINT)
    _validation.check_range("filter_eta", eta, low=0.0, high=1.0)
    _validation.check_decay("filter_b2", b2)
    _validation.check_non_negative_int("filter_warmup", warmup)
    _validation.check_non_negative("filter_kappa", kappa)
    _validation.check_bool("stats", stats)
    if stats and _filter_off(gamma, eta):
        raise ValueError(
            "stats=True reports the spike filter's statistics, but the filter is off "
            "(filter_gamma=inf, filter_eta=1); enable it with a finite filter_gamma (a "
            "threshold > 0, e.g. 10.0) or leave stats=False."
        )


def _state_decides(
    off: optax.GradientTransformationExtraArgs, on: optax.GradientTransformationExtraArgs
) -> optax.GradientTransformationExtraArgs:
    """For a filter setting that is traced (``optax.inject_hyperparams`` under ``jit``):
    the state says whether the filter exists. ``init`` keeps the filter (its second
    moment); ``update`` runs ``off`` on a state without ``nu`` (initialized while the
    setting was concretely off) and ``on`` otherwise, so init and update always agree."""

    def update_fn(updates, state, params=None, **extra):
        tx = off if state.nu is None else on
        return tx.update(updates, state, params, **extra)

    return optax.GradientTransformationExtraArgs(on.init, update_fn)


@_record.recorded
def scale_by_muon(
    beta: float = 0.95,
    *,
    nesterov: bool = True,
    bias_correction: bool = False,
    coefficients: Coefficients = "polar_express",
    ns_steps: int | None = None,
    eps: float = 1e-7,
    compute_dtype: Any = None,
    scale: str | float = "moonshot",
    rms: float = MOONSHOT_RMS,
    mu_dtype: Any = None,
    dimension_numbers: RouteFn | MatrixSpec | None = None,
    stacked: Sequence[str] = (),
    per_head: bool = False,
    batch_same_shape: bool | None = None,
    ns_split_axes: Split = "auto",
    filter_gamma: float = math.inf,
    filter_eta: float = 1.0,
    filter_b2: float = 0.999,
    filter_warmup: int = 20,
    filter_kappa: float = 1e-2,
    stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Muon's update direction: momentum, Newton–Schulz orthogonalization, shape scaling.

    .. math::
      M_t = \beta M_{t-1} + (1-\beta) \tilde G_t, \quad
      U = (1-\beta) \tilde G_t + \beta M_t \ \text{(Nesterov)} \ \text{or}\ M_t, \quad
      O = \mathrm{scale}(A, B)\cdot \mathrm{NS}(U)

    Assembled from the stages, as the filtered Adam family is::

      fo.with_moments(filter=fo.identity_filter(),   # or fo.kalman_filter(...)
                      moments=fo.ema_momentum(beta),  # (beta, filter_b2) when filtered
                      scale=fo.orthogonal_update(...), mu_dtype=mu_dtype)

    so its state is a :class:`filtered_optax.WithMomentsState` (``count``, ``mu``, ``nu``).

    ``bias_correction=True`` reproduces ``optax.contrib.muon``:
    :math:`U = \beta M_t/(1-\beta^{t+1}) + (1-\beta) G_t/(1-\beta^t)` (Nesterov) or
    :math:`M_t/(1-\beta^t)`. The default ``False`` is Keller Jordan's and Moonshot's reference
    algorithm. NS normalizes its input by its Frobenius norm, so the correction is a
    no-op without Nesterov and only re-weights gradient vs momentum in the first
    ~1/(1-β) steps with it.

    Every leaf it sees must have a matrix view (route other params elsewhere, see
    :func:`muon`). Same-shape plain matrices are stacked and orthogonalized in one batched
    call; declared stacks (``stacked``) are orthogonalized per matrix in their own call, so a
    stack sharded along its stack axis needs no communication. On a mesh of more than one
    device each device orthogonalizes only its share of the matrices (``ns_split_axes``).

    Optional spike filter (a finite ``filter_gamma``, or ``filter_eta < 1``): the robust
    Kalman filter of filtered Adam (README, "The filter"; :func:`filtered_optax.kalman_filter`)
    runs on ``G_t`` before the momentum, reading ``M_{t-1}`` as its first moment (decay β) and a
    second moment ``ν`` (decay ``filter_b2``) fed with the filtered gradient. Muon keeps no
    second moment otherwise, so the filter costs one extra param-sized float32 leaf per
    Muon parameter (``state.nu``; float64 for float64 parameters). ``filter_gamma=inf``
    with ``filter_eta=1`` (the default) is the filter off, as everywhere in the library:
    the filter is then the identity and no ``nu`` is kept. When either is traced
    (``optax.inject_hyperparams`` under ``jit``) the state decides: one initialized with
    the filter off stays off.

    Args:
      beta: momentum decay in [0, 1).
      nesterov: use the Nesterov mix (default, as both references).
      bias_correction: bias-correct the momentum like ``optax.contrib.muon``.
      coefficients: Newton–Schulz coefficients, ``"polar_express"`` (default: its singular
        values end nearer 1, which is what makes the Moonshot RMS come out at 0.2),
        ``"keller"``, a triple or a sequence of triples; see :func:`newton_schulz`.
      ns_steps: Newton–Schulz iterations (None: 5, or the table length).
      eps: added to the Frobenius norm before NS (Keller's 1e-7).
      compute_dtype: NS arithmetic dtype (None = float32; ``"bfloat16"`` for speed,
        ``"float64"`` for float64 parameters). The momentum is computed in the wider of
        the gradient's dtype and float32.
      scale: ``"moonshot"`` (``rms·√max(fan_in, fan_out)``, default), ``"keller"``
        (``√max(1, fan_out/fan_in)``), ``"rms"`` (rescale each matrix so its RMS is exactly
        ``rms``; Moonshot's "update norm" variant) or a number (a plain multiplier).
      rms: target RMS for ``"moonshot"`` and ``"rms"`` (Moonshot's 0.2).
      mu_dtype: momentum storage dtype (None = the parameter's).
      dimension_numbers: a :class:`MatrixSpec` for every leaf, or a rule
        ``(path_names, shape) -> MatrixSpec | None``; None (or a None answer) uses
        :func:`matrix_spec` with ``stacked`` / ``per_head``.
      stacked: path component names carrying a leading stack axis.
      per_head: attention projections per head.
      batch_same_shape: stack same-shape plain matrices into one NS call. None (default)
        batches on accelerators and not on CPU, where XLA runs a batched matmul slower than
        the same matmuls one by one (measured 1.65x vs 1.80x optax.contrib.muon's speed on
        8 x 1024², benchmarks/results/perf.md).
      ns_split_axes: distributed Newton–Schulz (README, "Multiple devices and multiple
        hosts"). When the parameters live on a mesh of more than one device, same-shape
        matrices are stacked, the stack axis spread over these mesh axes (padded with zero
        matrices) so each device orthogonalizes ``⌈n/N⌉`` of ``n`` matrices, and the results
        moved back to the parameters' sharding. ``"auto"`` (default) takes every mesh axis
        of size > 1, those already sharding a declared stack first; a tuple of axis names
        overrides; None turns it off (each device then orthogonalizes every matrix it needs
        whole). A no-op on one device. The mesh is read from the arrays (their own sharding
        outside ``jit`` and on Explicit meshes; on an Auto mesh under ``jit`` only the mesh
        is visible, so the stack goes straight to its split layout and XLA places the results).
      filter_gamma: spike threshold (RMS units) of the optional filter, > 0;
        ``float("inf")`` (default, with ``filter_eta=1``) = no filter. None is a TypeError.
      filter_eta, filter_b2, filter_warmup, filter_kappa: the filter's other settings
        (``eta``, the decay of its second moment, ``warmup`` and ``kappa`` of
        :func:`filtered_optax.kalman_filter`, whose defaults they share).
      stats: keep the filter's spike fraction and mean gain (two scalars) in the state,
        read by :func:`filtered_optax.read_stats` / :func:`filtered_optax.filter_stats`;
        needs the filter on (a finite ``filter_gamma`` or ``filter_eta < 1``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`filtered_optax.WithMomentsState`. Updates are not yet multiplied by ``-lr``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(scale_by_muon(), optax.scale_by_learning_rate(0.02))
      >>> params = {"w": jnp.ones((4, 8))}
      >>> updates, state = tx.update(params, tx.init(params))

    References:
      Jordan, "Muon", 2024 (github.com/KellerJordan/Muon); Liu et al., arXiv:2502.16982;
      Amsel et al., arXiv:2505.16932.
    """
    _validation.check_decay("beta", beta)
    _check_filter(filter_gamma, filter_eta, filter_b2, filter_warmup, filter_kappa, stats)
    mu_dtype = _check_dtype("mu_dtype", mu_dtype)
    scale_stage = orthogonal_update(
        nesterov=nesterov,
        bias_correction=bias_correction,
        coefficients=coefficients,
        ns_steps=ns_steps,
        eps=eps,
        compute_dtype=compute_dtype,
        scale=scale,
        rms=rms,
        dimension_numbers=dimension_numbers,
        stacked=stacked,
        per_head=per_head,
        batch_same_shape=batch_same_shape,
        ns_split_axes=ns_split_axes,
    )

    def assemble(filtered: bool) -> optax.GradientTransformationExtraArgs:
        kalman = kalman_filter(filter_eta, filter_gamma, filter_warmup, filter_kappa, stats=stats)
        return with_moments(
            filter=kalman if filtered else identity_filter(),
            moments=ema_momentum(beta, filter_b2 if filtered else None),
            scale=scale_stage,
            mu_dtype=mu_dtype,
        )

    off = _filter_off(filter_gamma, filter_eta)
    if off is None:  # traced: the state decides (see _state_decides)
        return _state_decides(assemble(False), assemble(True))
    return assemble(not off)


@_record.recorded
def muon(
    learning_rate: ScalarOrSchedule,
    beta: float = 0.95,
    weight_decay: float = 0.1,
    eps: float = 1e-7,
    rms: float = MOONSHOT_RMS,
    adam_learning_rate: ScalarOrSchedule | None = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.95,
    adam_eps: float = 1e-8,
    adam_weight_decay: float | None = None,
    ns_steps: int | None = None,
    filter_gamma: float = math.inf,
    filter_eta: float = 1.0,
    filter_b2: float = 0.999,
    filter_warmup: int = 20,
    filter_kappa: float = 1e-2,
    *,
    nesterov: bool = True,
    bias_correction: bool = False,
    coefficients: Coefficients | None = None,
    scale: str | float = "moonshot",
    compute_dtype: str | None = None,
    mu_dtype: str | None = None,
    labels: RouteFn | None = None,
    stacked: Sequence[str] = (),
    per_head: bool = False,
    head_names: Sequence[str] = HEAD_NAMES,
    embed_names: Sequence[str] = EMBED_NAMES,
    batch_same_shape: bool | None = None,
    ns_split_axes: Split = "auto",
    stats: bool = False,
    weight_decay_mask: MaskOrFn = None,
    ns_coeffs: Coefficients | None = None,
    adam_eps_root: float = 0.0,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    muon_weight_dimension_numbers: Any = None,
    consistent_rms: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Muon for hidden matrices, AdamW for everything else (Moonshot's recipe by default).

    .. math::
      W \leftarrow W - \mathrm{lr}\,\big(\mathrm{scale}(A,B)\,\mathrm{NS}(U) + \lambda W\big)

    with ``U`` the (Nesterov) momentum of :func:`scale_by_muon`. Parameters are routed by
    :func:`muon_labels` (check with :func:`routing_table`) and combined with
    ``optax.partition``; the AdamW side is plain AdamW (bias-corrected, decoupled decay).

    Defaults follow Moonshot (arXiv:2502.16982): update RMS 0.2 (``scale="moonshot"`` with
    Polar Express coefficients measures 0.20-0.21), so AdamW's learning rate and weight decay
    carry over; ``weight_decay=0.1`` on both sides; AdamW uses the same learning rate.
    Keller's setting is ``muon(0.02, weight_decay=0.0, scale="keller",
    coefficients="keller")`` with a separate ``adam_learning_rate``.

    Numeric hyperparameters are positional-or-keyword (except ``adam_eps_root``, one of
    ``optax.contrib.muon``'s names at the end) and everything structural is keyword-only, so
    ``optax.inject_hyperparams(muon)(learning_rate=...)`` works without ``static_args`` (pass
    ``static_args="labels"`` if you give a ``labels`` rule, ``"weight_decay_mask"`` for a
    callable mask).

    Args:
      learning_rate: Muon learning rate, a constant >= 0 or a schedule.
      beta: momentum decay in [0, 1).
      weight_decay: decoupled weight decay λ >= 0 of Muon parameters (multiplied by lr).
      eps: Frobenius-norm epsilon of Newton–Schulz.
      rms: target update RMS of ``scale="moonshot"`` / ``"rms"``.
      adam_learning_rate: AdamW learning rate (None = ``learning_rate``).
      adam_b1, adam_b2, adam_eps: AdamW moments (0.9 / 0.95 as Moonshot) and epsilon.
      adam_weight_decay: AdamW decoupled weight decay (None = ``weight_decay``; Moonshot
        decays norm gains too, which mattered for stability).
      ns_steps: Newton–Schulz iterations (None = 5 / the table length).
      filter_gamma: a finite threshold > 0 enables the spike filter of filtered Adam
        (README, "The filter") in front of the momentum; ``float("inf")`` (default, with
        ``filter_eta=1``) = off, no ``nu`` kept.
      filter_eta, filter_b2, filter_warmup, filter_kappa: see :func:`scale_by_muon`.
      nesterov, bias_correction, coefficients, scale, compute_dtype, mu_dtype,
        batch_same_shape, ns_split_axes: see :func:`scale_by_muon`.
      labels, stacked, per_head, head_names, embed_names: routing, the fields of
        :class:`filtered_optax.Routing` (see :func:`filtered_optax.muon_labels`).
      stats: keep the Muon filter's spike fraction and mean gain in the state (read them
        with :func:`filtered_optax.read_stats`); needs the filter on.
      weight_decay_mask: which parameters are decayed, as ``optax.adamw``'s ``mask`` (a
        pytree of bools or a callable of the parameters); applied on both sides
        (``optax.contrib.muon`` masks only its Muon side). None = all.
      ns_coeffs: ``optax.contrib.muon``'s name for ``coefficients`` (also its presets
        ``"standard"`` = ``"keller"`` and ``"dion"``); giving both is a TypeError.
        ``coefficients`` None means ``"polar_express"``.
      adam_eps_root: AdamW's ``eps_root`` (as ``optax.adamw``).
      adaptive, preconditioning, muon_weight_dimension_numbers, consistent_rms: the rest of
        ``optax.contrib.muon``'s keywords, so code written for it fails loudly: only the
        defaults (``False``, ``"frobenius"``, None, None) are accepted, anything else
        raises an error naming fo.muon's equivalent (``labels=`` for the dimension numbers,
        ``scale="moonshot", rms=x`` for ``consistent_rms=x``). Unlike optax, ``eps`` and
        ``nesterov`` act on the Muon side only (the AdamW side has ``adam_eps``), and the
        positional order differs: pass these by keyword.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` (an ``optax.partition`` of the two).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> params = {"mlp": {"kernel": jnp.ones((4, 8)), "bias": jnp.zeros(8)}}
      >>> tx = muon(1e-3)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(params, state, params)

    References:
      Liu et al. (Moonshot AI), "Muon is Scalable for LLM Training", arXiv:2502.16982.
      Jordan, "Muon", 2024, github.com/KellerJordan/Muon. Amsel et al., arXiv:2505.16932.
    """
    _check_adam_args(
        learning_rate,
        weight_decay,
        adam_learning_rate,
        adam_b1,
        adam_b2,
        adam_eps,
        adam_eps_root,
        adam_weight_decay,
    )
    coefficients = _optax_keywords(
        coefficients,
        ns_coeffs,
        adaptive,
        preconditioning,
        muon_weight_dimension_numbers,
        consistent_rms,
    )
    _check_mask("weight_decay_mask", weight_decay_mask)
    routing = _routing_of(labels, stacked, per_head, head_names, embed_names)

    def route(names: PathNames, shape: Shape) -> MatrixSpec | None:
        return resolve(names, shape, routing)

    def param_labels(tree: Any) -> Any:
        return muon_labels(tree, routing=routing)

    muon_tx = scale_by_muon(
        beta,
        nesterov=nesterov,
        bias_correction=bias_correction,
        coefficients=coefficients,
        ns_steps=ns_steps,
        eps=eps,
        compute_dtype=compute_dtype,
        scale=scale,
        rms=rms,
        mu_dtype=mu_dtype,
        dimension_numbers=route,
        batch_same_shape=batch_same_shape,
        ns_split_axes=ns_split_axes,
        filter_gamma=filter_gamma,
        filter_eta=filter_eta,
        filter_b2=filter_b2,
        filter_warmup=filter_warmup,
        filter_kappa=filter_kappa,
        stats=stats,
    )
    adam_tx = adamw(
        learning_rate if adam_learning_rate is None else adam_learning_rate,
        b1=adam_b1,
        b2=adam_b2,
        eps=adam_eps,
        eps_root=adam_eps_root,
        mu_dtype=mu_dtype,
        weight_decay=weight_decay if adam_weight_decay is None else adam_weight_decay,
        mask=weight_decay_mask,
    )
    muon_tx = with_learning_rate(muon_tx, learning_rate, weight_decay, weight_decay_mask)
    return _check_gradients(optax.partition({"muon": muon_tx, "adam": adam_tx}, param_labels))


def _routing_of(
    labels: Any, stacked: Any, per_head: Any, head_names: Any, embed_names: Any
) -> Routing:
    """:func:`muon`'s routing keywords, type-checked, as one :class:`Routing`."""
    _check_rule("labels", labels, spec=False)
    _check_names("stacked", stacked, one_str=True)
    _check_names("head_names", head_names)
    _check_names("embed_names", embed_names)
    _validation.check_bool("per_head", per_head)
    keywords = dict(
        labels=labels,
        stacked=stacked,
        per_head=per_head,
        head_names=head_names,
        embed_names=embed_names,
    )
    return as_routing(None, keywords)


def _check_adam_args(
    learning_rate: Any,
    weight_decay: Any,
    adam_learning_rate: Any,
    adam_b1: Any,
    adam_b2: Any,
    adam_eps: Any,
    adam_eps_root: Any,
    adam_weight_decay: Any,
) -> None:
    """The learning rates and weight decays of :func:`muon` and its AdamW side's moments."""
    _validation.check_learning_rate(learning_rate)
    if adam_learning_rate is not None:
        _validation.check_learning_rate(adam_learning_rate, "adam_learning_rate")
    _validation.check_non_negative("weight_decay", weight_decay)
    _validation.check_decay("adam_b1", adam_b1)
    _validation.check_decay("adam_b2", adam_b2)
    _validation.check_non_negative("adam_eps", adam_eps)
    _validation.check_non_negative("adam_eps_root", adam_eps_root)
    _validation.check_scalar("adam_weight_decay", adam_weight_decay, optional=True)
    if adam_weight_decay is not None:
        _validation.check_non_negative("adam_weight_decay", adam_weight_decay)


# optax.contrib.muon's ns_coeffs presets. "standard" is Keller's triple; "dion" is the
# five-step table of Ahn et al., "Dion: Distributed Orthonormalized Updates",
# arXiv:2504.05295, as optax.contrib.muon ships it.
_OPTAX_NS_PRESETS: dict[str, Any] = {
    "standard": "keller",
    "dion": (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    ),
}


def _optax_keywords(
    coefficients: Any,
    ns_coeffs: Any,
    adaptive: Any,
    preconditioning: Any,
    muon_weight_dimension_numbers: Any,
    consistent_rms: Any,
) -> Coefficients:
    """``optax.contrib.muon``'s keywords: the Newton–Schulz coefficients they name, or a
    ``TypeError`` / ``ValueError`` naming our equivalent of what we do not implement."""
    if ns_coeffs is not None and coefficients is not None:
        raise TypeError("ns_coeffs is optax's name for coefficients; give one of them, not both.")
    if ns_coeffs is not None:
        _check_coefficients("ns_coeffs", ns_coeffs)
        coefficients = (
            _OPTAX_NS_PRESETS.get(ns_coeffs, ns_coeffs) if isinstance(ns_coeffs, str) else ns_coeffs
        )
    _validation.check_bool("adaptive", adaptive)
    if adaptive:
        raise TypeError(
            "adaptive=True (optax.contrib.muon's scaling by the dual norm, arXiv:2409.20325) "
            "is not implemented by fo.muon; leave adaptive=False (scale= sets the update size)."
        )
    if not isinstance(preconditioning, str):
        raise TypeError(f"preconditioning must be a str; got {preconditioning!r}.")
    if preconditioning != "frobenius":
        raise ValueError(
            f"preconditioning={preconditioning!r} is not implemented by fo.muon, which "
            "normalizes by the Frobenius norm before Newton-Schulz (preconditioning="
            "'frobenius', optax's default); for a tighter orthogonalization in as many "
            "steps use coefficients='polar_express' (the default)."
        )
    if muon_weight_dimension_numbers is not None:
        raise TypeError(
            "muon_weight_dimension_numbers is optax's routing; fo.muon routes by path and "
            "shape: give labels= (a rule (path_names, shape) -> 'muon' | 'adam' | "
            "fo.MatrixSpec | None, a fo.MatrixSpec playing MuonDimensionNumbers), or "
            "stacked= / per_head=; check the result with fo.routing_table."
        )
    if consistent_rms is not None:
        raise TypeError(
            "consistent_rms is optax's name; in fo.muon optax's consistent_rms=x is "
            "scale='moonshot', rms=x (the default, rms=0.2), and consistent_rms=None is "
            "scale='keller'."
        )
    return "polar_express" if coefficients is None else coefficients


def _moment_shapes(state: Any) -> Any:
    """The parameter tree as :func:`muon`'s state saw it at ``init``: each leaf's first
    moment, from whichever side of the partition owns it (a ``MaskedNode`` where neither
    keeps one)."""
    found = [
        s.nu if s.mu is None else s.mu
        for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, WithMomentsState))
        if isinstance(s, WithMomentsState)
    ]
    merged = found[0] if found else None
    for tree in found[1:]:  # a None parameter is None on one side, a MaskedNode on the other
        merged = jax.tree.map(
            lambda a, b: b if _validation.is_masked(a) else a,
            merged,
            tree,
            is_leaf=lambda x: x is None or _validation.is_masked(x),
        )
    return merged


def _check_gradients(
    tx: optax.GradientTransformationExtraArgs,
) -> optax.GradientTransformationExtraArgs:
    """``tx`` with the gradient checked against the state first: a leaf of another shape
    (a broadcastable or transposed gradient) is a ``ValueError`` naming the leaf, before
    the partition routes the gradient by its shapes."""

    def update_fn(updates, state, params=None, **extra):
        _validation.check_like_state(updates, _moment_shapes(state))
        return tx.update(updates, state, params, **extra)

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)
