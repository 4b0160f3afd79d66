"""Routing: which parameter is a hidden matrix (Muon) and how it is viewed as matrices.

Everything that is not a hidden matrix (embeddings, the output head, biases, norm gains,
other 1-D params) goes to AdamW. :func:`muon_labels` decides from each parameter's path and
shape and understands Flax NNX module layouts; :func:`routing_table` shows the decision so
users can check it. The settings travel together as one :class:`Routing` value.

References:
  Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024,
  https://kellerjordan.github.io/posts/muon/ (hidden layers only).
  Liu et al. (Moonshot AI), "Muon is Scalable for LLM Training", arXiv:2502.16982, 2025.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax

from filtered_optax._orthogonal import MOONSHOT_RMS, update_scale
from filtered_optax._paths import path_names, path_text
from filtered_optax._types import MatrixSpec, PathNames, RouteFn, Shape

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


class Routing(NamedTuple):
    """The routing settings, as one value.

    Attributes:
      labels: optional user rule ``(path_names, shape) -> "muon" | "adam" | MatrixSpec |
        None``; it overrides the presets, None defers to them for that parameter.
      stacked: path component names carrying a leading stack axis (nnx.scan / nnx.vmap
        layers, experts); such parameters are stacks of matrices. Never inferred.
      per_head: orthogonalize attention projections per head.
      head_names: exact (lower-case) component names of output heads.
      embed_names: exact (lower-case) component names of embeddings.

    Example:
      >>> import filtered_optax as fo
      >>> fo.Routing(stacked=("layers",)).stacked
      ('layers',)
    """

    labels: RouteFn | None = None
    stacked: Sequence[str] = ()
    per_head: bool = False
    head_names: Sequence[str] = HEAD_NAMES
    embed_names: Sequence[str] = EMBED_NAMES

    def normalized(self) -> Routing:
        """Tuples of names (a bare string ``stacked`` becomes a 1-tuple), lower-cased."""
        stacked = (self.stacked,) if isinstance(self.stacked, str) else tuple(self.stacked)
        return self._replace(
            stacked=stacked,
            head_names=tuple(n.lower() for n in self.head_names),
            embed_names=tuple(n.lower() for n in self.embed_names),
        )


def as_routing(routing: Routing | None, keywords: dict[str, Any]) -> Routing:
    """``routing``, or a :class:`Routing` built from its fields given as keywords."""
    unknown = sorted(set(keywords) - set(Routing._fields))
    if unknown:
        raise TypeError(
            f"unexpected keyword argument(s) {unknown}; the routing keywords are "
            f"{list(Routing._fields)}."
        )
    if routing is not None and keywords:
        raise TypeError(f"give either routing= or the keywords {sorted(keywords)}, not both.")
    if routing is not None and not isinstance(routing, Routing):
        raise TypeError(f"routing must be a fo.Routing or None; got {type(routing).__name__}.")
    return (routing or Routing(**keywords)).normalized()


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
      names: path components (see :func:`filtered_optax.path_names`).
      shape: the parameter's shape.
      stacked: path component names whose parameters carry a leading stack axis
        (``nnx.scan`` / ``nnx.vmap`` layers, experts). Never inferred: a leading axis is a
        stack only when declared.
      per_head: orthogonalize attention projections per head.

    Returns:
      A :class:`MatrixSpec` (axes index the full shape, stack axes are batch axes) or None.

    Example:
      >>> import filtered_optax as fo
      >>> fo.matrix_spec(("conv", "kernel"), (3, 3, 8, 16))
      MatrixSpec(reduction_axes=(0, 1, 2), output_axes=(3,))

    References:
      Jordan, "Muon", 2024 (conv kernels flattened to ``out × (in·window)``).
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


def default_route(names: PathNames, shape: Shape, routing: Routing) -> MatrixSpec | None:
    """Preset routing: a :class:`MatrixSpec` for hidden matrices, None for AdamW params.

    AdamW gets: embeddings (any path component in ``embed_names``), the output head (any
    component in ``head_names`` or ending in ``_head``), biases and norm gains (leaf named
    bias / scale / gamma / beta), and everything of matrix rank < 2. The rest is Muon.
    ``routing`` must be normalized (:meth:`Routing.normalized`).
    """
    leaf = names[-1] if names else ""
    lowered = [n.lower() for n in names]
    if leaf in NON_MATRIX_LEAVES:
        return None
    if any(n in routing.embed_names for n in lowered):
        return None
    if any(n in routing.head_names or n.endswith("_head") for n in lowered):
        return None
    return matrix_spec(names, shape, stacked=routing.stacked, per_head=routing.per_head)


def resolve(names: PathNames, shape: Shape, routing: Routing) -> MatrixSpec | None:
    """User rule first (``routing.labels``), presets for what it leaves undecided (None)."""
    decision = routing.labels(names, shape) if routing.labels is not None else None
    if isinstance(decision, MatrixSpec):
        return decision
    if decision is None:
        return default_route(names, shape, routing)
    if decision == "adam":
        return None
    if decision == "muon":
        spec = matrix_spec(names, shape, stacked=routing.stacked, per_head=routing.per_head)
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


def stage_specs(
    tree: Any,
    dimension_numbers: RouteFn | MatrixSpec | None,
    *,
    stacked: Sequence[str] = (),
    per_head: bool = False,
    owner: str = "fo.scale_by_muon",
) -> Any:
    """The :class:`MatrixSpec` of every leaf a Muon stage receives (a pytree like ``tree``).

    ``dimension_numbers`` is one spec for every leaf, or a rule ``(path_names, shape) ->
    MatrixSpec | None``; None (or a None answer) uses :func:`matrix_spec`. A leaf without
    a matrix view raises ``ValueError``: it belongs to another optimizer.
    """
    stacked = (stacked,) if isinstance(stacked, str) else tuple(stacked)

    def spec_of(path: Sequence[Any], x: Any) -> MatrixSpec:
        names, shape = path_names(path), tuple(x.shape)
        if isinstance(dimension_numbers, MatrixSpec):
            return dimension_numbers
        spec = dimension_numbers(names, shape) if dimension_numbers is not None else None
        if spec is None:
            spec = matrix_spec(names, shape, stacked=stacked, per_head=per_head)
        if spec is None:
            raise ValueError(
                f"{owner} got parameter {'/'.join(names)} of shape {shape}, which has no "
                "matrix view; route it to another optimizer (see fo.muon_labels)."
            )
        return spec

    return jax.tree_util.tree_map_with_path(spec_of, tree)


def muon_specs(params: Any, *, routing: Routing | None = None, **keywords: Any) -> Any:
    """Pytree of :class:`MatrixSpec` (Muon) or None (AdamW), one per leaf of ``params``.

    Arguments as in :func:`muon_labels`. Only shapes are read (works on ShapeDtypeStructs).

    Example:
      >>> import jax.numpy as jnp, filtered_optax as fo
      >>> fo.muon_specs({"w": jnp.zeros((4, 8)), "b": jnp.zeros(8)})
      {'b': None, 'w': MatrixSpec(reduction_axes=(0,), output_axes=(1,))}
    """
    routing = as_routing(routing, keywords)
    return jax.tree_util.tree_map_with_path(
        lambda p, x: resolve(path_names(p), tuple(x.shape), routing), params
    )


def _is_spec(s: Any) -> bool:
    return s is None or isinstance(s, MatrixSpec)


def muon_labels(params: Any, *, routing: Routing | None = None, **keywords: Any) -> Any:
    """Labels every parameter ``"muon"`` or ``"adam"`` from its path and shape.

    Muon gets hidden weight matrices; AdamW gets input embeddings, the output head, biases,
    norm gains and everything of rank < 2 (README, "What to route where"; Moonshot
    arXiv:2502.16982). Flax NNX layouts are understood: ``nnx.Embed`` ("embedding") → adam;
    ``nnx.Linear`` (in, out) and ``nnx.Conv`` (*window, in, out) → one matrix;
    ``nnx.MultiHeadAttention`` query/key/value (in, heads, head_dim) and out (heads,
    head_dim, out) → one matrix each; the attention module's own ``out`` is a hidden
    matrix, only names like head / lm_head / unembed / classifier (see ``HEAD_NAMES``) are
    the head.

    Args:
      params: a pytree of arrays (or nnx.Variables, or ShapeDtypeStructs).
      routing: a :class:`Routing`; or give its fields as keywords instead.
      **keywords: ``labels``, ``stacked``, ``per_head``, ``head_names``, ``embed_names``:
        the fields of :class:`Routing`.

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
    specs = muon_specs(params, routing=routing, **keywords)
    return jax.tree.map(lambda s: "adam" if s is None else "muon", specs, is_leaf=_is_spec)


class RouteRow(NamedTuple):
    """One row of :func:`routing_table`."""

    path: str
    shape: Shape
    route: str
    matrix: str
    scale: str


_HEADERS = RouteRow("path", "shape", "route", "matrix", "scale")  # type: ignore[arg-type]


class RoutingTable(tuple):
    """The rows of :func:`routing_table`: a sequence of :class:`RouteRow` that prints as a
    table (``str``), and shows as an HTML table in notebooks (``_repr_html_``)."""

    def _text_rows(self) -> list[tuple[str, ...]]:
        return [tuple(str(c) for c in r) for r in [_HEADERS, *self]]

    def __str__(self) -> str:
        cells = self._text_rows()
        widths = [max(len(r[i]) for r in cells) for i in range(len(_HEADERS))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head, *body = self._text_rows()
        row = "<tr>" + "<td>{}</td>" * len(head) + "</tr>"
        parts = ["<table>", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
        parts += [row.format(*(html.escape(c) for c in r)) for r in body]
        return "\n".join([*parts, "</table>"])


def scale_text(fan_in: int, fan_out: int, scale: Any, rms: float) -> str:
    """The update scale of a matrix as :func:`routing_table` shows it (from
    :func:`~filtered_optax._orthogonal.update_scale`)."""
    factor = update_scale(fan_in, fan_out, scale, rms)
    return f"rms→{rms:g}" if factor is None else f"{factor:.4g}"


def _row(path: Sequence[Any], x: Any, spec: MatrixSpec | None, scale: Any, rms: float) -> RouteRow:
    shape = tuple(x.shape)
    if spec is None:
        return RouteRow(path_text(path), shape, "adam", "-", "-")
    used = set(spec.reduction_axes) | set(spec.output_axes)
    fan_in = math.prod(shape[a] for a in spec.reduction_axes)
    fan_out = math.prod(shape[a] for a in spec.output_axes)
    batch = [shape[a] for a in range(len(shape)) if a not in used]
    matrix = " × ".join(str(d) for d in [*batch, fan_in, fan_out])
    return RouteRow(path_text(path), shape, "muon", matrix, scale_text(fan_in, fan_out, scale, rms))


def routing_table(
    params: Any,
    *,
    routing: Routing | None = None,
    scale: str | float = "moonshot",
    rms: float = MOONSHOT_RMS,
    print_table: bool = False,
    **keywords: Any,
) -> RoutingTable:
    """Where each parameter goes: path, shape, route, matrix view and update scale.

    Args:
      params: a pytree of arrays (or nnx.Variables / ShapeDtypeStructs).
      routing: a :class:`Routing`; or give its fields as keywords (as in
        :func:`muon_labels`).
      scale, rms: as in :func:`filtered_optax.muon`, for the update scale of each matrix.
      print_table: also print the table (``print(routing_table(params))`` does the same).
      **keywords: the fields of :class:`Routing`.

    Returns:
      A :class:`RoutingTable` of :class:`RouteRow`; ``matrix`` reads
      ``[stack ×] fan_in × fan_out``. ``str()`` of it is the table.

    Example:
      >>> import jax.numpy as jnp
      >>> rows = routing_table({"w": jnp.zeros((4, 8))})
      >>> rows[0].route, rows[0].matrix
      ('muon', '4 × 8')
      >>> print(rows)
      path  shape   route  matrix  scale
      w     (4, 8)  muon   4 × 8   0.5657
    """
    specs = muon_specs(params, routing=routing, **keywords)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    spec_leaves = jax.tree.leaves(specs, is_leaf=_is_spec)
    table = RoutingTable(
        _row(path, x, spec, scale, rms) for (path, x), spec in zip(flat, spec_leaves, strict=True)
    )
    if print_table:
        print(table)
    return table
