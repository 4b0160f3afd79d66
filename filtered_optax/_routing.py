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
import types
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
from flax import nnx

from filtered_optax._orthogonal import MOONSHOT_RMS, update_scale
from filtered_optax._paths import path_names, path_text
from filtered_optax._types import MatrixSpec, PathNames, RouteFn, Shape

# Leaf or module names of input embeddings (nnx.Embed / linen Embed store "embedding"),
# matched exactly on any path component. Position tables are matched by their words as well
# (see ``POSITION_WORDS``), so this list need not spell every variant.
EMBED_NAMES: tuple[str, ...] = (
    "embedding",
    "embeddings",
    "embed",
    "embed_tokens",
    "tok_embeddings",
    "tok_emb",
    "token_embedding",
    "token_embeddings",
    "word_embeddings",
    "wte",
    "wpe",
    "pos",
    "pos_embedding",
    "position_embedding",
)
# A path component is a position table when, split on "_", its first word is one of these and
# every other word one of ``TABLE_WORDS``: pos, pos_emb, pos_embed, pos_embedding(s),
# position_embeddings, positional_embedding, pos_encoding, position_table, ...
POSITION_WORDS: tuple[str, ...] = ("pos", "position", "positional")
TABLE_WORDS: tuple[str, ...] = (
    "emb",
    "embed",
    "embeds",
    "embedding",
    "embeddings",
    "enc",
    "encoding",
    "encodings",
    "table",
)
# Names of a model's final projection to the vocabulary / classes. A path component is a
# head when it equals one of them or when its first or last "_"-separated word does
# (lm_head, cls_head, head_proj, to_logits, logits_proj, classifier_dense, ...). The bare
# "out" is NOT on the list: nnx.MultiHeadAttention calls its own output projection "out",
# a hidden matrix; ``OUT_NAMES`` are decided on the whole tree instead.
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
# Output-layer names that are the head only when nothing else is: a component named so whose
# siblings (same parent) include no attention projection (``ATTENTION_NAMES``), in a tree
# with no ``HEAD_NAMES`` component, and the only such component at its depth.
OUT_NAMES: tuple[str, ...] = ("out", "fc_out")
# Leaf names of biases and norm gains/offsets (nnx.LayerNorm / RMSNorm: "scale", "bias").
NON_MATRIX_LEAVES: tuple[str, ...] = ("bias", "scale", "gamma", "beta")
# Attention input projections whose kernel is (in, heads, head_dim): one matrix
# in × heads·head_dim, never a stack over `in`.
QKV_NAMES: tuple[str, ...] = ("query", "key", "value", "q", "k", "v", "q_proj", "k_proj", "v_proj")
# Attention output projections whose kernel is (heads, head_dim, out); only used to split
# per head when `per_head=True` (by default the generic "last axis = output" rule already
# gives the matrix heads·head_dim × out).
ATTENTION_OUT_NAMES: tuple[str, ...] = ("out", "o_proj", "out_proj")
# Siblings that make an `out` an attention output projection rather than the head: the
# separate and the fused input projections of common attention layouts.
ATTENTION_NAMES: tuple[str, ...] = (
    *QKV_NAMES,
    "qkv",
    "kv",
    "wq",
    "wk",
    "wv",
    "wqkv",
    "qkv_proj",
    "in_proj",
    "c_attn",
    "query_key_value",
)


class Routing(NamedTuple):
    """The routing settings, as one value.

    Attributes:
      labels: optional user rule ``(path_names, shape) -> "muon" | "adam" | MatrixSpec |
        None``; it overrides the presets, None defers to them for that parameter.
      stacked: path component names carrying a leading stack axis (nnx.scan / nnx.vmap
        layers, experts); such parameters are stacks of matrices. Not inferred from names,
        except for 4-D query/key/value kernels; kernels that look stacked raise a warning.
      per_head: orthogonalize attention projections per head.
      head_names: (lower-case) names of output heads: a path component is a head when it
        equals one, or when its first or last ``_``-separated word does.
      embed_names: exact (lower-case) component names of embeddings; position tables are
        also matched by their words (``POSITION_WORDS`` + ``TABLE_WORDS``).

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


def _core_spec(names: PathNames, shape: Shape, n_stack: int, per_head: bool) -> MatrixSpec | None:
    """:func:`matrix_spec` with ``n_stack`` leading stack axes."""
    core = len(shape) - n_stack
    if core < 2:
        return None
    axes = tuple(range(n_stack, len(shape)))
    parent = names[-2].lower() if len(names) >= 2 else ""
    if core == 3 and parent in QKV_NAMES:
        if per_head:
            return MatrixSpec((axes[0],), (axes[2],))
        return MatrixSpec((axes[0],), (axes[1], axes[2]))
    if core == 3 and per_head and parent in ATTENTION_OUT_NAMES:
        return MatrixSpec((axes[1],), (axes[2],))
    return MatrixSpec(axes[:-1], (axes[-1],))


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
        (``nnx.scan`` / ``nnx.vmap`` layers, experts). Never inferred here: a leading axis
        is a stack only when declared.
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
    return _core_spec(names, shape, _stack_depth(names, stacked), per_head)


# --------------------------------------------------------------------------------------------
# Name presets, with the reason of every decision


class Decision(NamedTuple):
    """The route of one parameter and why: ``spec`` (Muon) or None (AdamW); ``preset``
    is False when a user rule decided."""

    spec: MatrixSpec | None
    why: str
    preset: bool = True


class TreeFacts(NamedTuple):
    """What the presets read off the whole params tree (names lower-cased).

    ``children``: the names below each path prefix; ``shapes``: each leaf's shape;
    ``out_heads``: path prefixes ending in an ``OUT_NAMES`` component that is the head.
    """

    children: Mapping[PathNames, frozenset] = types.MappingProxyType({})
    shapes: Mapping[PathNames, Shape] = types.MappingProxyType({})
    out_heads: frozenset = frozenset()


_NO_FACTS = TreeFacts()  # a parameter on its own: no tree-level presets


def _is_position_name(name: str) -> bool:
    """A position table's name: first ``_``-word pos / position / positional, every other
    word an embedding-table word (``pos``, ``pos_emb``, ``positional_embedding``, ...)."""
    first, *rest = name.lower().split("_")
    return first in POSITION_WORDS and all(w in TABLE_WORDS for w in rest)


def _is_head_name(name: str, head_names: Sequence[str]) -> bool:
    """``name`` is in ``head_names``, or its first or last ``_``-word is (``lm_head``,
    ``to_logits``, ``logits_proj``; not ``multi_head_attention``)."""
    words = name.lower().split("_")
    return name.lower() in head_names or words[0] in head_names or words[-1] in head_names


def _named_adam(lowered: PathNames, routing: Routing, facts: TreeFacts) -> str:
    """Why the names alone send a leaf to AdamW, or "" when they do not."""
    if lowered and lowered[-1] in NON_MATRIX_LEAVES:
        return "name preset: bias/norm leaf"
    for n in lowered:
        if _is_position_name(n):
            return f"name preset: position table name {n!r}"
        if n in routing.embed_names:
            return f"name preset: embedding name {n!r}"
    for n in lowered:
        if _is_head_name(n, routing.head_names):
            return f"name preset: head name {n!r}"
    for i, n in enumerate(lowered):
        if lowered[: i + 1] in facts.out_heads:
            return f"name preset: {n!r} with no attention siblings → head"
    return ""


def _implicit_stack(lowered: PathNames, core: int) -> int:
    """1 for a 4-D query/key/value kernel (only meaningful as a stack of (in, heads,
    head_dim) kernels), else 0."""
    parent = lowered[-2] if len(lowered) >= 2 else ""
    return int(core == 4 and lowered[-1] == "kernel" and parent in QKV_NAMES)


def _layout(lowered: PathNames, core: int, per_head: bool) -> str:
    """How the presets read a kernel of rank ``core`` (stack axes removed)."""
    parent = lowered[-2] if len(lowered) >= 2 else ""
    if core == 2:
        return "(in, out)"
    if core == 3 and parent in QKV_NAMES:
        return "(in, heads, head_dim)" + (" per head" if per_head else "")
    if core == 3 and per_head and parent in ATTENTION_OUT_NAMES:
        return "(heads, head_dim, out) per head"
    return "(*in, out)"


def _sides(spec: MatrixSpec, shape: Shape) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of one matrix of ``spec``."""
    fan_in = math.prod(shape[a] for a in spec.reduction_axes)
    return fan_in, math.prod(shape[a] for a in spec.output_axes)


def preset_decision(
    names: PathNames, shape: Shape, routing: Routing, facts: TreeFacts = _NO_FACTS
) -> Decision:
    """The name presets' route of one leaf, and why.

    AdamW: biases and norm gains (leaf bias / scale / gamma / beta); embeddings and position
    tables (``embed_names``; position words, see ``POSITION_WORDS``); heads (``head_names``
    matched on the first or last ``_``-word, and the ``out`` heads found on the tree,
    ``facts.out_heads``); rank < 2 after stack axes; any matrix view with a side of 1
    (``min(fan_in, fan_out) = 1``: a ``(1, 1, d)`` class token; orthogonalizing a vector
    only normalizes it). Muon: the rest, viewed by :func:`matrix_spec`; a 4-D
    query/key/value kernel is a stack of ``(in, heads, head_dim)`` kernels.
    ``routing`` must be normalized (:meth:`Routing.normalized`).

    References:
      Jordan, "Muon", 2024 (hidden matrices only); Liu et al., arXiv:2502.16982.
    """
    lowered = tuple(n.lower() for n in names)
    named = _named_adam(lowered, routing, facts)
    if named:
        return Decision(None, named)
    n_stack = _stack_depth(names, routing.stacked)
    implicit = _implicit_stack(lowered, len(shape) - n_stack)
    spec = _core_spec(names, shape, n_stack + implicit, routing.per_head)
    if spec is None:
        return Decision(None, "rank < 2" + (" after stack axes" if n_stack else ""))
    fan_in, fan_out = _sides(spec, shape)
    if fan_in == 1 or fan_out == 1:
        return Decision(None, f"name preset: matrix {fan_in} × {fan_out} has a side of 1")
    core = len(shape) - n_stack - implicit
    why = "name preset: matrix " + _layout(lowered, core, routing.per_head)
    why += "".join(
        f"; stacked {n!r} → stack axis {k}"
        for k, n in enumerate(n for n in names[:-1] if n in routing.stacked)
    )
    if implicit:
        why += f"; 4-D {lowered[-2]!r} kernel → stack axis {n_stack}"
    return Decision(spec, why)


def default_route(names: PathNames, shape: Shape, routing: Routing) -> MatrixSpec | None:
    """Preset routing of one leaf on its own: :func:`preset_decision`'s spec."""
    return preset_decision(names, shape, routing).spec


def _rule_spec(names: PathNames, shape: Shape, routing: Routing, answer: Any) -> MatrixSpec | None:
    """The spec a user rule's (non-None) answer stands for."""
    if isinstance(answer, MatrixSpec):
        return answer
    if answer == "adam":
        return None
    if answer == "muon":
        spec = matrix_spec(names, shape, stacked=routing.stacked, per_head=routing.per_head)
        if spec is None:
            raise ValueError(
                f"labels sent parameter {'/'.join(names)} of shape {shape} to 'muon', but it "
                "has no matrix view (rank < 2 after stack axes); route it to 'adam'."
            )
        return spec
    raise ValueError(
        f"labels must return 'muon', 'adam', a MatrixSpec or None; got {answer!r} for "
        f"{'/'.join(names)}."
    )


def _rule_reason(rule: Any, names: PathNames) -> str | None:
    """``rule.reason(names)`` when the rule explains itself (``fo.trace_routing``)."""
    reason = getattr(rule, "reason", None)
    return str(reason(tuple(names))) if callable(reason) else None


def decide(
    names: PathNames, shape: Shape, routing: Routing, facts: TreeFacts = _NO_FACTS
) -> Decision:
    """User rule first (``routing.labels``), presets for what it leaves undecided (None).

    The reason is the rule's own (``rule.reason(names)``, as traced routing gives) or
    ``"user rule"``; for a leaf the rule defers, the preset's reason (with the rule's
    note in parentheses when it has one). ``facts`` (from the whole params tree) enable the
    tree-level presets; without them the leaf is judged on its own.

    References:
      Jordan, "Muon", 2024; Liu et al., arXiv:2502.16982 (what goes to AdamW).
    """
    rule = routing.labels
    answer = rule(names, shape) if rule is not None else None
    note = _rule_reason(rule, names) if rule is not None else None
    if answer is None:
        preset = preset_decision(names, shape, routing, facts)
        return preset if note is None else preset._replace(why=f"{preset.why} (rule: {note})")
    return Decision(_rule_spec(names, shape, routing, answer), note or "user rule", False)


def resolve(names: PathNames, shape: Shape, routing: Routing) -> MatrixSpec | None:
    """The spec of one leaf on its own (:func:`decide` without tree-level facts)."""
    return decide(names, shape, routing).spec


# --------------------------------------------------------------------------------------------
# Tree-level presets


def _out_heads(
    lowered: Sequence[PathNames], children: Mapping[PathNames, frozenset], routing: Routing
) -> frozenset:
    """Prefixes ending in an ``OUT_NAMES`` component that is the model's head.

    Candidates: such components with no attention projection among their siblings. None is
    a head when another component is named as a head; else the shallowest candidate is,
    when it is the only one at its depth (one ``out`` per block of a list is not a head).
    """
    if any(_is_head_name(n, routing.head_names) for names in lowered for n in names):
        return frozenset()
    candidates = {
        names[: i + 1]
        for names in lowered
        for i, n in enumerate(names)
        if n in OUT_NAMES and not children[names[:i]] & set(ATTENTION_NAMES)
    }
    if not candidates:
        return frozenset()
    depth = min(len(c) for c in candidates)
    shallowest = [c for c in candidates if len(c) == depth]
    return frozenset(shallowest) if len(shallowest) == 1 else frozenset()


def _tree_facts(leaves: Sequence[tuple[PathNames, Shape]], routing: Routing) -> TreeFacts:
    """The :class:`TreeFacts` of a params tree given as ``(names, shape)`` per leaf."""
    lowered = [tuple(n.lower() for n in names) for names, _ in leaves]
    children: dict[PathNames, set] = {}
    for names in lowered:
        for i, n in enumerate(names):
            children.setdefault(names[:i], set()).add(n)
    frozen = {k: frozenset(v) for k, v in children.items()}
    shapes = {names: shape for names, (_, shape) in zip(lowered, leaves)}
    return TreeFacts(
        types.MappingProxyType(frozen),
        types.MappingProxyType(shapes),
        _out_heads(lowered, frozen, routing),
    )


def _looks_stacked(names: PathNames, shape: Shape, facts: TreeFacts) -> bool:
    """A kernel routed as one matrix whose rank only makes sense as a stack of layers.

    3-D ``kernel`` under a module that is not attention and not a convolution ("conv" in its
    name, or a 1-D bias of the kernel's fan-out beside it): ``nnx.Linear`` kernels are 2-D.
    4-D attention output kernel beside query/key/value: nnx.MultiHeadAttention's is 3-D.
    """
    lowered = tuple(n.lower() for n in names)
    if len(lowered) < 2 or lowered[-1] != "kernel":
        return False
    parent, module = lowered[-2], lowered[:-1]
    if len(shape) == 4 and parent in ATTENTION_OUT_NAMES:
        return bool(facts.children.get(module[:-1], frozenset()) & set(ATTENTION_NAMES))
    if len(shape) != 3 or parent in QKV_NAMES or parent in ATTENTION_OUT_NAMES:
        return False
    conv_bias = facts.shapes.get((*module, "bias")) == (shape[-1],)
    return "conv" not in parent and not conv_bias


def _stack_suspects(
    names: Sequence[PathNames],
    shapes: Sequence[Shape],
    decisions: Sequence[Decision],
    facts: TreeFacts,
) -> list[int]:
    """Indices of preset-routed, unstacked matrices whose kernel looks stacked."""
    return [
        i
        for i, (n, s, d) in enumerate(zip(names, shapes, decisions))
        if d.preset
        and d.spec is not None
        and len(d.spec.reduction_axes) + len(d.spec.output_axes) == len(s)
        and _looks_stacked(n, s, facts)
    ]


def _stack_warning(suspects: Sequence[tuple[PathNames, Shape, MatrixSpec]]) -> str:
    """The warning naming the kernels that look stacked, and the fix."""
    listed = ", ".join(
        f"{'/'.join(n)} {s} → one {' × '.join(map(str, _sides(spec, s)))} matrix"
        for n, s, spec in suspects
    )
    stacks = sorted({n[-3] if len(n) >= 3 else n[0] for n, _, _ in suspects})
    return (
        f"Muon routing: {len(suspects)} kernel(s) look like layers stacked by nnx.vmap / "
        f"nnx.scan, but no stack axis is declared, so each is flattened into one matrix: "
        f"{listed}. If they are stacks, pass stacked={tuple(stacks)!r} (the name of the "
        "stacked module) or route with labels=fo.trace_routing(model, x), which finds "
        "stack axes itself; if one is a 1-D convolution, give it a labels= rule (or a "
        "module name containing 'conv')."
    )


def _route_tree(params: Any, routing: Routing) -> tuple[list, Any, list[Decision]]:
    """``(flat (path, leaf) pairs, treedef, decisions)`` of a params tree, with the
    tree-level presets; warns (``UserWarning``) about kernels that look stacked."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [path_names(p) for p, _ in flat]
    shapes = [tuple(x.shape) for _, x in flat]
    facts = _tree_facts(list(zip(names, shapes)), routing)
    decisions = [decide(n, s, routing, facts) for n, s in zip(names, shapes)]
    suspects = _stack_suspects(names, shapes, decisions, facts)
    for i in suspects:
        why = decisions[i].why + "; looks stacked: declare stacked= (warned)"
        decisions[i] = decisions[i]._replace(why=why)
    if suspects:
        warning = _stack_warning([(names[i], shapes[i], decisions[i].spec) for i in suspects])
        warnings.warn(warning, UserWarning, stacklevel=3)
    return flat, treedef, decisions


# --------------------------------------------------------------------------------------------
# Entry points


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
    _, treedef, decisions = _route_tree(params, as_routing(routing, keywords))
    return jax.tree_util.tree_unflatten(treedef, [d.spec for d in decisions])


def _is_spec(s: Any) -> bool:
    return s is None or isinstance(s, MatrixSpec)


def muon_labels(params: Any, *, routing: Routing | None = None, **keywords: Any) -> Any:
    """Labels every parameter ``"muon"`` or ``"adam"`` from its path and shape.

    Muon gets hidden weight matrices; AdamW gets input embeddings and position tables, the
    output head, biases, norm gains, everything of rank < 2 and every matrix with a side of
    1 (README, "What to route where"; Moonshot arXiv:2502.16982). Flax NNX layouts are
    understood: ``nnx.Embed`` ("embedding") → adam; ``nnx.Linear`` (in, out) and
    ``nnx.Conv`` (*window, in, out) → one matrix; ``nnx.MultiHeadAttention``
    query/key/value (in, heads, head_dim) and out (heads, head_dim, out) → one matrix each.

    Names are matched per path component, split on ``_``: position tables are ``pos`` or
    pos / position / positional followed by emb / embed / embedding(s) / encoding / table
    words (``pos_emb``, ``positional_embedding``, ...); heads are ``head_names`` or names
    whose first or last word is one (``lm_head``, ``to_logits``, ``logits_proj``). The
    attention module's own ``out`` is a hidden matrix; an ``out`` / ``fc_out`` with no
    query/key/value sibling is the head when the tree has no other head (the shallowest,
    if unique). A 4-D query/key/value kernel is a stack; other kernels that only make sense
    stacked (a 3-D ``kernel`` outside attention and convolutions: ``nnx.Linear`` layers
    made by ``nnx.vmap`` / ``nnx.scan``) raise a ``UserWarning`` naming them and the fix
    (``stacked=`` or ``labels=fo.trace_routing(model, x)``).

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

    References:
      Jordan, "Muon", 2024 (hidden layers only); Liu et al., arXiv:2502.16982.
    """
    specs = muon_specs(params, routing=routing, **keywords)
    return jax.tree.map(lambda s: "adam" if s is None else "muon", specs, is_leaf=_is_spec)


class RouteRow(NamedTuple):
    """One row of :func:`routing_table` (``why``: the reason of the route)."""

    path: str
    shape: Shape
    route: str
    matrix: str
    scale: str
    why: str = ""


_HEADERS = RouteRow("path", "shape", "route", "matrix", "scale", "why")  # type: ignore[arg-type]


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


def _row(path: Sequence[Any], x: Any, decision: Decision, scale: Any, rms: float) -> RouteRow:
    shape, spec = tuple(x.shape), decision.spec
    if spec is None:
        return RouteRow(path_text(path), shape, "adam", "-", "-", decision.why)
    used = set(spec.reduction_axes) | set(spec.output_axes)
    fan_in, fan_out = _sides(spec, shape)
    batch = [shape[a] for a in range(len(shape)) if a not in used]
    matrix = " × ".join(str(d) for d in [*batch, fan_in, fan_out])
    factor = scale_text(fan_in, fan_out, scale, rms)
    return RouteRow(path_text(path), shape, "muon", matrix, factor, decision.why)


def _non_parameters(params: Any) -> dict[str, str]:
    """Path → variable type of the leaves that are nnx Variables but not ``nnx.Param``s
    (BatchNorm's ``mean``/``var``, RNG state, ...): no optimizer ever updates them."""
    flat = jax.tree_util.tree_flatten_with_path(
        params, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )[0]
    return {
        path_text(path): type(x).__name__
        for path, x in flat
        if isinstance(x, nnx.Variable) and not isinstance(x, nnx.Param)
    }


def _not_a_parameter(path: Sequence[Any], x: Any, kind: str) -> RouteRow:
    why = f"not a parameter (nnx.{kind}): nnx.Optimizer(..., wrt=nnx.Param) never updates it"
    return RouteRow(path_text(path), tuple(x.shape), "-", "-", "-", why)


def routing_table(
    params: Any,
    *,
    routing: Routing | None = None,
    scale: str | float = "moonshot",
    rms: float = MOONSHOT_RMS,
    print_table: bool = False,
    **keywords: Any,
) -> RoutingTable:
    """Where each parameter goes and why: path, shape, route, matrix view, update scale.

    The ``why`` column is the rule's own reason when the ``labels`` rule has a ``reason``
    method (:func:`filtered_optax.trace_routing`: ``dot: reduce (0,) out (1, 2)``,
    ``gather → embedding``, ``last projection → head``, ``…; scan → stack axis 0``), else
    ``user rule`` for a leaf the rule decided, else which preset decided (``name preset:
    embedding name 'wte'``, ``name preset: head name 'lm_head'``, ``name preset: bias/norm
    leaf``, ``rank < 2``, ``name preset: matrix (in, out)``, …).

    Args:
      params: a pytree of arrays (or nnx.Variables / ShapeDtypeStructs). Given a whole
        ``nnx.state(model)``, variables that are not ``nnx.Param`` (BatchNorm statistics,
        RNG state) are listed with route ``-`` as "not a parameter".
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
      >>> rows[0].route, rows[0].matrix, rows[0].why
      ('muon', '4 × 8', 'name preset: matrix (in, out)')
      >>> print(rows)
      path  shape   route  matrix  scale   why
      w     (4, 8)  muon   4 × 8   0.5657  name preset: matrix (in, out)

    References:
      Jordan, "Muon", 2024; Liu et al., arXiv:2502.16982 (what goes to AdamW).
    """
    flat, _, decisions = _route_tree(params, as_routing(routing, keywords))
    not_params = _non_parameters(params)
    table = RoutingTable(
        _not_a_parameter(path, x, not_params[path_text(path)])
        if path_text(path) in not_params
        else _row(path, x, d, scale, rms)
        for (path, x), d in zip(flat, decisions, strict=True)
    )
    if print_table:
        print(table)
    return table
