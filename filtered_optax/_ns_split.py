"""Distributed Newton–Schulz: orthogonalize a stack of matrices, each device its own slice.

Muon's Newton–Schulz iteration acts on whole matrices, so a matrix sharded over devices has to
be gathered first (the paper's "Distributed Muon"). Done naively every device gathers every
matrix and repeats the whole computation. Here a stack ``(n, a, b)`` of same-shape matrices is
instead spread over the devices along its stack axis: with ``N`` devices each one
orthogonalizes ``⌈n / N⌉`` whole matrices, so the per-device FLOPs drop from ``n·F`` to
``⌈n / N⌉·F`` (``F`` = one matrix's Newton–Schulz cost).

        stack (n, a, b), sharded as its parameters are
          → pad n to a multiple of N                 (zero matrices map to zero)
          → constrain: axis 0 over the split axes    (all-to-all of whole matrices)
          → Newton–Schulz on the local (n/N, a, b) slice (no communication)
          → constrain back to the parameters' own sharding, drop the padding

There is no communication code here: the moves are sharding constraints
(``jax.lax.with_sharding_constraint`` on an Auto mesh, ``jax.sharding.reshard`` on an Explicit
mesh) and XLA's SPMD partitioner inserts the collectives.

The split axes are ordered so the moves are cheap: axes already sharding the stack axis come
first (a stack of layers sharded on its layer axis needs no communication at all), then the
axes the matrices are replicated over (a local slice), then the axes that shard the matrices
themselves (FSDP): for those the move is an all-to-all in which every device receives only the
pieces of the whole matrices it orthogonalizes. Both moves go through an intermediate sharding
(stack axis over the first two groups, matrix axes as they were), so each step is one plain
collective rather than a full rematerialization.

References:
    Liu et al. (Moonshot AI), "Muon is Scalable for LLM Training", arXiv:2502.16982, 2025
    (Distributed Muon).
    Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024.
    JAX, "Explicit sharding" (docs.jax.dev/en/latest/notebooks/explicit-sharding.html).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec

Split = str | tuple[str, ...] | None


class StackLayout(NamedTuple):
    """Where a stack lives: its mesh, its spec (one entry per axis) and the mesh's mode.

    ``spec`` is None when the sharding is unknown (an Auto-mode tracer: only the mesh is
    known inside ``jit``); ``explicit`` is True on a mesh with Explicit axes.
    """

    mesh: Any
    spec: tuple[Any, ...] | None
    explicit: bool


def _entry_axes(entry: Any) -> tuple[str, ...]:
    """The mesh axis names of one PartitionSpec entry (None, a name, or a tuple of names)."""
    if entry is None or entry is PartitionSpec.UNCONSTRAINED:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _padded_spec(spec: Any, ndim: int) -> tuple[Any, ...]:
    spec = tuple(spec)
    return spec + (None,) * (ndim - len(spec))


def stack_layout(x: jax.Array, out_sharding: NamedSharding | None = None) -> StackLayout | None:
    """Reads the mesh and PartitionSpec of ``x``, concrete or traced.

    A concrete array answers through ``x.sharding``; a tracer through ``jax.typeof(x)``, which
    holds the full spec on an Explicit mesh but only the mesh on an Auto one. There the spec of
    ``out_sharding``, when given, stands in for the unknown spec (and its mesh for a missing
    one).

    Args:
        x: the stack.
        out_sharding: optional ``NamedSharding`` the result should have.

    Returns:
        A :class:`StackLayout`, or None when ``x`` is not on a mesh.
    """
    traced = isinstance(x, jax.core.Tracer)
    sharding = getattr(jax.typeof(x) if traced else x, "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or getattr(mesh, "empty", False):
        if out_sharding is None:
            return None
        sharding, mesh, traced = out_sharding, out_sharding.mesh, False
    explicit = any(t == AxisType.Explicit for t in mesh.axis_types)
    if explicit or not traced:
        spec = _padded_spec(sharding.spec, x.ndim)
    elif out_sharding is not None:
        spec = _padded_spec(out_sharding.spec, x.ndim)
    else:
        spec = None
    return StackLayout(mesh, spec, explicit)


def check_split(split: Any, name: str = "ns_split_axes") -> Split:
    """Validates a split setting before any mesh is known; returns it with lists as tuples.

    Allowed: ``"auto"``, None, or a tuple (or list) of distinct, non-empty mesh axis names.
    Whether the names exist is checked against the mesh by :func:`split_axes`. This is the
    validation of ``fo.muon(..., ns_split_axes=...)`` (README, "Multiple devices and multiple
    hosts").

    Raises:
        TypeError: a value of another type (a number, a tuple holding non-strings), naming
          ``name``.
        ValueError: another string, or empty or repeated axis names, naming ``name``.
    """
    if split is None or (isinstance(split, str) and split == "auto"):
        return split
    is_names = isinstance(split, (tuple, list)) and all(isinstance(a, str) for a in split)
    if not isinstance(split, str) and not is_names:
        raise TypeError(
            f"{name} must be 'auto', None or a tuple of mesh axis names (strings); "
            f"got {name}={split!r} of type {type(split).__name__}."
        )
    if is_names and all(split) and len(set(split)) == len(split):
        return tuple(split)
    raise ValueError(
        f"{name} must be 'auto', None or a tuple of distinct mesh axis names; got {name}={split!r}."
    )


def split_axes(layout: StackLayout, split: Split = "auto", name: str = "split") -> tuple[str, ...]:
    """The ordered mesh axes the stack axis is spread over.

    ``"auto"`` takes every mesh axis of size > 1 in the order: axes sharding the stack axis,
    axes the matrices are replicated over, axes sharding the matrices (see the module
    docstring for why). A tuple of names is used as given (validated).

    Args:
        layout: from :func:`stack_layout`.
        split: ``"auto"``, a tuple of mesh axis names, or None (no split).
        name: the argument's name in error messages.

    Returns:
        The axis names; ``()`` when ``split`` is None.

    Raises:
        ValueError: an unknown axis name, a repeated one, or an unknown ``split`` string.
    """
    names = tuple(layout.mesh.axis_names)
    if split is None:
        return ()
    if isinstance(split, str):
        if split != "auto":
            raise ValueError(
                f"{name} must be 'auto', None or a tuple of mesh axis names from {names}; "
                f"got {name}={split!r}."
            )
        spec = layout.spec or (None,)
        stack = _entry_axes(spec[0])
        matrix = tuple(a for e in spec[1:] for a in _entry_axes(e))
        free = tuple(a for a in names if a not in stack and a not in matrix)
        ordered = stack + free + matrix
        return tuple(a for a in ordered if layout.mesh.shape[a] > 1)
    axes = tuple(split)
    bad = [a for a in axes if a not in names]
    if bad or len(set(axes)) != len(axes):
        raise ValueError(f"{name} must name distinct mesh axes from {names}; got {name}={split!r}.")
    return axes


def constrain(x: jax.Array, layout: StackLayout, spec: tuple[Any, ...]) -> jax.Array:
    """Moves ``x`` to ``spec`` on the layout's mesh: ``reshard`` (Explicit) or a constraint.

    The value is unchanged (``constrain(x) == x``); only where its shards live changes, and
    XLA's SPMD partitioner inserts the collectives (JAX, "Explicit sharding").
    """
    sharding = NamedSharding(layout.mesh, PartitionSpec(*spec))
    if layout.explicit:
        return jax.sharding.reshard(x, sharding)
    return jax.lax.with_sharding_constraint(x, sharding)


def _entry(axes: tuple[str, ...]) -> Any:
    return None if not axes else axes[0] if len(axes) == 1 else axes


def _route(layout: StackLayout, axes: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """The specs the stack passes through on its way to ``P(axes, None, None)``.

    With a known spec: first the stack axis over the axes that are not sharding the
    matrices (a local slice), keeping the matrix axes' sharding; then the full split (an
    all-to-all of the matrix axes into the stack axis).
    """
    final = (_entry(axes), None, None)  # axes == () gathers every matrix on every device
    if layout.spec is None:
        return [final]
    matrix = {a for e in layout.spec[1:] for a in _entry_axes(e)}
    head = tuple(a for a in axes if a not in matrix)
    first = (_entry(head), *layout.spec[1:])
    return [first, final] if first != final else [final]


def _pad_rows(x: jax.Array, multiple: int) -> jax.Array:
    """Appends zero matrices so the stack axis is a multiple of ``multiple``."""
    extra = -x.shape[0] % multiple
    if not extra:
        return x
    # jnp.pad keeps x's sharding (concatenating fresh zeros would not on an Explicit mesh).
    return jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1))


def orthogonalize_stack(
    stack: jax.Array,
    orthogonalize_fn: Callable[[jax.Array], jax.Array],
    *,
    split: Split = "auto",
    out_sharding: NamedSharding | None = None,
) -> jax.Array:
    r"""Orthogonalizes a stack ``(n, a, b)`` with each device working on its own matrices.

    .. math::
        \mathrm{out}_i = \mathrm{orthogonalize\_fn}(\mathrm{stack}_i),\quad i < n,
        \qquad \text{device } d \text{ computes } i \in [d\lceil n/N\rceil, (d+1)\lceil n/N\rceil)

    The stack is padded with zero matrices to a multiple of ``N`` (the devices of the split
    axes), its stack axis constrained to be sharded over them, ``orthogonalize_fn`` run (XLA
    partitions it along the stack axis, so each device runs it on ``n/N`` matrices), the padding
    dropped and the result constrained to ``out_sharding`` (default: the stack's own sharding,
    where known). Works eagerly and under ``jit``, on Auto and Explicit meshes. With
    ``split=None`` nothing is split: ``orthogonalize_fn(stack)`` as it lies (on an Explicit
    mesh each matrix is first gathered whole, the paper's "Distributed Muon", since the
    iteration contracts the matrix axes).

    Args:
        stack: ``(n, a, b)`` array of same-shape matrices.
        orthogonalize_fn: batched function ``(k, a, b) -> (k, a, b)`` acting on each matrix
            alone, e.g. ``functools.partial(newton_schulz, coefficients="polar_express")``.
        split: ``"auto"`` (every mesh axis, ordered as in :func:`split_axes`), a tuple of mesh
            axis names, or None (no split).
        out_sharding: ``NamedSharding`` for the result (e.g. the parameters' sharding, needed
            under ``jit`` on an Auto mesh, where the stack's own spec is not visible), or None.

    Returns:
        ``orthogonalize_fn(stack)`` up to rounding, with ``stack``'s shape and dtype.

    Example:
        >>> import jax
        >>> from filtered_optax._orthogonal import newton_schulz
        >>> s = jax.random.normal(jax.random.key(0), (4, 8, 16))
        >>> orthogonalize_stack(s, newton_schulz).shape
        (4, 8, 16)

    References:
        Liu et al., "Muon is Scalable for LLM Training", arXiv:2502.16982, 2025.
    """
    if stack.ndim != 3:
        raise ValueError(f"stack must have shape (n, a, b); got stack.shape={stack.shape}.")
    if out_sharding is not None and not isinstance(out_sharding, NamedSharding):
        raise TypeError(
            f"out_sharding must be a jax.sharding.NamedSharding or None; got {out_sharding!r}."
        )
    layout = stack_layout(stack, out_sharding)
    axes = () if layout is None else split_axes(layout, split)
    if not axes:
        if layout is None or not layout.explicit:
            return orthogonalize_fn(stack)
        # Explicit mesh, no split: still gather each matrix whole (NS contracts its axes).
        axes = _entry_axes(layout.spec[0])
    back = out_sharding.spec if out_sharding is not None else layout.spec
    back_axes = _entry_axes(_padded_spec(back, 3)[0]) if back is not None else ()
    n = stack.shape[0]
    # A multiple of the split devices, and of the result's own stack-axis shards.
    x = _pad_rows(
        stack,
        math.lcm(*(math.prod(layout.mesh.shape[a] for a in group) for group in (axes, back_axes))),
    )
    route = _route(layout, axes)
    for spec in route:
        x = constrain(x, layout, spec)
    x = orthogonalize_fn(x)
    for spec in reversed(route[:-1]):
        x = constrain(x, layout, spec)
    if back is not None:
        # Padded rows are dropped after the move back: on an Explicit mesh a slice must not
        # cut a sharded axis unevenly.
        x = constrain(x, layout, _padded_spec(back, 3))
    return jax.lax.slice_in_dim(x, 0, n, axis=0)
