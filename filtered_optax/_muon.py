"""Muon: momentum orthogonalized by Newton–Schulz, with routing of non-matrix params to AdamW.

Per hidden weight matrix ``W`` (viewed as ``fan_in × fan_out``), with gradient ``G``:

    M_t = β M_{t-1} + (1-β) G_t                      # momentum, EMA form
    U   = (1-β) G_t + β M_t    (Nesterov)  or  M_t
    O   = NS(U)                                      # ≈ orthogonal polar factor of U
    W  ← W - lr (scale(fan_in, fan_out) · O + λ W)   # decoupled weight decay

Everything that is not a hidden matrix (embeddings, the output head, biases, norm gains,
other 1-D params) goes to a real AdamW. :func:`muon_labels` decides, from each parameter's
path and shape, and understands Flax NNX module layouts; :func:`routing_table` shows the
decision so users can check it.

References:
  Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024,
  https://kellerjordan.github.io/posts/muon/ and github.com/KellerJordan/Muon.
  Liu et al. (Moonshot AI), "Muon is Scalable for LLM Training", arXiv:2502.16982, 2025.
  Amsel et al., "The Polar Express", arXiv:2505.16932, 2025.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import tree as otu

from filtered_optax import _record, _validation
from filtered_optax._orthogonal import (
    Coefficients,
    matrix_view,
    newton_schulz,
    resolve_coefficients,
)

ScalarOrSchedule = Any
PathNames = tuple[str, ...]
Shape = tuple[int, ...]

SCALES: tuple[str, ...] = ("moonshot", "keller", "rms")

# Moonshot's 0.2: AdamW's typical update RMS is 0.2-0.4; matching it lets AdamW's learning
# rate and weight decay carry over unchanged (arXiv:2502.16982, section 2.2).
MOONSHOT_RMS = 0.2

# Leaf or module names of input embeddings (nnx.Embed / linen Embed store "embedding").
EMBED_NAMES: tuple[str, ...] = (
    "embedding",
    "embeddings",
    "embed",
    "embed_tokens",
    "tok_embeddings",
    "token_embedding",
    "wte",
    "wpe",
    "pos_embedding",
    "position_embedding",
)
# Names of a model's final projection to the vocabulary / classes. Matched exactly (plus any
# component ending in "_head"); the bare "out" is NOT a head: nnx.MultiHeadAttention calls
# its own output projection "out", and that is a hidden matrix.
HEAD_NAMES: tuple[str, ...] = (
    "head",
    "lm_head",
    "unembed",
    "unembedding",
    "output_head",
    "classifier",
    "logits",
    "readout",
)
# Leaf names of biases and norm gains/offsets (nnx.LayerNorm / RMSNorm: "scale", "bias").
NON_MATRIX_LEAVES: tuple[str, ...] = ("bias", "scale", "gamma", "beta")
# Attention input projections whose kernel is (in, heads, head_dim): one matrix
# in × heads·head_dim, never a stack over `in`.
QKV_NAMES: tuple[str, ...] = ("query", "key", "value", "q", "k", "v", "q_proj", "k_proj", "v_proj")
# Attention output projections whose kernel is (heads, head_dim, out); only used to split
# per head when `per_head=True` (by default the generic "last axis = output" rule already
# gives the matrix heads·head_dim × out).
ATTENTION_OUT_NAMES: tuple[str, ...] = ("out", "o_proj", "out_proj")


class MatrixSpec(NamedTuple):
    """How a parameter tensor is viewed as matrices ``(fan_in, fan_out)``.

    Attributes:
      reduction_axes: axes contracted with the layer input (fan-in).
      output_axes: axes of the layer output (fan-out).

    Axes in neither tuple are batch (stack) axes: each index along them is its own matrix.
    """

    reduction_axes: tuple[int, ...]
    output_axes: tuple[int, ...]


class MuonState(NamedTuple):
    """State of :func:`scale_by_muon`.

    Attributes:
      count: completed steps (int32).
      mu: momentum ``M``, one leaf per parameter (``mu_dtype``).
      nu: second moment of the filtered gradient (float32) when the spike filter is on,
        else None. This is the filter's only extra memory: one param-sized float32 leaf per
        Muon parameter.
    """

    count: jax.Array
    mu: Any
    nu: Any


Route = Any  # "muon" | "adam" | MatrixSpec | None
RouteFn = Callable[[PathNames, Shape], Route]


# --------------------------------------------------------------------------------------------
# Paths and routing


def path_names(path: Sequence[Any]) -> PathNames:
    """Converts a ``jax.tree_util`` key path into a tuple of strings.

    Handles ``DictKey`` (nnx.State / dicts), ``GetAttrKey`` (NamedTuples, nnx.Variable),
    ``SequenceKey`` and ``FlattenedIndexKey``. A trailing ``.value`` attribute (how an
    ``nnx.Variable`` exposes its array) is dropped, so Variables and pure arrays give the
    same names.
    """
    names = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            names.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            names.append(str(key.name))
        elif isinstance(key, jax.tree_util.SequenceKey):
            names.append(str(key.idx))
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            names.append(str(key.key))
        else:
            names.append(str(key))
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and names[-1] == "value":
        names.pop()
    return tuple(names)


def _stack_depth(names: PathNames, stacked: Sequence[str]) -> int:
    """Number of leading stack axes: one per path component listed in ``stacked``."""
    return sum(1 for n in names[:-1] if n in stacked)


def matrix_spec(
    names: PathNames,
    shape: Shape,
    *,
    stacked: Sequence[str] = (),
    per_head: bool = False,
) -> MatrixSpec | None:
    """The matrix view of a parameter from its path and shape, or None for a non-matrix.

    Rules (after removing one leading stack axis per path component named in ``stacked``):

    * rank < 2 → None;
    * rank 2 → ``(in, out)``, as ``nnx.Linear`` stores it;
    * rank 3 under a query/key/value module → ``(in, heads·head_dim)``
      (nnx.MultiHeadAttention's ``(in, heads, head_dim)``);
    * otherwise all axes but the last are fan-in, the last is fan-out: conv kernels
      ``(*window, in, out)`` → ``(window·in, out)``, the attention output kernel
      ``(heads, head_dim, out)`` → ``(heads·head_dim, out)``.

    With ``per_head=True`` attention kernels become one matrix per head instead.

    Args:
      names: path components (see :func:`path_names`).
      shape: the parameter's shape.
      stacked: path component names whose parameters carry a leading stack axis
        (``nnx.scan`` / ``nnx.vmap`` layers, experts). Never inferred: a leading axis is a
        stack only when declared.
      per_head: orthogonalize attention projections per head.

    Returns:
      A :class:`MatrixSpec` (axes index the full shape, stack axes are batch axes) or None.
    """
    n_stack = _stack_depth(names, stacked)
    core = len(shape) - n_stack
    if core < 2:
        return None
    axes = tuple(range(n_stack, len(shape)))
    parent = names[-2] if len(names) >= 2 else ""
    if core == 3 and parent in QKV_NAMES:
        if per_head:
            return MatrixSpec((axes[0],), (axes[2],))
        return MatrixSpec((axes[0],), (axes[1], axes[2]))
    if core == 3 and per_head and parent in ATTENTION_OUT_NAMES:
        return MatrixSpec((axes[1],), (axes[2],))
    return MatrixSpec(axes[:-1], (axes[-1],))


def default_route(
    names: PathNames,
    shape: Shape,
    *,
    stacked: Sequence[str] = (),
    per_head: bool = False,
    head_names: Sequence[str] = HEAD_NAMES,
    embed_names: Sequence[str] = EMBED_NAMES,
) -> MatrixSpec | None:
    """Preset routing: a :class:`MatrixSpec` for hidden matrices, None for AdamW params.

    AdamW gets: embeddings (any path component in ``embed_names``), the output head (any
    component in ``head_names`` or ending in ``_head``), biases and norm gains (leaf named
    bias / scale / gamma / beta), and everything of matrix rank < 2. The rest is Muon.
    """
    leaf = names[-1] if names else ""
    lowered = [n.lower() for n in names]
    if leaf in NON_MATRIX_LEAVES:
        return None
    if any(n in embed_names for n in lowered):
        return None
    if any(n in head_names or n.endswith("_head") for n in lowered):
        return None
    return matrix_spec(names, shape, stacked=stacked, per_head=per_head)


def _resolve(
    names: PathNames,
    shape: Shape,
    labels: RouteFn | None,
    routing: dict[str, Any],
) -> MatrixSpec | None:
    """User rule first (``labels``), presets for what it leaves undecided (None)."""
    decision = labels(names, shape) if labels is not None else None
    if isinstance(decision, MatrixSpec):
        return decision
    if decision is None:
        return default_route(names, shape, **routing)
    if decision == "adam":
        return None
    if decision == "muon":
        spec = matrix_spec(names, shape, stacked=routing["stacked"], per_head=routing["per_head"])
        if spec is None:
            raise ValueError(
                f"labels sent parameter {'/'.join(names)} of shape {shape} to 'muon', but it "
                "has no matrix view (rank < 2 after stack axes); route it to 'adam'."
            )
        return spec
    raise ValueError(
        f"labels must return 'muon', 'adam', a MatrixSpec or None; got {decision!r} for "
        f"{'/'.join(names)}."
    )


def _routing_kwargs(
    stacked: Sequence[str],
    per_head: bool,
    head_names: Sequence[str],
    embed_names: Sequence[str],
) -> dict[str, Any]:
    if isinstance(stacked, str):
        stacked = (stacked,)
    return dict(
        stacked=tuple(stacked),
        per_head=per_head,
        head_names=tuple(n.lower() for n in head_names),
        embed_names=tuple(n.lower() for n in embed_names),
    )


def muon_specs(
    params: Any,
    *,
    labels: RouteFn | None = None,
    stacked: Sequence[str] = (),
    per_head: bool = False,
    head_names: Sequence[str] = HEAD_NAMES,
    embed_names: Sequence[str] = EMBED_NAMES,
) -> Any:
    """Pytree of :class:`MatrixSpec` (Muon) or None (AdamW), one per leaf of ``params``.

    Arguments as in :func:`muon_labels`. Only shapes are read (works on ShapeDtypeStructs).
    """
    routing = _routing_kwargs(stacked, per_head, head_names, embed_names)
    return jax.tree_util.tree_map_with_path(
        lambda p, x: _resolve(path_names(p), tuple(x.shape), labels, routing), params
    )


def muon_labels(
    params: Any,
    *,
    labels: RouteFn | None = None,
    stacked: Sequence[str] = (),
    per_head: bool = False,
    head_names: Sequence[str] = HEAD_NAMES,
    embed_names: Sequence[str] = EMBED_NAMES,
) -> Any:
    """Labels every parameter ``"muon"`` or ``"adam"`` from its path and shape.

    Muon gets hidden weight matrices; AdamW gets input embeddings, the output head, biases,
    norm gains and everything of rank < 2 (SPEC B; Moonshot arXiv:2502.16982). Flax NNX
    layouts are understood: ``nnx.Embed`` ("embedding") → adam; ``nnx.Linear`` (in, out) and
    ``nnx.Conv`` (*window, in, out) → one matrix; ``nnx.MultiHeadAttention`` query/key/value
    (in, heads, head_dim) and out (heads, head_dim, out) → one matrix each; the attention
    module's own ``out`` is a hidden matrix, only names like head / lm_head / unembed /
    classifier (see ``HEAD_NAMES``) are the head.

    Args:
      params: a pytree of arrays (or nnx.Variables, or ShapeDtypeStructs).
      labels: optional user rule ``(path_names, shape) -> "muon" | "adam" | MatrixSpec |
        None``; it overrides the presets, None defers to them for that parameter.
      stacked: path component names carrying a leading stack axis (nnx.scan / nnx.vmap
        layers, experts); such parameters are stacks of matrices.
      per_head: orthogonalize attention projections per head.
      head_names: exact (lower-case) component names of output heads.
      embed_names: exact (lower-case) component names of embeddings.

    Returns:
      A pytree of ``"muon"`` / ``"adam"`` strings with ``params``' structure, ready for
      ``optax.partition``.

    Example:
      >>> import jax.numpy as jnp
      >>> p = {"embed": {"embedding": jnp.zeros((10, 4))}, "mlp": {"kernel": jnp.zeros((4, 8)),
      ...      "bias": jnp.zeros(8)}, "head": {"kernel": jnp.zeros((4, 10))}}
      >>> muon_labels(p)
      {'embed': {'embedding': 'adam'}, 'head': {'kernel': 'adam'}, \
'mlp': {'bias': 'adam', 'kernel': 'muon'}}
    """
    specs = muon_specs(
        params,
        labels=labels,
        stacked=stacked,
        per_head=per_head,
        head_names=head_names,
        embed_names=embed_names,
    )
    return jax.tree.map(
        lambda s: "adam" if s is None else "muon",
        specs,
        is_leaf=lambda s: s is None or isinstance(s, MatrixSpec),
    )


def _fans(shape: Shape, spec: MatrixSpec) -> tuple[int, int]:
    return (
        math.prod(shape[a] for a in spec.reduction_axes),
        math.prod(shape[a] for a in spec.output_axes),
    )


class RouteRow(NamedTuple):
    """One row of :func:`routing_table`."""

    path: str
    shape: Shape
    route: str
    matrix: str
    scale: str


def _scale_text(fan_in: int, fan_out: int, scale: Any, rms: float) -> str:
    if scale == "moonshot":
        return f"{rms * math.sqrt(max(fan_in, fan_out)):.4g}"
    if scale == "keller":
        return f"{math.sqrt(max(1.0, fan_out / fan_in)):.4g}"
    if scale == "rms":
        return f"rms→{rms:g}"
    return f"{scale}"


def routing_table(
    params: Any,
    *,
    labels: RouteFn | None = None,
    stacked: Sequence[str] = (),
    per_head: bool = False,
    head_names: Sequence[str] = HEAD_NAMES,
    embed_names: Sequence[str] = EMBED_NAMES,
    scale: str | float = "moonshot",
    rms: float = MOONSHOT_RMS,
    print_table: bool = True,
) -> list[RouteRow]:
    """Shows where each parameter goes: path, shape, route, matrix view and update scale.

    Args:
      params: a pytree of arrays (or nnx.Variables / ShapeDtypeStructs).
      labels, stacked, per_head, head_names, embed_names: as in :func:`muon_labels`.
      scale, rms: as in :func:`muon`, to print the update scale of each matrix.
      print_table: also print the table.

    Returns:
      A list of :class:`RouteRow`; ``matrix`` reads ``[stack ×] fan_in × fan_out``.

    Example:
      >>> import jax.numpy as jnp
      >>> rows = routing_table({"w": jnp.zeros((4, 8))}, print_table=False)
      >>> rows[0].route, rows[0].matrix
      ('muon', '4 × 8')
    """
    specs = muon_specs(
        params,
        labels=labels,
        stacked=stacked,
        per_head=per_head,
        head_names=head_names,
        embed_names=embed_names,
    )
    is_spec = lambda s: s is None or isinstance(s, MatrixSpec)  # noqa: E731
    spec_leaves = jax.tree.leaves(specs, is_leaf=is_spec)
    rows = []
    for (path, x), spec in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], spec_leaves, strict=True
    ):
        shape = tuple(x.shape)
        name = "/".join(path_names(path))
        if spec is None:
            rows.append(RouteRow(name, shape, "adam", "-", "-"))
            continue
        fan_in, fan_out = _fans(shape, spec)
        used = set(spec.reduction_axes) | set(spec.output_axes)
        batch = [shape[a] for a in range(len(shape)) if a not in used]
        mat = " × ".join(str(d) for d in [*batch, fan_in, fan_out])
        rows.append(RouteRow(name, shape, "muon", mat, _scale_text(fan_in, fan_out, scale, rms)))
    if print_table:
        headers = RouteRow("path", "shape", "route", "matrix", "scale")  # type: ignore[arg-type]
        text = [tuple(str(c) for c in r) for r in [headers, *rows]]
        widths = [max(len(r[i]) for r in text) for i in range(5)]
        for r in text:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return rows


# --------------------------------------------------------------------------------------------
# The Muon stage


def _scale_factor(fan_in: int, fan_out: int, scale: Any, rms: Any) -> Any:
    """Shape-derived update multiplier (``"rms"`` is handled separately)."""
    if scale == "moonshot":
        return rms * math.sqrt(max(fan_in, fan_out))
    if scale == "keller":
        # Keller: sqrt(max(1, rows/cols)) with rows = fan-out (PyTorch weights are out × in).
        return math.sqrt(max(1.0, fan_out / fan_in))
    return scale


def _apply_scale(o: jax.Array, scale: Any, rms: Any) -> jax.Array:
    """Multiplies orthogonalized matrices ``(..., fan_in, fan_out)`` by their update scale."""
    if isinstance(scale, str) and scale == "rms":
        return _exact_rms(o, rms)
    fan_in, fan_out = o.shape[-2:]
    return o * _scale_factor(fan_in, fan_out, scale, rms)


def _exact_rms(o: jax.Array, rms: Any) -> jax.Array:
    """Rescales each matrix (last two axes) of ``o`` so its RMS is exactly ``rms``."""
    o32 = o.astype(jnp.float32)
    current = jnp.sqrt(jnp.mean(jnp.square(o32), axis=(-2, -1), keepdims=True))
    safe = jnp.where(current > 0, current, 1.0)
    return jnp.where(current > 0, o32 * (rms / safe), 0.0).astype(o.dtype)


def _explicit_spec(x: jax.Array) -> tuple[Any, ...] | None:
    """The PartitionSpec of ``x`` (padded to its rank) under explicit sharding, else None.

    Under ``jax.sharding.AxisType.Explicit`` reshapes and contractions over sharded axes
    must be told their output sharding; Muon instead gathers each matrix's own axes (the
    paper's "Distributed Muon": gather the full matrix for NS) and keeps batch axes sharded.
    """
    try:
        sharding = jax.typeof(x).sharding
    except (AttributeError, TypeError):
        return None
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or getattr(mesh, "empty", True):
        return None
    if not any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
        return None
    spec = tuple(sharding.spec)
    return spec + (None,) * (x.ndim - len(spec))


def _reshard(x: jax.Array, spec: Sequence[Any]) -> jax.Array:
    return jax.sharding.reshard(x, jax.sharding.PartitionSpec(*spec))


def _check_scale(scale: Any) -> None:
    if isinstance(scale, str):
        _validation.check_choice("scale", scale, SCALES)
    elif _validation.concrete_float(scale) is not None or isinstance(scale, jax.core.Tracer):
        _validation.check_non_negative("scale", scale)
    else:
        raise ValueError(
            f"scale must be one of {list(SCALES)} or a number >= 0; got scale={scale!r}."
        )


def _check_filter(gamma: Any, eta: Any, b2: Any, warmup: Any, kappa: Any) -> None:
    if gamma is not None:
        _validation.check_range("filter_gamma", gamma, low=0.0, low_open=True)
    _validation.check_range("filter_eta", eta, low=0.0, high=1.0)
    _validation.check_decay("filter_b2", b2)
    _validation.check_non_negative_int("filter_warmup", warmup)
    _validation.check_non_negative("filter_kappa", kappa)


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
    filter_gamma: float | None = None,
    filter_eta: float = 1.0,
    filter_b2: float = 0.999,
    filter_warmup: int = 20,
    filter_kappa: float = 1e-2,
) -> optax.GradientTransformationExtraArgs:
    r"""Muon's update direction: momentum, Newton–Schulz orthogonalization, shape scaling.

    .. math::
      M_t = \beta M_{t-1} + (1-\beta) G_t, \quad
      U = (1-\beta) G_t + \beta M_t \ \text{(Nesterov)} \ \text{or}\ M_t, \quad
      O = \mathrm{scale}(A, B)\cdot \mathrm{NS}(U)

    ``bias_correction=True`` reproduces ``optax.contrib.muon``:
    :math:`U = \beta M_t/(1-\beta^{t+1}) + (1-\beta) G_t/(1-\beta^t)` (Nesterov) or
    :math:`M_t/(1-\beta^t)`. The default ``False`` is Keller Jordan's and Moonshot's reference
    algorithm. NS normalizes its input by its Frobenius norm, so the correction is a
    no-op without Nesterov and only re-weights gradient vs momentum in the first
    ~1/(1-β) steps with it.

    Every leaf it sees must have a matrix view (route other params elsewhere, see
    :func:`muon`). Same-shape plain matrices are stacked and orthogonalized in one batched
    call; declared stacks (``stacked``) are orthogonalized per matrix in their own call, so a
    stack sharded along its stack axis needs no communication.

    Optional spike filter (``filter_gamma`` not None): the SPEC-A robust Kalman filter
    :func:`filtered_optax.kalman_filter_math` runs on ``G_t`` before the momentum, reading
    ``M_{t-1}`` as its first moment (decay β) and a second moment ``ν`` (decay
    ``filter_b2``) fed with the filtered gradient. Muon keeps no second moment, so the filter
    costs exactly one extra param-sized float32 leaf per Muon parameter (``state.nu``).

    Args:
      beta: momentum decay in [0, 1).
      nesterov: use the Nesterov mix (default, as both references).
      bias_correction: bias-correct the momentum like ``optax.contrib.muon``.
      coefficients: Newton–Schulz coefficients, ``"polar_express"`` (default: its singular
        values end nearer 1, which is what makes the Moonshot RMS come out at 0.2),
        ``"keller"``, a triple or a sequence of triples; see :func:`newton_schulz`.
      ns_steps: Newton–Schulz iterations (None: 5, or the table length).
      eps: added to the Frobenius norm before NS (Keller's 1e-7).
      compute_dtype: NS arithmetic dtype (None = float32; ``"bfloat16"`` for speed).
      scale: ``"moonshot"`` (``rms·√max(fan_in, fan_out)``, default), ``"keller"``
        (``√max(1, fan_out/fan_in)``), ``"rms"`` (rescale each matrix so its RMS is exactly
        ``rms``; Moonshot's "update norm" variant) or a number (a plain multiplier).
      rms: target RMS for ``"moonshot"`` and ``"rms"`` (Moonshot's 0.2).
      mu_dtype: momentum dtype (None = the parameter's).
      dimension_numbers: a :class:`MatrixSpec` for every leaf, or a rule
        ``(path_names, shape) -> MatrixSpec | None``; None (or a None answer) uses
        :func:`matrix_spec` with ``stacked`` / ``per_head``.
      stacked: path component names carrying a leading stack axis.
      per_head: attention projections per head.
      batch_same_shape: stack same-shape plain matrices into one NS call. None (default)
        batches on accelerators and not on CPU, where XLA runs a batched matmul slower than
        the same matmuls one by one (measured 1.65x vs 1.80x optax.contrib.muon's speed on
        8 x 1024², benchmarks/results/perf.md).
      filter_gamma: spike threshold (RMS units) of the optional filter; None = no filter.
      filter_eta, filter_b2, filter_warmup, filter_kappa: the filter's other settings
        (SPEC A defaults; ``filter_b2`` is the decay of its second moment).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with :class:`MuonState`. Updates are
      not yet multiplied by ``-lr``.

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
    _validation.check_non_negative("eps", eps)
    _validation.check_non_negative("rms", rms)
    _check_scale(scale)
    _validation.check_float_dtype("compute_dtype", compute_dtype)
    resolve_coefficients(coefficients, ns_steps)  # validates coefficients and ns_steps
    filtered = filter_gamma is not None
    _check_filter(filter_gamma, filter_eta, filter_b2, filter_warmup, filter_kappa)
    mu_dtype = _validation.check_float_dtype("mu_dtype", mu_dtype)
    stacked = (stacked,) if isinstance(stacked, str) else tuple(stacked)
    ns_kwargs = dict(
        coefficients=coefficients, ns_steps=ns_steps, eps=eps, compute_dtype=compute_dtype
    )

    def spec_of(path: Sequence[Any], shape: Shape) -> MatrixSpec:
        names = path_names(path)
        if isinstance(dimension_numbers, MatrixSpec):
            spec = dimension_numbers
        else:
            spec = dimension_numbers(names, shape) if dimension_numbers is not None else None
            if spec is None:
                spec = matrix_spec(names, shape, stacked=stacked, per_head=per_head)
        if spec is None:
            raise ValueError(
                f"scale_by_muon got parameter {'/'.join(names)} of shape {shape}, which has "
                "no matrix view; route it to another optimizer (see muon_labels)."
            )
        return spec

    def init_fn(params: Any) -> MuonState:
        # Newton-Schulz is defined for real matrices: integer, boolean and complex leaves
        # are rejected here rather than silently cast.
        _validation.check_leaf_dtypes(
            params, "parameter", owner="fo.scale_by_muon", allow_complex=False)
        mu = otu.zeros_like(params, dtype=mu_dtype)
        nu = otu.zeros_like(params, dtype=jnp.float32) if filtered else None
        return MuonState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

    def update_fn(
        updates: Any, state: MuonState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, MuonState]:
        del params, extra_args
        _validation.check_leaf_dtypes(
            updates, "gradient", owner="fo.scale_by_muon", allow_complex=False)
        batch = jax.default_backend() != "cpu" if batch_same_shape is None else batch_same_shape
        count = state.count
        g32 = jax.tree.map(lambda g: g.astype(jnp.float32), updates)
        nu = None
        if filtered:
            from filtered_optax._filters import kalman_filter_math

            g32 = jax.tree.map(
                lambda g, m, v: kalman_filter_math(
                    g,
                    m.astype(jnp.float32),
                    v,
                    count,
                    b1=beta,
                    b2=filter_b2,
                    eta=filter_eta,
                    gamma=filter_gamma,
                    warmup=filter_warmup,
                    kappa=filter_kappa,
                ).filtered.astype(jnp.float32),
                g32,
                state.mu,
                state.nu,
            )
            nu = jax.tree.map(lambda v, g: filter_b2 * v + (1 - filter_b2) * g * g, state.nu, g32)
        mu = jax.tree.map(lambda m, g: beta * m.astype(jnp.float32) + (1 - beta) * g, state.mu, g32)
        t = optax.safe_increment(count)
        if nesterov:
            if bias_correction:
                tf = t.astype(jnp.float32)
                # optax.contrib.muon's NAdam-style correction: M_t is corrected one step ahead.
                c_m, c_g = beta / (1 - beta ** (tf + 1)), (1 - beta) / (1 - beta**tf)
                u = jax.tree.map(lambda m, g: c_m * m + c_g * g, mu, g32)
            else:
                u = jax.tree.map(lambda m, g: (1 - beta) * g + beta * m, mu, g32)
        elif bias_correction:
            tf = t.astype(jnp.float32)
            u = jax.tree.map(lambda m: m / (1 - beta**tf), mu)
        else:
            u = mu

        leaves, treedef = jax.tree_util.tree_flatten_with_path(u)
        grad_leaves = jax.tree.leaves(updates)
        out: list[Any] = [None] * len(leaves)
        groups: dict[tuple[int, int], list[tuple[int, Any, Any]]] = {}
        explicit: list[Any] = [None] * len(leaves)
        for i, (path, x) in enumerate(leaves):
            shape = tuple(x.shape)
            spec = spec_of(path, shape)
            explicit[i] = _explicit_spec(x)
            if explicit[i] is not None:
                matrix_axes = set(spec.reduction_axes) | set(spec.output_axes)
                x = _reshard(
                    x, [None if a in matrix_axes else p for a, p in enumerate(explicit[i])]
                )
            to_m, from_m = matrix_view(shape, spec.reduction_axes, spec.output_axes)
            mat = to_m(x)
            fan_in, fan_out = mat.shape[-2:]
            if batch and mat.ndim == 2:
                groups.setdefault((fan_in, fan_out), []).append((i, mat, from_m))
            else:
                out[i] = from_m(_apply_scale(newton_schulz(mat, **ns_kwargs), scale, rms))
        for members in groups.values():
            if len(members) == 1:
                i, mat, from_m = members[0]
                out[i] = from_m(_apply_scale(newton_schulz(mat, **ns_kwargs), scale, rms))
                continue
            batch = newton_schulz(jnp.stack([m for _, m, _ in members]), **ns_kwargs)
            batch = _apply_scale(batch, scale, rms)
            for k, (i, _, from_m) in enumerate(members):
                out[i] = from_m(batch[k])
        out = [o.astype(g.dtype) for o, g in zip(out, grad_leaves, strict=True)]
        out = [o if e is None else _reshard(o, e) for o, e in zip(out, explicit, strict=True)]
        new_updates = jax.tree_util.tree_unflatten(treedef, out)
        mu = jax.tree.map(lambda m, old: m.astype(old.dtype), mu, state.mu)
        return new_updates, MuonState(count=t, mu=mu, nu=nu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------------------------
# The flat alias


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
    filter_gamma: float | None = None,
    filter_eta: float = 1.0,
    filter_b2: float = 0.999,
    filter_warmup: int = 20,
    filter_kappa: float = 1e-2,
    *,
    nesterov: bool = True,
    bias_correction: bool = False,
    coefficients: Coefficients = "polar_express",
    scale: str | float = "moonshot",
    compute_dtype: str | None = None,
    mu_dtype: str | None = None,
    labels: RouteFn | None = None,
    stacked: Sequence[str] = (),
    per_head: bool = False,
    head_names: Sequence[str] = HEAD_NAMES,
    embed_names: Sequence[str] = EMBED_NAMES,
    batch_same_shape: bool | None = None,
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

    Numeric hyperparameters are positional-or-keyword and everything structural is
    keyword-only, so ``optax.inject_hyperparams(muon)(learning_rate=...)`` works without
    ``static_args`` (pass ``static_args="labels"`` if you give a ``labels`` rule).

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
      filter_gamma: enables the SPEC-A spike filter in front of the momentum; None = off.
      filter_eta, filter_b2, filter_warmup, filter_kappa: see :func:`scale_by_muon`.
      nesterov, bias_correction, coefficients, scale, compute_dtype, mu_dtype,
        batch_same_shape: see :func:`scale_by_muon`.
      labels, stacked, per_head, head_names, embed_names: routing, see
        :func:`muon_labels`.

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
    from filtered_optax._alias import adamw

    _validation.check_learning_rate(learning_rate)
    if adam_learning_rate is not None:
        _validation.check_learning_rate(adam_learning_rate, "adam_learning_rate")
    _validation.check_non_negative("weight_decay", weight_decay)
    _validation.check_decay("adam_b1", adam_b1)
    _validation.check_decay("adam_b2", adam_b2)
    _validation.check_non_negative("adam_eps", adam_eps)
    if adam_weight_decay is not None:
        _validation.check_non_negative("adam_weight_decay", adam_weight_decay)
    routing = _routing_kwargs(stacked, per_head, head_names, embed_names)

    def route(names: PathNames, shape: Shape) -> MatrixSpec | None:
        return _resolve(names, shape, labels, routing)

    def param_labels(tree: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda p, x: "adam" if route(path_names(p), tuple(x.shape)) is None else "muon",
            tree,
        )

    muon_tx = optax.chain(
        scale_by_muon(
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
            filter_gamma=filter_gamma,
            filter_eta=filter_eta,
            filter_b2=filter_b2,
            filter_warmup=filter_warmup,
            filter_kappa=filter_kappa,
        ),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )
    adam_tx = adamw(
        learning_rate if adam_learning_rate is None else adam_learning_rate,
        b1=adam_b1,
        b2=adam_b2,
        eps=adam_eps,
        mu_dtype=mu_dtype,
        weight_decay=weight_decay if adam_weight_decay is None else adam_weight_decay,
    )
    return optax.partition({"muon": muon_tx, "adam": adam_tx}, param_labels)
