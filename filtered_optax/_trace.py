"""Traced routing: which parameter is a matrix, read off the model's own computation.

Name presets guess a parameter's role from its path and shape. :func:`trace_routing` instead
traces the forward pass once with :func:`jax.make_jaxpr` (abstract values only, no FLOPs) and
follows every parameter leaf through the jaxpr: through reshapes, transposes, casts, slices,
broadcasts and scaling by constants, and into sub-jaxprs (``jit``, ``custom_jvp``/``custom_vjp``,
``checkpoint``, ``cond``, ``while``, ``scan``). What the leaf finally meets decides its route:

* the weight operand of a ``dot_general`` against activations is a matrix: its contracted axes
  are the fan-in (reduction axes), its free axes the fan-out; ``dot_general`` batch axes and
  axes sliced off by ``scan`` (or indexed by a loop counter) are stack axes;
* a ``conv_general_dilated`` kernel is the matrix ``(window · in) × out``;
* a leaf read by ``gather`` / dynamic slicing at data-dependent positions (an embedding), or
  combined with activations without a contraction (position tables, biases, norm gains) goes to
  AdamW;
* the projection whose result reaches the output without passing through another parameter
  contraction is the head and goes to AdamW (Jordan 2024; Liu et al. 2025 keep it on AdamW);
* conflicting uses (gathered and contracted, as tied embeddings are, or contracted over
  different axes in two places) go to AdamW; a leaf the trace never reaches is left to the
  name presets.

The result is a rule ``(names, shape) -> MatrixSpec | "adam" | None`` accepted wherever
``labels=`` is (``fo.muon``, ``fo.muon_specs``, ``fo.muon_labels``, ``fo.routing_table``).

References:
  Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024,
  https://kellerjordan.github.io/posts/muon/ (hidden matrices only; embeddings and head on AdamW).
  Liu et al. (Moonshot AI), "Muon is Scalable for LLM Training", arXiv:2502.16982, 2025.
  JAX documentation, "Understanding Jaxprs" (the intermediate language traced here).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import traceback
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import flax
import jax
import numpy as np
import optax
from flax import nnx
from jax.extend import core as jcore

from filtered_optax._paths import path_names
from filtered_optax._types import MatrixSpec

PathNames = tuple[str, ...]
Shape = tuple[int, ...]
Axes = tuple[int, ...]

# Enough passes for a loop carry to settle: each pass can only add views or taint, and real
# carries settle in two or three; past this the carry is treated as an activation.
_MAX_FIXPOINT_PASSES = 16
# Uses that read a leaf as a matrix; everything else is an AdamW use.
_MATRIX_KINDS = ("dot", "conv")
# Primitives that keep every axis in place (operands may differ in size along the axes).
_AXIS_PRESERVING = ("concatenate", "split", "pad", "slice", "rev", "select_n", "clamp")
# Where library operations live: a failing operation's operands are locals of these frames.
_LIBRARY_DIRS = tuple(os.path.dirname(m.__file__) + os.sep for m in (jax, flax, np, optax))


class _View(NamedTuple):
    """A value that is (a rearrangement of) parameter leaf ``leaf``.

    ``axes[i]`` lists the leaf axes the value's axis ``i`` holds (empty: broadcast, not from the
    leaf); ``stacked`` lists leaf axes sliced off by a ``scan``, with how.
    """

    leaf: int
    axes: tuple[Axes, ...]
    stacked: tuple[tuple[int, str], ...] = ()


class _Val(NamedTuple):
    """Abstract value of a jaxpr variable.

    ``views``: the parameter leaves it is a view of (only while no activation is mixed in);
    ``act``: it depends on the function's data inputs; ``last``: leaves of the most recent
    parameter contractions that produced it (the head candidates).
    """

    views: frozenset = frozenset()
    act: bool = False
    last: frozenset = frozenset()


_CONST = _Val()
_ACT = _Val(act=True)


class _Use(NamedTuple):
    """One way a leaf is used: ``kind`` and, for matrix uses, its fan-in / fan-out axes."""

    kind: str
    reduce: Axes = ()
    out: Axes = ()
    stack: tuple[tuple[int, str], ...] = ()


class _Ctx(NamedTuple):
    """Where uses are recorded (a scratch dict while a loop carry is being settled)."""

    uses: dict

    def add(self, leaf: int, use: _Use) -> None:
        self.uses.setdefault(leaf, set()).add(use)

    def scratch(self) -> _Ctx:
        return _Ctx({})


def _join(a: _Val, b: _Val) -> _Val:
    """Least upper bound: a value that may be either."""
    act = a.act or b.act
    views = frozenset() if act else a.views | b.views
    return _Val(views, act, a.last | b.last)


def _shape(var: Any) -> Shape:
    return tuple(int(n) for n in getattr(var.aval, "shape", ()))


def _map_views(val: _Val, fn: Callable[[tuple[Axes, ...]], tuple[Axes, ...]]) -> _Val:
    """Applies an axis rearrangement to every view of ``val``."""
    views = frozenset(v._replace(axes=fn(v.axes)) for v in val.views)
    return val._replace(views=views)


def _union(axes: Iterable[Axes]) -> Axes:
    return tuple(sorted({a for group in axes for a in group}))


# --------------------------------------------------------------------------------------------
# Axis bookkeeping of the rearranging primitives


def _reshape_axes(axes: tuple[Axes, ...], old: Shape, new: Shape) -> tuple[Axes, ...]:
    """Leaf axes held by each axis of ``reshape(old -> new)``.

    Axes of size > 1 are matched in groups of equal product: a merged axis holds the union of
    its parts' leaf axes, each part of a split axis holds the whole axis' leaf axes. Size-1
    axes hold nothing (their leaf axes, if any, were indexed away).
    """
    out: list[Axes] = [()] * len(new)
    if 0 in old or 0 in new:
        return tuple(out)
    src = [i for i, n in enumerate(old) if n != 1]
    dst = [j for j, n in enumerate(new) if n != 1]
    i = j = 0
    while i < len(src) and j < len(dst):
        group_in, group_out = [src[i]], [dst[j]]
        size_in, size_out = old[src[i]], new[dst[j]]
        i, j = i + 1, j + 1
        while size_in != size_out:
            if size_in < size_out:
                group_in.append(src[i])
                size_in *= old[src[i]]
                i += 1
            else:
                group_out.append(dst[j])
                size_out *= new[dst[j]]
                j += 1
        held = _union(axes[k] for k in group_in)
        for k in group_out:
            out[k] = held
    return tuple(out)


def _rule_reshape(eqn: Any, ins: list[_Val], ctx: _Ctx) -> list[_Val]:
    old, new = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    return [_map_views(ins[0], lambda axes: _reshape_axes(axes, old, new))]


def _rule_transpose(eqn: Any, ins: list[_Val], ctx: _Ctx) -> list[_Val]:
    perm = [int(p) for p in eqn.params["permutation"]]
    return [_map_views(ins[0], lambda axes: tuple(axes[p] for p in perm))]


def _rule_squeeze(eqn: Any, ins: list[_Val], ctx: _Ctx) -> list[_Val]:
    rank = len(_shape(eqn.invars[0]))
    drop = {int(d) % rank for d in eqn.params["dimensions"]}
    return [_map_views(ins[0], lambda axes: tuple(a for i, a in enumerate(axes) if i not in drop))]


def _rule_broadcast(eqn: Any, ins: list[_Val], ctx: _Ctx) -> list[_Val]:
    """``broadcast_in_dim``: operand axis i lands on output axis ``broadcast_dimensions[i]``."""
    old, new = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    dims = [int(d) for d in eqn.params["broadcast_dimensions"]]

    def place(axes: tuple[Axes, ...]) -> tuple[Axes, ...]:
        out: list[Axes] = [()] * len(new)
        for i, d in enumerate(dims):
            # A size-1 axis stretched to a larger one no longer holds its leaf axis.
            out[d] = axes[i] if old[i] == new[d] else ()
        return tuple(out)

    return [_map_views(ins[0], place)]


# --------------------------------------------------------------------------------------------
# Uses: contractions, lookups, elementwise combination


def _combine(eqn: Any, ins: list[_Val], ctx: _Ctx) -> list[_Val]:
    """Elementwise (or axis-preserving) combination of its operands.

    Views of parameters survive as long as no activation joins them (scaling by a constant,
    a cast, adding two parameters); once an activation joins, each parameter involved has an
    ``elementwise`` use (a bias, gain or position table) and the result is an activation.
    """
    rank = len(_shape(eqn.outvars[0]))
    act = any(v.act for v in ins)
    last = frozenset().union(*(v.last for v in ins))
    if act:
        for val in ins:
            for view in val.views:
                ctx.add(view.leaf, _Use("elementwise"))
        return [_Val(frozenset(), True, last) for _ in eqn.outvars]
    views = frozenset(
        view for val, var in zip(ins, eqn.invars) if len(_shape(var)) == rank for view in val.views
    )
    return [_Val(views, False, last) for _ in eqn.outvars]


def _opaque(eqn: Any, ins: list[_Val], ctx: _Ctx) -> list[_Val]:
    """A primitive the tracer does not model: parameters meeting data there go to AdamW.

    Without data (a norm of a weight, say) the result is a constant and records nothing.
    """
    act = any(v.act for v in ins)
    if act:
        for val in ins:
            for view in val.views:
                ctx.add(view.leaf, _Use(eqn.primitive.name))
    last = frozenset().union(*(v.last for v in ins))
    return [_Val(frozenset(), act, last) for _ in eqn.outvars]


def _matrix_use(
    kind: str,
    view: _View,
    reduce_dims: Sequence[int],
    free_dims: Sequence[int],
    batch_dims: Sequence[int],
) -> _Use:
    """The use of a leaf contracted over ``reduce_dims`` of its view, mapped to leaf axes."""
    batch = _union(view.axes[d] for d in batch_dims)
    stack = view.stacked + tuple((a, "dot batch") for a in batch)
    return _Use(
        kind,
        _union(view.axes[d] for d in reduce_dims),
        _union(view.axes[d] for d in free_dims),
        stack,
    )


def _contraction(
    kind: str, operands: Sequence[tuple[_Val, tuple]], ctx: _Ctx, n_out: int
) -> list[_Val]:
    """Records a matrix use for every parameter view among the operands.

    ``operands``: ``(value, (reduce_dims, free_dims, batch_dims))`` per operand. The result is
    an activation whose ``last`` is the contracted leaves (or, if no parameter takes part, the
    union of the operands' ``last``: attention scores carry the projections that made them).
    """
    leaves: set[int] = set()
    for val, (reduce_dims, free_dims, batch_dims) in operands:
        for view in val.views:
            ctx.add(view.leaf, _matrix_use(kind, view, reduce_dims, free_dims, batch_dims))
            leaves.add(view.leaf)
    act = any(val.act for val, _ in operands)
    if leaves and act:
        last = frozenset(leaves)
    else:
        last = frozenset().union(*(val.last for val, _ in operands))
    return [_Val(frozenset(), act, last) for _ in range(n_out)]


def _rule_dot(eqn: Any, ins: list[_Val], ctx: _Ctx) -> list[_Val]:
    """``dot_general``: contracted axes are fan-in, free axes fan-out, batch axes a stack."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    operands = []
    for val, var, contract, batch in (
        (ins[0], eqn.invars[0], lc, lb),
        (ins[1], eqn.invars[1], rc, rb),
    ):
        contract, batch = [int(d) for d in contract], [int(d) for d in batch]
        free = [d for d in range(len(_shape(var))) if d not in contract and d not in batch]
        operands.append((val, (contract, free, batch)))
    return _contraction("dot", operands, ctx, len(eqn.outvars))


def _rule_conv(eqn: Any, ins: list[_Val], ctx: _Ctx) -> list[_Val]:
    """``conv_general_dilated``: the kernel is the matrix ``(window · in) × out``."""
    dn = eqn.params["dimension_numbers"]
    out_dim, in_dim, *window = (int(d) for d in dn.rhs_spec)
    lhs = ins[0]
    for view in lhs.views:  # a parameter convolved as the image: not a matrix use
        ctx.add(view.leaf, _Use("conv input"))
    operands = [
        (lhs._replace(views=frozenset()), ((), (), ())),
        (ins[1], ((in_dim, *window), (out_dim,), ())),
    ]
    return _contraction("conv", operands, ctx, len(eqn.outvars))


def _lookup(kind: str, ins: list[_Val], ctx: _Ctx, n_out: int) -> list[_Val]:
    """A parameter read at data-dependent positions: an embedding-like use."""
    for view in ins[0].views:
        ctx.add(view.leaf, _Use(kind))
    act = any(v.act for v in ins) or bool(ins[0].views)
    last = frozenset().union(*(v.last for v in ins))
    return [_Val(frozenset(), act, last) for _ in range(n_out)]


def _rule_gather(eqn: Any, ins: list[_Val], ctx: _Ctx) -> list[_Val]:
    return _lookup("gather", ins, ctx, len(eqn.outvars))


def _rule_dynamic_slice(eqn: Any, ins: list[_Val], ctx: _Ctx) -> list[_Val]:
    """``dynamic_slice``: at data-dependent starts a lookup; at loop counters a plain view.

    A loop counter is not data, so ``W[i]`` inside a ``fori_loop`` over stacked layers keeps
    ``W``'s axes (the indexed axis ends up a stack axis once squeezed away).
    """
    if any(v.act for v in ins[1:]):
        return _lookup("dynamic slice", ins, ctx, len(eqn.outvars))
    return [ins[0]]


# --------------------------------------------------------------------------------------------
# Sub-jaxprs


def _eval_closed(closed: Any, ins: Sequence[_Val], ctx: _Ctx) -> list[_Val]:
    """Evaluates a ``ClosedJaxpr`` or an open ``Jaxpr`` (its consts are constants)."""
    jaxpr = closed.jaxpr if isinstance(closed, jcore.ClosedJaxpr) else closed
    return _eval_jaxpr(jaxpr, [_CONST] * len(jaxpr.constvars), ins, ctx)


def _fixpoint(
    step: Callable[[list[_Val], _Ctx], list[_Val]], init: list[_Val], ctx: _Ctx
) -> list[_Val]:
    """Loop-carry values at the fixpoint of ``carry ⊔ step(carry)``.

    Settling runs on a scratch recorder, so uses seen only at an unsettled carry (a weight
    scaled by a carry that is still a constant in the first pass) are not recorded.
    """
    carry = list(init)
    for _ in range(_MAX_FIXPOINT_PASSES):
        new = [_join(a, b) for a, b in zip(carry, step(carry, ctx.scratch()))]
        if new == carry:
            return carry
        carry = new
    return [_join(c, _ACT) for c in carry]


def _slice_leading(val: _Val) -> _Val:
    """A ``scan`` input as the body sees it: the leading axis becomes a stack axis."""
    views = frozenset(
        v._replace(axes=v.axes[1:], stacked=v.stacked + tuple((a, "scan") for a in v.axes[0]))
        for v in val.views
    )
    return val._replace(views=views)


def _stack_leading(val: _Val) -> _Val:
    """A ``scan`` output stacked along a new leading axis (which holds no leaf axis)."""
    return _map_views(val, lambda axes: ((),) + axes)


def _rule_scan(eqn: Any, ins: list[_Val], ctx: _Ctx) -> list[_Val]:
    """``scan``: consts as they are, carries at their fixpoint, xs sliced along axis 0."""
    n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
    consts = list(ins[:n_consts])
    xs = [_slice_leading(v) for v in ins[n_consts + n_carry :]]
    body = eqn.params["jaxpr"]

    def run(carry: list[_Val], c: _Ctx) -> list[_Val]:
        return _eval_closed(body, consts + carry + xs, c)

    carry = _fixpoint(lambda k, c: run(k, c)[:n_carry], ins[n_consts : n_consts + n_carry], ctx)
    outs = run(carry, ctx)
    return outs[:n_carry] + [_stack_leading(v) for v in outs[n_carry:]]


def _rule_while(eqn: Any, ins: list[_Val], ctx: _Ctx) -> list[_Val]:
    """``while``: the body's carry at its fixpoint; the condition is evaluated for its uses."""
    p = eqn.params
    n_cond, n_body = p["cond_nconsts"], p["body_nconsts"]
    cond_consts, body_consts = list(ins[:n_cond]), list(ins[n_cond : n_cond + n_body])

    def step(carry: list[_Val], c: _Ctx) -> list[_Val]:
        return _eval_closed(p["body_jaxpr"], body_consts + carry, c)

    carry = _fixpoint(step, ins[n_cond + n_body :], ctx)
    step(carry, ctx)
    _eval_closed(p["cond_jaxpr"], cond_consts + carry, ctx)
    return carry


def _rule_cond(eqn: Any, ins: list[_Val], ctx: _Ctx) -> list[_Val]:
    """``cond``: every branch is evaluated; the outputs may come from any of them."""
    outs = None
    for branch in eqn.params["branches"]:
        res = _eval_closed(branch, ins[1:], ctx)
        outs = res if outs is None else [_join(a, b) for a, b in zip(outs, res)]
    return outs


def _call_jaxpr(eqn: Any) -> Any:
    """The sub-jaxpr of a call-like primitive (jit, custom_jvp/vjp, checkpoint, ...), if any.

    Found by arity: a parameter that is a jaxpr taking exactly the equation's operands and
    giving exactly its results.
    """
    for value in eqn.params.values():
        if isinstance(value, (jcore.ClosedJaxpr, jcore.Jaxpr)):
            jaxpr = value.jaxpr if isinstance(value, jcore.ClosedJaxpr) else value
            if len(jaxpr.invars) == len(eqn.invars) and len(jaxpr.outvars) == len(eqn.outvars):
                return value
    return None


_RULES: dict[str, Callable[[Any, list[_Val], _Ctx], list[_Val]]] = {
    "reshape": _rule_reshape,
    "transpose": _rule_transpose,
    "squeeze": _rule_squeeze,
    "broadcast_in_dim": _rule_broadcast,
    "dot_general": _rule_dot,
    "conv_general_dilated": _rule_conv,
    "gather": _rule_gather,
    "dynamic_slice": _rule_dynamic_slice,
    "scan": _rule_scan,
    "while": _rule_while,
    "cond": _rule_cond,
}


def _apply(eqn: Any, ins: list[_Val], ctx: _Ctx) -> list[_Val]:
    """Abstract evaluation of one equation."""
    rule = _RULES.get(eqn.primitive.name)
    if rule is not None:
        return rule(eqn, ins, ctx)
    sub = _call_jaxpr(eqn)
    if sub is not None:
        return _eval_closed(sub, ins, ctx)
    if eqn.primitive.name in _AXIS_PRESERVING:
        return _combine(eqn, ins, ctx)
    if _is_elementwise(eqn):
        return _combine(eqn, ins, ctx)
    return _opaque(eqn, ins, ctx)


def _is_elementwise(eqn: Any) -> bool:
    """Every operand is a scalar or has the result's shape up to size-1 (broadcast) axes."""
    out_shapes = {_shape(v) for v in eqn.outvars}
    if len(out_shapes) != 1:
        return False
    (out,) = out_shapes
    for var in eqn.invars:
        shape = _shape(var)
        if shape and (len(shape) != len(out) or any(n not in (1, m) for n, m in zip(shape, out))):
            return False
    return True


def _eval_jaxpr(jaxpr: Any, consts: Sequence[_Val], ins: Sequence[_Val], ctx: _Ctx) -> list[_Val]:
    """Abstract interpretation of ``jaxpr`` over :class:`_Val`, recording uses in ``ctx``."""
    env: dict[Any, _Val] = {}

    def read(var: Any) -> _Val:
        return _CONST if isinstance(var, jcore.Literal) else env.get(var, _CONST)

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, ins))
    for eqn in jaxpr.eqns:
        outs = _apply(eqn, [read(v) for v in eqn.invars], ctx)
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


# --------------------------------------------------------------------------------------------
# Decisions


class TracedDecision(NamedTuple):
    """The traced route of one parameter leaf.

    Attributes:
      route: a :class:`MatrixSpec` (Muon), ``"adam"`` (AdamW) or None (the trace never reached
        the leaf: the name presets decide).
      reason: why, e.g. ``"dot: reduce (0,) out (1, 2)"``, ``"gather → embedding"``.
      shape: the leaf's shape when traced.
    """

    route: MatrixSpec | str | None
    reason: str
    shape: Shape


def _stack_text(use: _Use, rank: int) -> str:
    """``"; scan → stack axis 0"`` for every leaf axis that is neither fan-in nor fan-out.

    The cause is ``scan`` (sliced by a scan), ``dot batch`` (a ``dot_general`` batch axis) or
    ``indexed`` (sliced away otherwise, e.g. ``W[i]`` at a loop counter).
    """
    notes = dict(reversed(use.stack))  # the first recorded cause wins
    return "".join(
        f"; {notes.get(axis, 'indexed')} → stack axis {axis}"
        for axis in range(rank)
        if axis not in use.reduce and axis not in use.out
    )


def _matrix_decision(use: _Use, shape: Shape, is_head: bool) -> tuple[Any, str]:
    """Route of a leaf with exactly one matrix use.

    Size-1 leaf axes that a reshape dropped (a ``(window, 1, out)`` kernel read as
    ``(window, out)``) join the fan-in, which they do not change.
    """
    stacked = {a for a, _ in use.stack}
    ones = [
        a
        for a, n in enumerate(shape)
        if n == 1 and a not in use.reduce + use.out and a not in stacked
    ]
    use = use._replace(reduce=tuple(sorted([*use.reduce, *ones])))
    text = f"{use.kind}: reduce {use.reduce} out {use.out}"
    split = sorted(set(use.reduce) & set(use.out))
    if split:
        return "adam", f"{text} → splits leaf axis {split[0]} between fan-in and fan-out"
    if is_head:
        return "adam", "last projection → head"
    if math.prod(shape[a] for a in use.reduce) == 1 or math.prod(shape[a] for a in use.out) == 1:
        return "adam", f"{text} → a side of 1, not a matrix"
    return MatrixSpec(use.reduce, use.out), text + _stack_text(use, len(shape))


def _decide(shape: Shape, uses: set[_Use], is_head: bool) -> tuple[Any, str]:
    """Route and reason of one leaf from all its uses."""
    if not uses:
        return None, "not reached → name preset"
    matrix = {u._replace(stack=()) for u in uses if u.kind in _MATRIX_KINDS}
    other = sorted({u.kind for u in uses if u.kind not in _MATRIX_KINDS})
    if matrix and other:
        kinds = other + sorted({u.kind for u in matrix})
        return "adam", "conflicting uses: " + ", ".join(kinds)
    if len(matrix) > 1:
        texts = sorted(f"{u.kind} reduce {u.reduce} out {u.out}" for u in matrix)
        return "adam", "conflicting uses: " + " vs ".join(texts)
    if matrix:
        stack = tuple(sorted({s for u in uses for s in u.stack}))
        return _matrix_decision(next(iter(matrix))._replace(stack=stack), shape, is_head)
    if "gather" in other:
        return "adam", "gather → embedding"
    if "dynamic slice" in other:
        return "adam", "dynamic slice → embedding"
    if other == ["elementwise"]:
        return "adam", "elementwise only"
    return "adam", "used by " + ", ".join(other)


def _analyse(
    closed: Any, kinds: Sequence[str], names: Sequence[PathNames], shapes: Sequence[Shape]
) -> dict[PathNames, TracedDecision]:
    """Runs the abstract interpretation over a traced jaxpr and decides every leaf.

    ``kinds[i]`` is ``"param"``, ``"const"`` or ``"data"`` for the jaxpr's i-th input; the
    parameter inputs come first, in the order of ``names``.
    """
    ins = []
    for i, kind in enumerate(kinds):
        if kind == "param":
            aval_rank = len(shapes[i])
            ins.append(_Val(frozenset({_View(i, tuple((a,) for a in range(aval_rank)))})))
        else:
            ins.append(_ACT if kind == "data" else _CONST)
    ctx = _Ctx({})
    outs = _eval_closed(closed, ins, ctx)
    head = frozenset().union(*(o.last for o in outs))
    decisions = {}
    for i, (name, shape) in enumerate(zip(names, shapes)):
        route, reason = _decide(shape, ctx.uses.get(i, set()), i in head)
        decisions[name] = TracedDecision(route, reason, shape)
    return decisions


# --------------------------------------------------------------------------------------------
# The rule object


@dataclasses.dataclass(frozen=True, eq=False)
class TracedRouting:
    """A routing rule read off a traced forward pass; pass it as ``labels=``.

    Calling it with ``(names, shape)`` returns the leaf's :class:`MatrixSpec` (Muon),
    ``"adam"`` (AdamW) or None (not reached by the trace: the name presets decide), which is
    the ``labels`` protocol of ``fo.muon``, ``fo.muon_specs``, ``fo.muon_labels`` and
    ``fo.routing_table``. Hashes by identity, so it can be a static argument.

    Attributes:
      decisions: read-only mapping from path names (as :func:`fo.path_names` gives them) to
        :class:`TracedDecision`.
    """

    decisions: Mapping[PathNames, TracedDecision]

    def __call__(self, names: Sequence[str], shape: Sequence[int]) -> MatrixSpec | str | None:
        decision = self.decisions.get(tuple(names))
        if decision is None:
            return None
        if tuple(shape) != decision.shape:
            raise ValueError(
                f"trace_routing traced parameter {'/'.join(names)} with shape "
                f"{decision.shape}, but labels was asked about shape {tuple(shape)}; trace "
                "again with the parameters the optimizer will see."
            )
        return decision.route

    def reason(self, names: Sequence[str]) -> str:
        """Why the leaf at ``names`` got its route (e.g. ``"scan → stack axis 0"``); the
        ``why`` column of ``fo.routing_table(params, labels=rule)``."""
        decision = self.decisions.get(tuple(names))
        if decision is None:
            return "not among the traced parameters → name preset"
        return decision.reason

    def table(self) -> str:
        """The decisions as an aligned text table: path, shape, route, reason."""
        rows = [("path", "shape", "route", "reason")]
        for names, d in self.decisions.items():
            route = "preset" if d.route is None else d.route
            route = "muon" if isinstance(route, MatrixSpec) else route
            rows.append(("/".join(names), str(d.shape), route, d.reason))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows
        )

    def __str__(self) -> str:
        return self.table()


# --------------------------------------------------------------------------------------------
# Tracing


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct))


def _aval_text(x: Any) -> str:
    return f"{np.dtype(x.dtype).name if hasattr(x.dtype, 'name') else x.dtype}{list(x.shape)}"


def _positional_names(fn: Callable[..., Any], n: int, skip: int) -> list[str]:
    """Names of ``fn``'s first ``n`` positional inputs after ``skip`` (``args[i]`` if unknown)."""
    try:
        params = list(inspect.signature(fn).parameters.values())[skip:]
    except (TypeError, ValueError):  # builtins and some callables have no signature
        params = []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [
        params[i].name if i < len(params) and params[i].kind in positional else f"args[{i}]"
        for i in range(n)
    ]


def _input_text(path: Sequence[Any], positional: Sequence[str]) -> str:
    """``input x['a']`` / ``input mask`` for a leaf of the ``(args, kwargs, state)`` tree."""
    head, first, rest = path[0].idx, path[1], tuple(path[2:])
    name = positional[first.idx] if head == 0 else str(first.key)
    return f"input {name}" + jax.tree_util.keystr(rest)


def _param_specs(params: Any, owner: str) -> tuple[list[PathNames], list[Any], Any]:
    """Names, ShapeDtypeStructs and treedef of the parameter leaves (validated)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names, specs = [], []
    for path, leaf in flat:
        name = path_names(path)
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            raise ValueError(
                f"params leaf {'/'.join(name) or '<root>'} given to {owner} is "
                f"{type(leaf).__name__}; every parameter leaf must be an array (or a "
                "jax.ShapeDtypeStruct)."
            )
        names.append(name)
        specs.append(jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype))
    return names, specs, treedef


def _culprits(
    err: BaseException, labels: Mapping[int, str], avals: Mapping[str, tuple]
) -> tuple[list[str], str]:
    """Inputs read by the failing library operation, and where the user's code called it.

    The operands of the failing operation are locals of the innermost JAX / Flax frame that
    holds any input at all (``a @ b`` fails in a frame holding ``a`` and ``b``), so naming
    them says which input does not fit. Inside a nested trace (a ``jit`` or ``scan`` in the
    function) the operands are new tracers: then the inputs with the shape and dtype of a
    tracer in the innermost frame holding such a tracer are named, as likely culprits.
    """
    hits: list[str] = []
    alike: list[str] = []
    where = ""
    for frame, line in reversed(list(traceback.walk_tb(err.__traceback__))):
        filename = frame.f_code.co_filename
        if filename == __file__:
            continue
        values = list(frame.f_locals.values())
        tracers = {  # tracers of a nested trace (ours are matched by identity below)
            _aval_key(v) for v in values if isinstance(v, jax.core.Tracer) and id(v) not in labels
        }
        alike = alike or [f"{text} (by shape)" for text, key in avals.items() if key in tracers]
        if not filename.startswith(_LIBRARY_DIRS):
            where = where or f" (in {frame.f_code.co_name}, {filename}:{line})"
            continue
        hits = hits or [labels[id(v)] for v in values if id(v) in labels]
    return list(dict.fromkeys(hits or alike)), where


def _aval_key(x: Any) -> tuple:
    return tuple(x.shape), str(x.dtype)


def _failure(
    err: BaseException,
    labels: Mapping[int, str],
    avals: Mapping[str, tuple],
    owner: str,
    summary: str,
) -> ValueError:
    """The ValueError for a function that cannot be traced with the example inputs."""
    head = f"trace_routing could not trace {owner} with the example inputs"
    if isinstance(err, KeyError):
        return ValueError(
            f"{head}: it reads {err.args[0]!r}, which its inputs do not have (does the "
            "params tree match the function?)."
        )
    culprits, where = _culprits(err, labels, avals)
    if culprits:
        what = "the failing operation reads " + " and ".join(culprits)
    else:
        what = f"inputs were {summary}"
    return ValueError(f"{head}{where}: {what}. {type(err).__name__}: {err}")


def _trace(
    call: Callable[..., Any],
    params: Any,
    state: Any,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    owner: str,
    positional: Sequence[str],
) -> TracedRouting:
    """Traces ``call(params, state, *args, **kwargs)`` to a jaxpr and routes ``params``.

    The parameters and the array leaves of ``state`` (non-parameter model state such as batch
    statistics: constants) and of ``args`` / ``kwargs`` (the data) are traced as abstract
    inputs; other leaves (Python numbers, flags) stay static.
    """
    names, p_specs, p_def = _param_specs(params, owner)
    a_flat, a_def = jax.tree_util.tree_flatten_with_path((tuple(args), dict(kwargs), state))
    a_leaves = [leaf for _, leaf in a_flat]
    # Array leaves are traced: data from args / kwargs, constants from the model state.
    data = [i for i, (path, x) in enumerate(a_flat) if _is_array(x) and path[0].idx < 2]
    const = [i for i, (path, x) in enumerate(a_flat) if _is_array(x) and path[0].idx == 2]
    p_text = [f"params leaf {'/'.join(n)!r} {_aval_text(s)}" for n, s in zip(names, p_specs)]
    d_text = [f"{_input_text(a_flat[i][0], positional)} {_aval_text(a_leaves[i])}" for i in data]
    d_specs = [a_leaves[i] for i in data]
    labels: dict[int, str] = {}
    held: list[Any] = []  # keeps the tracers alive so their ids stay unique

    def traced(p: list[Any], c: list[Any], d: list[Any]) -> Any:
        held.extend(p + d)
        labels.update({id(t): text for t, text in zip(p + d, p_text + d_text)})
        leaves = list(a_leaves)
        for i, t in zip(const + data, c + d):
            leaves[i] = t
        a, k, s = jax.tree_util.tree_unflatten(a_def, leaves)
        return call(jax.tree_util.tree_unflatten(p_def, p), s, *a, **k)

    try:
        closed = jax.make_jaxpr(traced)(p_specs, [a_leaves[i] for i in const], d_specs)
    except Exception as err:  # any failure of the user's function is reported by input
        count = f"{len(names)} leaf" if len(names) == 1 else f"{len(names)} leaves"
        summary = "; ".join([f"params ({count})", *d_text])
        avals = {t: _aval_key(x) for t, x in zip(p_text + d_text, p_specs + d_specs)}
        raise _failure(err, labels, avals, owner, summary) from err
    kinds = ["param"] * len(names) + ["const"] * len(const) + ["data"] * len(data)
    shapes = [tuple(s.shape) for s in p_specs]
    return TracedRouting(types.MappingProxyType(_analyse(closed, kinds, names, shapes)))


def trace_routing(
    fn: Callable[..., Any] | nnx.Module, /, *args: Any, **kwargs: Any
) -> TracedRouting:
    """Routes every parameter by how the forward pass uses it (traced once, no FLOPs).

    ``trace_routing(fn, params, *args, **kwargs)`` traces ``fn(params, *args, **kwargs)``
    with :func:`jax.make_jaxpr`; ``trace_routing(model, *args, **kwargs)`` traces the Flax
    NNX call ``model(*args, **kwargs)`` over ``nnx.state(model, nnx.Param)``, with paths as
    ``nnx.Optimizer`` hands them to the optimizer. Array leaves of ``args`` / ``kwargs`` are
    the data (shapes and dtypes matter, values do not: ``jax.ShapeDtypeStruct`` works);
    other leaves (flags, Python numbers) are passed through unchanged.

    Per leaf, following it through reshapes, transposes, casts, slices, broadcasts,
    scaling by constants and sub-jaxprs (jit, custom_jvp/vjp, checkpoint, cond, while, scan):

    * weight operand of ``dot_general`` against data → ``MatrixSpec(contracted axes,
      free axes)``; ``dot_general`` batch axes and axes sliced by ``scan`` are stack axes;
    * ``conv_general_dilated`` kernel → ``(window · in) × out``;
    * gathered / dynamically sliced at data positions, or added to / multiplied with data
      without a contraction (embeddings, position tables, biases, gains) → ``"adam"``;
    * the projection whose result reaches the output with no further parameter contraction
      (the head) → ``"adam"``; conflicting uses (tied embeddings) → ``"adam"``;
    * never reached → None (the name presets decide).

    Every output of the traced call counts as "the output": trace the function that returns
    the logits (or the loss), not one that also returns hidden states.

    Args:
      fn: a function ``fn(params, *args, **kwargs)`` or an ``nnx.Module``.
      *args: for a function, ``params`` then its example inputs; for a module, its inputs.
      **kwargs: keyword inputs.

    Returns:
      A :class:`TracedRouting`: use it as ``labels=`` anywhere routing is accepted; its
      ``reason(names)`` says why, ``decisions`` holds every leaf, ``table()`` prints them.

    Raises:
      ValueError: the function cannot be traced with these inputs (names the input or the
        params leaf the failing operation reads), or a params leaf is not an array.
      TypeError: ``fn`` is neither callable nor a module, or ``params`` is missing.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"emb": jnp.zeros((10, 4)), "w": jnp.zeros((4, 8)), "out": jnp.zeros((8, 10))}
      >>> fn = lambda p, tok: jnp.tanh(p["emb"][tok] @ p["w"]) @ p["out"]
      >>> rule = trace_routing(fn, params, jnp.zeros((2, 3), jnp.int32))
      >>> rule(("w",), (4, 8)), rule.reason(("emb",)), rule.reason(("out",))
      (MatrixSpec(reduction_axes=(0,), output_axes=(1,)), 'gather → embedding', \
'last projection → head')

    References:
      Jordan, "Muon", 2024 (hidden matrices only); Liu et al., arXiv:2502.16982.
    """
    if isinstance(fn, nnx.Module):
        return _trace_module(fn, args, kwargs)
    if not callable(fn):
        raise TypeError(
            f"trace_routing expects a function fn(params, *args) or an nnx.Module; got "
            f"{type(fn).__name__}."
        )
    if not args:
        raise TypeError("trace_routing(fn, params, *args, **kwargs): params is missing.")
    return _trace_function(fn, args[0], args[1:], kwargs)


def _trace_module(
    model: nnx.Module, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> TracedRouting:
    """``model(*args, **kwargs)`` over ``nnx.state(model, nnx.Param)``; other state constant."""
    graphdef, params, state = nnx.split(model, nnx.Param, ...)

    def call_module(p: Any, s: Any, *a: Any, **k: Any) -> Any:
        return nnx.merge(graphdef, p, s)(*a, **k)

    positional = _positional_names(model.__call__, len(args), 0)
    return _trace(call_module, params, state, args, kwargs, type(model).__name__, positional)


def _trace_function(
    fn: Callable[..., Any], params: Any, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> TracedRouting:
    """``fn(params, *args, **kwargs)``."""

    def call_fn(p: Any, s: Any, *a: Any, **k: Any) -> Any:
        return fn(p, *a, **k)

    owner = getattr(fn, "__name__", type(fn).__name__)
    positional = _positional_names(fn, len(args), 1)
    return _trace(call_fn, params, (), args, kwargs, owner, positional)
