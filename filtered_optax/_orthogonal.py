"""Newton–Schulz orthogonalization: coefficient sets and a batched, pure iteration.

Muon replaces the momentum matrix ``U = P S Qᵀ`` (SVD) by an approximation of its
orthogonal polar factor ``P Qᵀ``. The approximation is an odd quintic matrix polynomial
applied a few times,

        X₀ = U / (s · ‖U‖_F + eps)
        X  ← a X + (b A + c A²) X,     A = X Xᵀ (the Gram matrix on the short side),

which maps every singular value σ through p(σ) = a σ + b σ³ + c σ⁵ and leaves the singular
vectors alone. Two coefficient sets are provided:

* ``"keller"`` — Keller Jordan's fixed (3.4445, -4.7750, 2.0315), repeated. It maximises the
    slope at zero, so small singular values grow fast, at the price of not converging to 1:
    after five steps the singular values of well-conditioned matrices land in about
    [0.68, 1.13].
* ``"polar_express"`` — the per-step minimax-optimal coefficients of Amsel et al. (Polar
    Express), normalised by ``1.02 · ‖U‖_F`` first; converges closer to 1 at the same cost.

A user may also pass one ``(a, b, c)`` triple (repeated) or a sequence of triples (one per
step). Everything here is a pure function of arrays; leading dimensions are batch dimensions,
so same-shape matrices can be stacked and orthogonalized in one call.

Muon's update of a whole tree goes through one function, :func:`orthogonalize_tree`: it views
each leaf as matrices, groups same-shape matrices into batched calls, spreads them over the
devices of a mesh (distributed Newton–Schulz, :mod:`._ns_split`), handles explicit
sharding, and multiplies each result by its update scale (:func:`update_scale`, the one
function that also gives :func:`filtered_optax.routing_table` its scale column).

References:
    Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024,
    https://kellerjordan.github.io/posts/muon/ (and github.com/KellerJordan/Muon).
    Amsel, Persson, Musco, Gower, "The Polar Express: Optimal Matrix Sign Methods and Their
    Application to the Muon Algorithm", arXiv:2505.16932, 2025.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from filtered_optax._ns_split import (
    Split,
    StackLayout,
    constrain,
    orthogonalize_stack,
    split_axes,
    stack_layout,
)
from filtered_optax._types import Coefficients

# Keller Jordan's quintic: chosen to maximise p'(0) = a while keeping p(σ) within roughly
# [0.7, 1.2] on (0, 1] after five steps (github.com/KellerJordan/Muon).
KELLER_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)

# Polar Express (arXiv:2505.16932): per-step minimax quintics for five steps, with a safety
# factor of 2e-2 built in (the table in common use, e.g. in modded-nanogpt). Each row is
# optimal for the spectrum the previous rows leave, so the order matters.
POLAR_EXPRESS_COEFFICIENTS: tuple[tuple[float, float, float], ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

# The Polar Express table assumes singular values in (0, 1]; normalising by 1.02·‖U‖_F
# (the same 2e-2 safety margin) keeps round-off from pushing the top one above 1.
POLAR_EXPRESS_SAFETY = 1.02

PRESETS: tuple[str, ...] = ("keller", "polar_express")

# Number of steps used when a preset or a single triple is given without `ns_steps`:
# both references run five.
DEFAULT_NS_STEPS = 5


def _is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def _as_triple(value: Any, name: str) -> tuple[float, float, float] | None:
    """Returns ``value`` as an (a, b, c) triple of floats, None when it isn't one."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{name} must be 'keller', 'polar_express', an (a, b, c) triple or a sequence "
            f"of triples; got {name}={value!r}."
        ) from err
    if arr.shape == (3,):
        return (float(arr[0]), float(arr[1]), float(arr[2]))
    return None


def resolve_coefficients(
    coefficients: Coefficients = "keller",
    ns_steps: int | None = None,
) -> tuple[tuple[tuple[float, float, float], ...], float]:
    """Turns a coefficient spec into a per-step table and its normalization safety factor.

    Rules: a preset name or a single ``(a, b, c)`` triple without ``ns_steps`` runs five steps;
    a sequence of triples runs one step per triple; with ``ns_steps`` a table is cut to its
    first ``ns_steps`` rows or padded by repeating its last row (as the Polar Express code
    does).

    Args:
        coefficients: ``"keller"``, ``"polar_express"``, one ``(a, b, c)`` triple, or a sequence
            of triples.
        ns_steps: number of iterations (>= 1), or None for the default above.

    Returns:
        ``(table, safety)``: a tuple of ``ns_steps`` triples and the factor ``s`` in
        ``X₀ = U / (s‖U‖_F + eps)`` (1.02 for Polar Express, 1 otherwise).

    Raises:
        ValueError: unknown preset, a malformed triple, or ``ns_steps < 1``.
    """
    if ns_steps is not None and not _is_traced(ns_steps):
        steps = np.asarray(ns_steps)
        if steps.shape != () or not np.issubdtype(steps.dtype, np.integer) or int(steps) < 1:
            raise ValueError(f"ns_steps must be an integer >= 1; got ns_steps={ns_steps!r}.")
    safety = 1.0
    if isinstance(coefficients, str):
        if coefficients == "keller":
            table: tuple[tuple[float, float, float], ...] = (KELLER_COEFFICIENTS,)
            default_steps = DEFAULT_NS_STEPS
        elif coefficients == "polar_express":
            table = POLAR_EXPRESS_COEFFICIENTS
            default_steps = len(table)
            safety = POLAR_EXPRESS_SAFETY
        else:
            raise ValueError(
                f"coefficients must be one of {list(PRESETS)}, an (a, b, c) triple or a sequence "
                f"of triples; got coefficients={coefficients!r}."
            )
    else:
        triple = _as_triple(coefficients, "coefficients")
        if triple is not None:
            table, default_steps = (triple,), DEFAULT_NS_STEPS
        else:
            try:
                rows = list(coefficients)
            except TypeError as err:
                raise ValueError(
                    f"coefficients must be a preset name, an (a, b, c) triple or a sequence of "
                    f"triples; got coefficients={coefficients!r}."
                ) from err
            parsed = []
            for i, row in enumerate(rows):
                t = _as_triple(row, "coefficients")
                if t is None:
                    raise ValueError(
                        "coefficients must hold (a, b, c) triples of length 3; got "
                        f"coefficients[{i}]={row!r} in coefficients={coefficients!r}."
                    )
                parsed.append(t)
            if not parsed:
                raise ValueError(
                    f"coefficients must not be empty; got coefficients={coefficients!r}."
                )
            table, default_steps = tuple(parsed), len(parsed)
    if ns_steps is None or _is_traced(ns_steps):
        # A traced step count is handled by `newton_schulz` with a dynamic loop over `table`.
        n = default_steps if ns_steps is None else len(table)
    else:
        n = int(ns_steps)
    if len(table) >= n:
        table = table[:n]
    else:
        table = table + (table[-1],) * (n - len(table))
    return table, safety


# Smallest row count split by `gram`: halves of 192+ rows still run near the full matmul rate
# on CPU, smaller blocks lose more in efficiency than the skipped mirror block saves (measured
# on 5 Newton-Schulz steps: 1.07x faster at 384 x 1536, 1.16x at 1024², 1.24x at 2048²).
_MIN_GRAM_SPLIT_ROWS = 384


def gram(p: jax.Array, precision: Any = None) -> jax.Array:
    r"""The symmetric product :math:`P P^\top` over the last two axes, one triangle computed.

    .. math::
        \begin{pmatrix} P_1 \\ P_2 \end{pmatrix}
        \begin{pmatrix} P_1 \\ P_2 \end{pmatrix}^{\!\top} =
        \begin{pmatrix} P_1 P_1^\top & P_1 P_2^\top \\ (P_1 P_2^\top)^\top & P_2 P_2^\top
        \end{pmatrix}

    recursively on the diagonal blocks while a block has at least 384 rows: about 3/4 (one
    level) to 5/8 (two levels) of the multiply-adds of a plain ``p @ p.T``, and the result is
    exactly symmetric. Each entry is the same dot product as in ``p @ p.T``.

    Args:
        p: array of shape ``(..., m, k)``.
        precision: ``jax.lax.Precision`` for the matmuls.

    Returns:
        ``(..., m, m)``, equal to ``p @ swapaxes(p, -1, -2)`` up to rounding.
    """
    m = p.shape[-2]
    if m < _MIN_GRAM_SPLIT_ROWS or m % 2:
        return jnp.matmul(p, jnp.swapaxes(p, -1, -2), precision=precision)
    top, bottom = p[..., : m // 2, :], p[..., m // 2 :, :]
    off = jnp.matmul(top, jnp.swapaxes(bottom, -1, -2), precision=precision)
    return jnp.concatenate(
        [
            jnp.concatenate([gram(top, precision), off], axis=-1),
            jnp.concatenate([jnp.swapaxes(off, -1, -2), gram(bottom, precision)], axis=-1),
        ],
        axis=-2,
    )


def _ns_step(x: jax.Array, a: Any, b: Any, c: Any, precision: Any) -> jax.Array:
    """One quintic step X ← aX + (bA + cA²)X with A = X Xᵀ, batched over leading dims.

    A is symmetric, so A² = A Aᵀ: both are Gram products (see :func:`gram`).
    """
    sym = gram(x, precision)
    poly = b * sym + c * gram(sym, precision)
    return a * x + jnp.matmul(poly, x, precision=precision)


def newton_schulz(
    x: jax.Array,
    *,
    coefficients: Coefficients = "keller",
    ns_steps: int | None = None,
    eps: float = 1e-7,
    compute_dtype: Any = None,
    precision: Any = None,
) -> jax.Array:
    r"""Approximate orthogonal polar factor of a (batch of) matrices by Newton–Schulz.

    .. math::
        X_0 = U / (s\,\|U\|_F + \epsilon),\quad
        X_{k+1} = a_k X_k + (b_k A_k + c_k A_k^2) X_k,\quad A_k = X_k X_k^\top

    The iteration runs on the short side: a tall ``(m, n)`` matrix (``m > n``) is transposed
    first, so the Gram matrix ``A`` is ``min(m, n)²``. The Frobenius norm is taken per matrix
    over the last two axes; all leading axes are batch axes.

    Args:
        x: array of shape ``(..., m, n)``.
        coefficients: ``"keller"`` (default, Keller Jordan's fixed triple), ``"polar_express"``
            (arXiv:2505.16932, with the 1.02 safety normalization), one ``(a, b, c)`` triple, or a
            sequence of triples (one per step).
        ns_steps: number of iterations; None = 5 for presets and triples, the table length for
            a sequence. May be a traced integer (then a ``lax.fori_loop`` runs it).
        eps: added to the norm so a zero matrix maps to zero.
        compute_dtype: dtype of the iteration (None = float32; ``jnp.bfloat16`` is Keller's
            speed setting). The result is cast back to ``x.dtype``.
        precision: ``jax.lax.Precision`` for the matmuls (None = JAX's default for the backend).

    Returns:
        An array of ``x``'s shape and dtype whose singular values are close to 1 (see the
        module docstring for how close) and whose singular vectors are ``x``'s.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> g = jax.random.normal(jax.random.key(0), (64, 128))
        >>> o = newton_schulz(g, coefficients="polar_express")
        >>> s = jnp.linalg.svd(o, compute_uv=False)
        >>> bool((s > 0.7).all() and (s < 1.2).all())
        True

    References:
        Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024.
        Amsel et al., "The Polar Express", arXiv:2505.16932, 2025.
    """
    if x.ndim < 2:
        raise ValueError(f"newton_schulz needs an array of rank >= 2; got x.shape={x.shape}.")
    table, safety = resolve_coefficients(coefficients, ns_steps)
    out_dtype = x.dtype
    dtype = jnp.dtype(jnp.float32 if compute_dtype is None else compute_dtype)
    transpose = x.shape[-2] > x.shape[-1]
    y = x.astype(dtype)
    if transpose:
        y = jnp.swapaxes(y, -1, -2)
    # Norm in float32 (or the wider compute dtype) even for bf16 iterations: a bf16 sum of
    # squares loses the scale.
    norm_dtype = jnp.promote_types(dtype, jnp.float32)
    wide = y.astype(norm_dtype)
    norm = jnp.sqrt(jnp.sum(jnp.square(wide), axis=(-2, -1), keepdims=True))
    y = (wide / (safety * norm + eps)).astype(dtype)
    if _is_traced(ns_steps):
        coeffs = jnp.asarray(table, dtype=dtype)
        last = len(table) - 1

        def body(i, y):
            row = coeffs[jnp.minimum(i, last)]
            return _ns_step(y, row[0], row[1], row[2], precision)

        y = jax.lax.fori_loop(0, ns_steps, body, y)
    else:
        for a, b, c in table:
            y = _ns_step(y, a, b, c, precision)
    if transpose:
        y = jnp.swapaxes(y, -1, -2)
    return y.astype(out_dtype)


def orthogonalize(
    x: jax.Array,
    *,
    reduction_axes: Sequence[int],
    output_axes: Sequence[int],
    **ns_kwargs: Any,
) -> jax.Array:
    """Orthogonalizes a tensor viewed as matrices ``(fan_in, fan_out)`` over its other axes.

    The axes not named in ``reduction_axes`` / ``output_axes`` are batch axes (e.g. a stack of
    layers or experts); each batch element is orthogonalized on its own.

    Args:
        x: any array with at least one reduction and one output axis.
        reduction_axes: axes contracted with the layer input (fan-in), e.g. ``(0,)`` for an
            ``nnx.Linear`` kernel ``(in, out)``, ``(0, 1, 2)`` for a 2-D conv ``(kh, kw, in, out)``.
        output_axes: axes of the layer output (fan-out), e.g. ``(1, 2)`` for an attention
            query kernel ``(in, heads, head_dim)``.
        **ns_kwargs: forwarded to :func:`newton_schulz`.

    Returns:
        The orthogonalized array, same shape and dtype as ``x``.

    Example:
        >>> import jax
        >>> k = jax.random.normal(jax.random.key(0), (3, 3, 8, 16))  # conv kernel
        >>> orthogonalize(k, reduction_axes=(0, 1, 2), output_axes=(3,)).shape
        (3, 3, 8, 16)
    """
    to_matrix, from_matrix = matrix_view(x.shape, reduction_axes, output_axes)
    return from_matrix(newton_schulz(to_matrix(x), **ns_kwargs))


def matrix_view(
    shape: Sequence[int],
    reduction_axes: Sequence[int],
    output_axes: Sequence[int],
) -> tuple[Any, Any]:
    """Reshape functions between a tensor and its ``(batch, fan_in, fan_out)`` matrix view.

    Args:
        shape: the tensor's shape.
        reduction_axes, output_axes: disjoint, non-empty axis lists; the other axes are batch.

    Returns:
        ``(to_matrix, from_matrix)``: ``to_matrix(x)`` has shape ``(*batch, fan_in, fan_out)``
        (batch axes kept in order) and ``from_matrix`` inverts it.
    """
    ndim = len(shape)
    red = tuple(a % ndim for a in reduction_axes)
    out = tuple(a % ndim for a in output_axes)
    if not red or not out or set(red) & set(out):
        raise ValueError(
            "reduction_axes and output_axes must be non-empty and disjoint; got "
            f"reduction_axes={reduction_axes}, output_axes={output_axes} for shape {tuple(shape)}."
        )
    batch = tuple(a for a in range(ndim) if a not in red and a not in out)
    perm = batch + red + out
    inv = tuple(int(i) for i in np.argsort(perm))
    batch_shape = tuple(shape[a] for a in batch)
    mat_shape = batch_shape + (
        math.prod(shape[a] for a in red),
        math.prod(shape[a] for a in out),
    )
    perm_shape = tuple(shape[a] for a in perm)

    def to_matrix(x: jax.Array) -> jax.Array:
        return jnp.transpose(x, perm).reshape(mat_shape)

    def from_matrix(m: jax.Array) -> jax.Array:
        return jnp.transpose(m.reshape(perm_shape), inv)

    return to_matrix, from_matrix


# --------------------------------------------------------------------------------------------
# Update scale of an orthogonalized matrix

SCALES: tuple[str, ...] = ("moonshot", "keller", "rms")

# Moonshot's 0.2: AdamW's typical update RMS is 0.2-0.4; matching it lets AdamW's learning
# rate and weight decay carry over unchanged (arXiv:2502.16982, section 2.2).
MOONSHOT_RMS = 0.2


def update_scale(fan_in: int, fan_out: int, scale: Any, rms: Any) -> Any:
    r"""The multiplier of an orthogonalized ``fan_in × fan_out`` matrix, or None for ``"rms"``.

    .. math::
      \text{moonshot: } r\sqrt{\max(A, B)}, \quad
      \text{keller: } \sqrt{\max(1, B / A)}, \quad \text{a number } c\text{: } c

    with :math:`A` = fan-in, :math:`B` = fan-out, :math:`r` = ``rms``. ``"rms"`` has no
    shape-derived factor: each matrix is rescaled to RMS exactly ``rms`` by
    :func:`scale_orthogonalized`, so None is returned.

    Args:
      fan_in, fan_out: the matrix view's sides.
      scale: ``"moonshot"``, ``"keller"``, ``"rms"`` or a number.
      rms: the target RMS of ``"moonshot"`` and ``"rms"``.

    Returns:
      The factor (a number, or an array when ``scale``/``rms`` is traced), or None.

    References:
      Liu et al., "Muon is Scalable for LLM Training", arXiv:2502.16982 (moonshot);
      Jordan, "Muon", 2024, github.com/KellerJordan/Muon (keller: rows/cols of a PyTorch
      ``out × in`` weight).
    """
    if isinstance(scale, str) and scale == "rms":
        return None
    if isinstance(scale, str) and scale == "moonshot":
        return rms * math.sqrt(max(fan_in, fan_out))
    if isinstance(scale, str) and scale == "keller":
        return math.sqrt(max(1.0, fan_out / fan_in))
    return scale


def _exact_rms(o: jax.Array, rms: Any) -> jax.Array:
    """Rescales each matrix (last two axes) of ``o`` so its RMS is exactly ``rms``."""
    wide = o.astype(jnp.promote_types(o.dtype, jnp.float32))
    current = jnp.sqrt(jnp.mean(jnp.square(wide), axis=(-2, -1), keepdims=True))
    safe = jnp.where(current > 0, current, 1.0)
    return jnp.where(current > 0, wide * (rms / safe), 0.0).astype(o.dtype)


def scale_orthogonalized(o: jax.Array, scale: Any, rms: Any) -> jax.Array:
    """Multiplies orthogonalized matrices ``(..., fan_in, fan_out)`` by their update scale.

    The factor is :func:`update_scale`'s; ``"rms"`` rescales each matrix to RMS ``rms``.
    """
    factor = update_scale(o.shape[-2], o.shape[-1], scale, rms)
    return _exact_rms(o, rms) if factor is None else o * factor


# --------------------------------------------------------------------------------------------
# A whole tree of matrices: grouping, batching, explicit sharding


def _explicit_sharding(x: jax.Array) -> tuple[Any, tuple[Any, ...]] | None:
    """``(mesh, spec)`` of ``x`` (spec padded to its rank) under explicit sharding, else None.

    Under ``jax.sharding.AxisType.Explicit`` reshapes and contractions over sharded axes
    must be told their output sharding. The mesh is the array's own, so this works with or
    without ``jax.set_mesh``.
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
    return mesh, spec + (None,) * (x.ndim - len(spec))


def _reshard(x: jax.Array, mesh: Any, spec: Sequence[Any]) -> jax.Array:
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
    return jax.sharding.reshard(x, sharding)


class _Piece(NamedTuple):
    """One leaf as a stack ``(k, short, long)`` of matrices, and how to turn results back."""

    index: int
    stack: jax.Array
    unstack: Callable[[jax.Array], jax.Array]


def _split_layout(x: jax.Array, spec: Any) -> StackLayout | None:
    """The leaf's layout when it can join a split (a mesh of > 1 devices, <= 1 batch axis)."""
    layout = stack_layout(x)
    batch_axes = x.ndim - len(spec.reduction_axes) - len(spec.output_axes)
    if layout is None or layout.mesh.size < 2 or batch_axes > 1:
        return None
    return layout


def _piece(index: int, x: jax.Array, spec: Any, layout: StackLayout, post: Any) -> _Piece:
    """Views leaf ``x`` as a stack of short-side-first matrices; ``unstack`` inverts it.

    ``unstack`` applies ``post`` (the update scale) to the ``(k, fan_in, fan_out)`` matrices
    and restores the leaf's own sharding where it is known. On an Explicit mesh a view that
    merges several axes into one matrix side gathers the matrix axes first (a reshape may not
    merge sharded axes), as :func:`orthogonalize_tree` does without a split.
    """
    if layout.explicit and (len(spec.reduction_axes) > 1 or len(spec.output_axes) > 1):
        matrix_axes = set(spec.reduction_axes) | set(spec.output_axes)
        gathered = [None if a in matrix_axes else p for a, p in enumerate(layout.spec)]
        x = constrain(x, layout, tuple(gathered))
    to_matrix, from_matrix = matrix_view(x.shape, spec.reduction_axes, spec.output_axes)
    mat = to_matrix(x)
    batch_shape, (rows, cols) = mat.shape[:-2], mat.shape[-2:]
    tall = rows > cols  # stacked short side first, so a tall matrix joins its wide transpose
    stack = mat.reshape((-1, rows, cols))
    stack = jnp.swapaxes(stack, -1, -2) if tall else stack

    def unstack(out: jax.Array) -> jax.Array:
        out = post(jnp.swapaxes(out, -1, -2) if tall else out)
        leaf = from_matrix(out.reshape(batch_shape + out.shape[-2:]))
        return leaf if layout.spec is None else constrain(leaf, layout, layout.spec)

    return _Piece(index, stack, unstack)


def _split_group(pieces: list[_Piece], orth: Any, split: Split) -> list[jax.Array] | None:
    """Orthogonalizes a group of same-shape stacks spread over the mesh; None: not worth it.

    The stacks are concatenated (on an Explicit mesh first moved to the first one's matrix
    sharding) and handed to :func:`~filtered_optax._ns_split.orthogonalize_stack`. A group of
    one matrix, or split axes of one device in all, is left to the unsplit path.
    """
    stacks = [p.stack for p in pieces]
    if len(stacks) > 1:
        first = stack_layout(stacks[0])
        if first is not None and first.spec is not None:
            common = (None, *first.spec[1:])
            stacks = [constrain(s, first, common) for s in stacks]
        stack = jnp.concatenate(stacks, axis=0)
    else:
        stack = stacks[0]
    layout = stack_layout(stack)
    if layout is None or stack.shape[0] < 2:
        return None
    axes = split_axes(layout, split, name="ns_split_axes")
    if math.prod(layout.mesh.shape[a] for a in axes) < 2:
        return None
    out = orthogonalize_stack(stack, orth, split=axes)
    if len(pieces) == 1:
        return [pieces[0].unstack(out)]
    ends = np.cumsum([s.shape[0] for s in stacks])
    return [p.unstack(out[e - p.stack.shape[0] : e]) for p, e in zip(pieces, ends, strict=True)]


def _split_leaves(
    leaves: list[Any], spec_leaves: list[Any], orth: Any, post: Any, split: Split
) -> dict[int, jax.Array]:
    """Results of every leaf the distributed Newton–Schulz handles, by leaf index."""
    groups: dict[tuple[Any, ...], list[_Piece]] = {}
    for i, (x, spec) in enumerate(zip(leaves, spec_leaves, strict=True)):
        layout = _split_layout(x, spec)
        if layout is not None:
            piece = _piece(i, x, spec, layout, post)
            groups.setdefault((*piece.stack.shape[1:], piece.stack.dtype), []).append(piece)
    done: dict[int, jax.Array] = {}
    for pieces in groups.values():
        results = _split_group(pieces, orth, split)
        if results is not None:
            done.update((p.index, r) for p, r in zip(pieces, results, strict=True))
    return done


def _local_leaves(
    leaves: list[Any], spec_leaves: list[Any], orth: Any, post: Any, batch: bool
) -> dict[int, jax.Array]:
    """Every leaf orthogonalized without a split, by index (None leaves are skipped)."""
    out: dict[int, jax.Array] = {}
    groups: dict[tuple[int, ...], list[tuple[int, jax.Array, Any]]] = {}
    restore: dict[int, Any] = {}
    for i, (x, spec) in enumerate(zip(leaves, spec_leaves, strict=True)):
        if x is None:
            continue
        explicit = _explicit_sharding(x)
        if explicit is not None:
            mesh, pspec = explicit
            matrix_axes = set(spec.reduction_axes) | set(spec.output_axes)
            x = _reshard(x, mesh, [None if a in matrix_axes else p for a, p in enumerate(pspec)])
            restore[i] = explicit
        to_matrix, from_matrix = matrix_view(x.shape, spec.reduction_axes, spec.output_axes)
        mat = to_matrix(x)
        key = mat.shape if batch and mat.ndim == 2 else (i, -1)  # -1: never batched
        groups.setdefault(key, []).append((i, mat, from_matrix))
    for members in groups.values():
        mats = [m for _, m, _ in members]
        if len(members) == 1:
            done = [post(orth(mats[0]))]
        else:
            done = post(orth(jnp.stack(mats)))
        for k, (i, _, from_matrix) in enumerate(members):
            out[i] = from_matrix(done[k])
    return {i: o if i not in restore else _reshard(o, *restore[i]) for i, o in out.items()}


def orthogonalize_tree(
    tree: Any,
    specs: Any,
    *,
    scale: Any = "moonshot",
    rms: Any = MOONSHOT_RMS,
    batch: bool = False,
    split: Split = None,
    **ns_kwargs: Any,
) -> Any:
    r"""Orthogonalizes every leaf of ``tree`` through its matrix view, then scales it.

    .. math:: O = \mathrm{scale}(A, B)\cdot\mathrm{NS}(U) \quad\text{per matrix } U

    Each leaf is viewed as matrices by its :class:`MatrixSpec` (batch axes kept); with
    ``batch``, same-shape plain matrices are stacked into one :func:`newton_schulz` call.
    Under explicit sharding a leaf's matrix axes are gathered first (Distributed Muon:
    each device orthogonalizes whole matrices) and its own sharding is restored after,
    so a stack sharded along its stack axis needs no communication.

    With ``split`` (not None) and leaves on a mesh of more than one device, same-shape
    matrices (a tall one transposed to join its wide twins, a declared stack contributing
    each of its matrices) are concatenated into one stack whose stack axis is spread over the
    mesh axes ``split`` names (``"auto"``: chosen from the leaves' shardings), so each device
    orthogonalizes only its own ``⌈n/N⌉`` matrices
    (:func:`~filtered_optax._ns_split.orthogonalize_stack`); results go back to each leaf's
    sharding where it is known (always on an Explicit mesh; on an Auto mesh under ``jit`` XLA
    places them). A group of a single matrix, a leaf with more than one batch axis and
    leaves on one device take the unsplit path above, unchanged.

    Args:
      tree: a pytree of arrays.
      specs: a pytree with ``tree``'s structure whose leaves are :class:`MatrixSpec`.
      scale, rms: the update scale, see :func:`update_scale`.
      batch: stack same-shape plain matrices into one call (unsplit path).
      split: ``"auto"``, a tuple of mesh axis names, or None (no split).
      **ns_kwargs: forwarded to :func:`newton_schulz`.

    Returns:
      A pytree like ``tree`` (same shapes and dtypes).

    Example:
      >>> import jax.numpy as jnp, filtered_optax as fo
      >>> from filtered_optax._orthogonal import orthogonalize_tree
      >>> out = orthogonalize_tree({"w": jnp.eye(4)}, {"w": fo.MatrixSpec((0,), (1,))})
      >>> out["w"].shape
      (4, 4)

    References:
      Liu et al., "Muon is Scalable for LLM Training", arXiv:2502.16982 (Distributed Muon).
    """
    leaves, treedef = jax.tree.flatten(tree)
    spec_leaves = treedef.flatten_up_to(specs)

    def orth(x: jax.Array) -> jax.Array:
        return newton_schulz(x, **ns_kwargs)

    def post(o: jax.Array) -> jax.Array:
        return scale_orthogonalized(o, scale, rms)

    done = {} if split is None else _split_leaves(leaves, spec_leaves, orth, post, split)
    rest = [None if i in done else x for i, x in enumerate(leaves)]
    done.update(_local_leaves(rest, spec_leaves, orth, post, batch))
    return jax.tree.unflatten(treedef, [done[i] for i in range(len(leaves))])
