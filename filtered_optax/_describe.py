"""Describe a built optax chain: its stages, hyperparameters, parameter groups and buffers.

Two sources of truth. Our own constructors note the arguments they were called with (see
``_record``). Everything else - ``optax.chain``, ``optax.partition``, ``optax.masked``,
``optax.inject_hyperparams``, ``optax.scale_by_adam`` and the like - is read from the
closures of its ``init`` / ``update`` functions: the enclosing factory names the stage,
the closed-over variables that are parameters of that factory are its hyperparameters,
and closed-over transformations are its sub-stages. A transformation neither way
explains becomes an opaque stage named after its function; describing never fails on
an unknown transformation.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import inspect
import itertools
import marshal
import math
import secrets
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import optax

from filtered_optax import _record
from filtered_optax._paths import path_text

# Hyperparameter values are JSON-ready: None, bool, int, float, str, or tuples of them.
Value = Any

# Arrays closed over by a transformation are shown in full up to this many elements, and
# as ``dtype[shape]`` beyond (a hyperparameter, not a weight, is what belongs in a paper).
_MAX_ARRAY_ELEMENTS = 8
# Guards against self-referencing closures; real chains are a handful of levels deep.
_MAX_DEPTH = 32
# Closures inside closures (a joined schedule of warmup and decay, wrapped by
# scale_by_learning_rate) are followed this deep; deeper ones are not describable.
_MAX_CLOSURE_DEPTH = 8
# Hex digits of the code hash that identifies a stateless lambda (32 bits: collisions
# between the handful of functions in one optimizer are out of the question).
_CODE_HASH_CHARS = 8


@dataclasses.dataclass(frozen=True)
class Description:
    """One stage of an optimizer and, recursively, its sub-stages.

    Attributes:
      name: the stage's public name, e.g. ``"fo.with_moments"`` or ``"optax.scale_by_adam"``.
      hyperparams: ``(name, value)`` pairs, defaults applied; values are None, bool, int,
        float, str or tuples of them (dtypes as their names; schedules and other closures
        written out as ``factory(k=v, ...)``, module-level functions as their names,
        stateless lambdas as ``name (code <hash>)``, anything else as an opaque token that
        is equal only for the same object).
      children: ``(label, Description)`` pairs; the label is the partition group, the
        argument name (``filter``, ``moments``, ``scale``), or ``""`` for a chain member.
      params: paths of the parameters this stage receives, when it is one branch of an
        ``optax.partition`` or the inside of an ``optax.masked`` (and params were given).
      state: ``(field, summary)`` pairs of the stage's own state buffers, e.g.
        ``("mu", "bfloat16, 2 arrays, 192 values")`` (when params were given).
      given: names of the hyperparameters the caller passed explicitly, for our own
        constructors (None otherwise). Not part of equality: ``fo.adam(1e-3)`` and
        ``fo.adam(1e-3, b1=0.9)`` describe equal optimizers.

    Example:
      >>> import filtered_optax as fo
      >>> d = fo.describe(fo.filtered_adam(1e-3, gamma=5.0))
      >>> dict(d.find("fo.kalman_filter").hyperparams)["gamma"]
      5.0
      >>> d == fo.describe(fo.filtered_adam(1e-3, gamma=5.0))
      True
    """

    name: str
    hyperparams: tuple[tuple[str, Value], ...] = ()
    children: tuple[tuple[str, Description], ...] = ()
    params: tuple[str, ...] | None = None
    state: tuple[tuple[str, str], ...] = ()
    given: tuple[str, ...] | None = dataclasses.field(default=None, compare=False)

    def walk(self) -> Iterator[Description]:
        """This stage and every sub-stage, depth first."""
        yield self
        for _, child in self.children:
            yield from child.walk()

    def find(self, name: str) -> Description | None:
        """The first stage (depth first) called ``name``, or None."""
        return next((d for d in self.walk() if d.name == name), None)

    def __str__(self) -> str:
        return "\n".join(self._lines("", ""))

    def _lines(self, label: str, indent: str) -> Iterator[str]:
        head = f"{label}: {self.name}" if label else self.name
        if self.hyperparams:
            head += "(" + ", ".join(f"{k}={_fmt(v)}" for k, v in self.hyperparams) + ")"
        yield indent + head
        inner = indent + "  "
        if self.params is not None:
            yield f"{inner}params: {', '.join(self.params) if self.params else '(none)'}"
        if self.state:
            yield f"{inner}state: " + "; ".join(f"{k} {v}" for k, v in self.state)
        for child_label, child in self.children:
            yield from child._lines(child_label, inner)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (non-finite floats become ``"inf"``, ``"-inf"``, ``"nan"``).

        Example:
          >>> import json, optax, filtered_optax as fo
          >>> d = fo.describe(optax.adam(1e-3)).to_dict()
          >>> fo.Description.from_dict(json.loads(json.dumps(d))) == fo.describe(
          ...     optax.adam(1e-3))
          True
        """
        out: dict[str, Any] = {"name": self.name}
        if self.hyperparams:
            out["hyperparams"] = {k: _to_json(v) for k, v in self.hyperparams}
        if self.params is not None:
            out["params"] = list(self.params)
        if self.state:
            out["state"] = dict(self.state)
        if self.given is not None:
            out["given"] = list(self.given)
        if self.children:
            out["children"] = [{"label": k, **c.to_dict()} for k, c in self.children]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Description:
        """Inverse of :meth:`to_dict` (also after a JSON round trip)."""
        given = data.get("given")
        params = data.get("params")
        return cls(
            name=data["name"],
            hyperparams=tuple((k, _from_json(v)) for k, v in data.get("hyperparams", {}).items()),
            children=tuple(
                (c.get("label", ""), cls.from_dict(c)) for c in data.get("children", ())
            ),
            params=None if params is None else tuple(params),
            state=tuple(data.get("state", {}).items()),
            given=None if given is None else tuple(given),
        )


def describe(tx: Any, params: Any = None) -> Description:
    """Describes the resolved pipeline of an optax transformation.

    Every stage is listed with its hyperparameters (defaults applied). With ``params`` (a
    pytree of arrays or ``jax.ShapeDtypeStruct``), label functions of ``optax.partition``
    and masks of ``optax.masked`` are evaluated on it to show which parameters each
    branch receives, and each stage's state is traced with ``jax.eval_shape`` (nothing is
    allocated) to show its buffers and their dtypes.

    ``str(description)`` is an indented tree; ``description.to_dict()`` is JSON-ready;
    descriptions compare equal when the optimizers are built the same way.

    Args:
      tx: an ``optax.GradientTransformation`` (any, not only this package's).
      params: optional parameters or their shapes.

    Returns:
      A :class:`Description`.

    Example:
      >>> import optax, filtered_optax as fo
      >>> print(fo.describe(optax.chain(optax.clip_by_global_norm(1.0),
      ...                               fo.filtered_adam(1e-3, gamma=5.0))))
      optax.chain
        optax.clip_by_global_norm(max_norm=1.0)
        fo.filtered_adam(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-08, eta=1.0, \
gamma=5.0, warmup=20, kappa=0.01, mu_dtype=None, nu_dtype=None, stats=False)
          fo.with_moments(mu_dtype=None, nu_dtype=None)
            filter: fo.kalman_filter(eta=1.0, gamma=5.0, warmup=20, kappa=0.01, stats=False)
            moments: fo.ema(b1=0.9, b2=0.999)
            scale: fo.normalize(eps=1e-08, eps_root=0.0, nesterov=False)
          optax.scale(step_size=-0.001)
    """
    return _describe(tx, params, 0)


# --------------------------------------------------------------------------------------------
# Walking the transformation


def _describe(tx: Any, params: Any, depth: int) -> Description:
    tx = _unwrap(tx)
    if depth > _MAX_DEPTH:
        return Description(_function_name(getattr(tx, "update", tx)))
    rec = _record.lookup(tx)
    node = _from_record(tx, rec, params, depth) if rec else _from_closures(tx, params, depth)
    if params is not None and not node.state:
        node = dataclasses.replace(node, state=_buffers(tx, params))
    return node


def _unwrap(tx: Any) -> Any:
    """Sees through ``optax.with_extra_args_support``, which only drops extra arguments."""
    update = getattr(tx, "update", None)
    while getattr(update, "__qualname__", "") == "with_extra_args_support.<locals>.update":
        inner = _cells(update).get("tx")
        if not _is_stage(inner):
            break
        tx, update = inner, inner.update
    return tx


def _from_record(tx: Any, rec: _record.Record, params: Any, depth: int) -> Description:
    hyperparams, children = [], []
    for key, value in rec.arguments.items():
        if _is_stage(value):
            children.append((key, _describe(value, params, depth + 1)))
        else:
            hyperparams.append((key, _value(value)))
    if not children:  # an alias: show the pipeline it built below it
        built = _from_closures(tx, params, depth)
        # A chain shows its members; fo.with_moments (fo.scale_by_muon) its three stages.
        if built.name in ("optax.chain", "fo.with_moments"):
            children = list(built.children)
        elif built.children:
            children = [("", built)]
    return Description(rec.name, tuple(hyperparams), tuple(children), given=rec.given)


def _from_closures(tx: Any, params: Any, depth: int) -> Description:
    init, update = getattr(tx, "init", None), getattr(tx, "update", None)
    if inspect.ismethod(init):  # a class-based transformation such as optax.MultiSteps
        return _from_object(init.__self__, params, depth)
    local = [f for f in (init, update) if "<locals>" in getattr(f, "__qualname__", "")]
    if not local:  # module-level functions or callable objects: a name, nothing more
        named = [f for f in (update, init) if inspect.isfunction(f)] or [update or tx]
        return Description(_function_name(named[0]))
    fn = local[0]
    factory = fn.__qualname__.split(".<locals>")[0]
    name = _public_name(getattr(fn, "__module__", "") or "", factory)
    cells = {**_cells(update), **_cells(init)}
    special = _COMBINATORS.get(name)
    if special is not None:
        return special(name, cells, params, depth)
    keep = _signature_names(fn)
    hyperparams, children = [], []
    for key, value in _ordered(cells, keep):
        stages = _stages_in(value)
        if stages:
            children += [(label or key, _describe(s, params, depth + 1)) for label, s in stages]
        elif keep is not None and key in keep:
            hyperparams.append((key, _value(value)))
        elif keep is None and not _is_helper(value, factory):
            hyperparams.append((key, _value(value)))
    if len(children) == 1:
        children = [("", children[0][1])]
    return Description(name, tuple(hyperparams), tuple(children))


def _from_object(obj: Any, params: Any, depth: int) -> Description:
    cls = type(obj)
    name = _public_name(cls.__module__, cls.__qualname__)
    hyperparams, children = [], []
    for key, value in getattr(obj, "__dict__", {}).items():
        key = key.lstrip("_")
        if _is_stage(value):
            children.append(("", _describe(value, params, depth + 1)))
        elif not _is_helper(value, cls.__qualname__) or _closure_text(value, 0):
            hyperparams.append((key, _value(value)))
    return Description(name, tuple(hyperparams), tuple(children))


def _chain(name: str, cells: dict[str, Any], params: Any, depth: int) -> Description:
    pairs = zip(cells.get("init_fns", ()), cells.get("update_fns", ()))
    children = tuple(
        ("", _describe(optax.GradientTransformation(i, u), params, depth + 1)) for i, u in pairs
    )
    return Description(name, (), children)


def _named_chain(name: str, cells: dict[str, Any], params: Any, depth: int) -> Description:
    children = tuple(
        (label, _describe(t, params, depth + 1)) for label, t in cells.get("transforms", ())
    )
    return Description(name, (), children)


def _tree_for(tree_or_fn: Any, params: Any) -> Any:
    """A label or mask tree for ``params``: called if it is a function; None without params
    or when the function fails on them (describing never fails)."""
    if params is None:
        return None
    try:
        return tree_or_fn(params) if callable(tree_or_fn) else tree_or_fn
    except Exception:  # noqa: BLE001 - a label or mask function that fails on these params
        return None


def _partition(name: str, cells: dict[str, Any], params: Any, depth: int) -> Description:
    param_labels = cells.get("param_labels")
    labels = _tree_for(param_labels, params)
    children = []
    for group, t in cells.get("transforms", {}).items():
        sub = _select(params, labels, lambda label, g=group: label == g)
        child = _describe(t, sub, depth + 1)
        if sub is not None:
            child = dataclasses.replace(child, params=_paths(sub))
        children.append((str(group), child))
    hyperparams = (("param_labels", _value(param_labels)),)
    return Description(name, hyperparams, tuple(children))


def _masked(name: str, cells: dict[str, Any], params: Any, depth: int) -> Description:
    mask, inner = cells.get("mask"), cells.get("inner")
    if not _is_stage(inner):
        return Description(name)
    sub = _select(params, _tree_for(mask, params), bool)
    child = _describe(inner, sub, depth + 1)
    if sub is not None:
        child = dataclasses.replace(child, params=_paths(sub))
    return Description(name, (("mask", _value(mask)),), (("", child),))


def _inject(name: str, cells: dict[str, Any], params: Any, depth: int) -> Description:
    factory = cells.get("inner_factory")
    numeric = dict(cells.get("numeric_hps", {}))
    schedules = {k: getattr(s, "schedule_fn", s) for k, s in cells.get("sched_hps", {}).items()}
    try:
        order = tuple(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        order = None
    hyperparams = tuple((k, _value(v)) for k, v in _ordered({**numeric, **schedules}, order))
    try:  # the inner transformation as inject_hyperparams builds it on the first step
        at_start = {}
        for k, s in cells.get("sched_hps", {}).items():
            at_start[k] = s(s.init()) if hasattr(s, "init") else s(0)
        inner = factory(**cells.get("other_hps", {}), **numeric, **at_start)
    except Exception:  # noqa: BLE001 - an opaque factory: describe the wrapper alone
        return Description(name, hyperparams)
    label = "at step 0" if at_start else ""  # scheduled values are taken at their start
    return Description(name, hyperparams, ((label, _describe(inner, params, depth + 1)),))


_COMBINATORS: dict[str, Callable[[str, dict[str, Any], Any, int], Description]] = {
    "optax.chain": _chain,
    "optax.named_chain": _named_chain,
    "optax.partition": _partition,
    "optax.masked": _masked,
    "optax.inject_hyperparams": _inject,
}


# --------------------------------------------------------------------------------------------
# Parameters and state


def _select(params: Any, labels: Any, keep: Callable[[Any], bool]) -> Any:
    """``params`` with the subtrees whose label fails ``keep`` replaced by MaskedNode."""
    if params is None or labels is None:
        return None
    try:
        return jax.tree.map(
            lambda label, sub: sub if keep(label) else optax.MaskedNode(), labels, params
        )
    except Exception:  # noqa: BLE001 - labels that are not a prefix of params
        return None


def _paths(params: Any) -> tuple[str, ...]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return tuple(path_text(path) for path, _ in leaves)


def _buffers(tx: Any, params: Any) -> tuple[tuple[str, str], ...]:
    """The stage's own state fields: scalars and trees shaped like the parameters."""
    try:
        state = jax.eval_shape(tx.init, params)
    except Exception:  # noqa: BLE001 - a stage whose init cannot run on these params
        return ()
    fields = getattr(state, "_fields", None)
    if not fields:
        return ()
    param_structure = jax.tree.structure(params)
    out = []
    for field in fields:
        value = getattr(state, field)
        own = isinstance(value, jax.ShapeDtypeStruct) or (
            value is not None and jax.tree.structure(value) == param_structure
        )
        leaves = jax.tree.leaves(value) if own else []
        if leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
            out.append((field, _summary(leaves)))
    return tuple(out)


def _summary(leaves: list[jax.ShapeDtypeStruct]) -> str:
    if len(leaves) == 1:
        (x,) = leaves
        return f"{x.dtype.name}[{','.join(str(d) for d in x.shape)}]"
    dtypes = "/".join(sorted({x.dtype.name for x in leaves}))
    size = sum(math.prod(x.shape) for x in leaves)
    return f"{dtypes}, {len(leaves)} arrays, {size:,} values"


# --------------------------------------------------------------------------------------------
# Closures, names and values


def _cells(fn: Any) -> dict[str, Any]:
    """The variables a function closes over, by name (empty cells left out)."""
    code, closure = getattr(fn, "__code__", None), getattr(fn, "__closure__", None)
    if code is None or not closure:
        return {}
    out = {}
    for key, cell in zip(code.co_freevars, closure):
        try:
            out[key] = cell.cell_contents
        except ValueError:  # a cell not yet assigned
            pass
    return out


def _is_stage(value: Any) -> bool:
    """A transformation, or a stage-like NamedTuple with init/update (fo.MomentRule)."""
    return isinstance(value, optax.GradientTransformation) or (
        isinstance(value, tuple)
        and hasattr(value, "_fields")
        and callable(getattr(value, "init", None))
        and callable(getattr(value, "update", None))
    )


def _stages_in(value: Any) -> list[tuple[str, Any]]:
    """Sub-stages held in one closure variable: a stage, or a dict / sequence of them."""
    if _is_stage(value):
        return [("", value)]
    if isinstance(value, dict) and value and all(_is_stage(v) for v in value.values()):
        return [(str(k), v) for k, v in value.items()]
    if isinstance(value, (list, tuple)) and value and all(_is_stage(v) for v in value):
        return [("", v) for v in value]
    return []


def _public_name(module: str, qualname: str) -> str:
    if module.startswith("filtered_optax"):
        return "fo." + qualname
    if module.startswith("optax.contrib"):
        return "optax.contrib." + qualname
    if module.startswith("optax"):
        return "optax." + qualname
    return qualname


def _function_name(fn: Any) -> str:
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return _public_name(getattr(fn, "__module__", "") or "", qualname)


def _signature_names(fn: Any) -> tuple[str, ...] | None:
    """Parameter names of the factory that created the closure ``fn``, if it can be found."""
    obj: Any = sys.modules.get(getattr(fn, "__module__", "") or "")
    for part in fn.__qualname__.split(".<locals>")[0].split("."):
        obj = getattr(obj, part, None)
    try:
        return tuple(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return None


def _ordered(cells: dict[str, Any], names: tuple[str, ...] | None) -> list[tuple[str, Any]]:
    """Closure variables in the factory's parameter order, the rest after them."""
    if names is None:
        return list(cells.items())
    rank = {n: i for i, n in enumerate(names)}
    return sorted(cells.items(), key=lambda kv: rank.get(kv[0], len(rank)))


def _is_helper(value: Any, owner: str) -> bool:
    """A function defined inside the factory ``owner`` itself: plumbing, not a setting."""
    qualname = getattr(value, "__qualname__", "")
    return callable(value) and qualname.startswith(owner.split(".<locals>")[0] + ".")


def _is_plain(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, (bool, int, float, str, np.generic))
        or (
            isinstance(value, (np.ndarray, jax.Array))
            and not isinstance(value, jax.core.Tracer)
            and np.ndim(value) == 0
        )
    )


def _value(value: Any) -> Value:
    """A JSON-ready, address-free rendering of one hyperparameter."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, jax.core.Tracer):
        return "<traced>"
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        array = np.asarray(value)
        if array.ndim == 0:
            return array.item()
        if array.size <= _MAX_ARRAY_ELEMENTS:
            return _value(array.tolist())
        return f"{array.dtype.name}[{','.join(str(d) for d in array.shape)}]"
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, type) and (issubclass(value, np.generic) or hasattr(value, "dtype")):
        try:
            return np.dtype(value).name
        except TypeError:
            pass
    if isinstance(value, (list, tuple)):
        return tuple(_value(v) for v in value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_fmt(_value(v))}" for k, v in value.items()) + "}"
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, functools.partial):
        return _partial_text(value)
    if callable(value):
        return _callable_text(value)
    text = repr(value)
    return type(value).__qualname__ if " at 0x" in text else text


def _callable_text(fn: Any, depth: int = 0) -> str:
    """``factory(k=v, ...)`` for a closure over describable values (every optax schedule,
    joined ones with their parts and boundaries), the public name of a function that its
    name identifies, a stateless function by its code, or else an opaque token that is
    equal only for the same object."""
    text = _closure_text(fn, depth)
    if text is not None:
        return text
    if _named_function(fn):
        return _function_name(fn)
    text = _code_text(fn)
    return _opaque(fn) if text is None else text


def _code_text(fn: Any) -> str | None:
    """``name (code <hash>)`` for a Python function that holds no state of its own.

    A lambda or local function without closure variables (or with plain default values,
    which are shown) does what its code says, so the code identifies it: two such
    functions read alike exactly when they come from the same source (the hash covers
    the compiled code, its constants and its location), also across processes. None for
    anything else.
    """
    code = getattr(fn, "__code__", None)
    if not inspect.isfunction(fn) or _cells(fn) or code is None:
        return None
    defaults = [*(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values()]
    shown = [_closure_value(v, 0) for v in defaults]
    if any(t is None for t in shown):
        return None
    digest = hashlib.sha256(marshal.dumps(code)).hexdigest()[:_CODE_HASH_CHARS]
    suffix = f" defaults ({', '.join(shown)})" if shown else ""  # type: ignore[arg-type]
    return f"{_function_name(fn)} (code {digest}{suffix})"


def _named_function(fn: Any) -> bool:
    """A module-level function or class: looking its name up gives this very object."""
    qualname = getattr(fn, "__qualname__", "")
    if not qualname or "<" in qualname:  # "<locals>", "<lambda>"
        return False
    obj: Any = sys.modules.get(getattr(fn, "__module__", "") or "")
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj is fn


# Tokens for callables that cannot be described (a lambda, a closure over arbitrary
# objects, a callable instance): equal for the same object within this process, and never
# equal across processes (the prefix is random per process), so two descriptions holding
# such a callable compare equal only when they hold the very same object.
_PROCESS = secrets.token_hex(4)
_OPAQUE: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_OPAQUE_COUNT = itertools.count(1)


def _opaque(fn: Any) -> str:
    try:
        if fn not in _OPAQUE:
            _OPAQUE[fn] = next(_OPAQUE_COUNT)
        token = f"{_PROCESS}-{_OPAQUE[fn]}"
    except TypeError:  # not weakly referenceable or not hashable: its id, while it lives
        token = f"{_PROCESS}-id{id(fn):x}"
    return f"<not describable: {_function_name(fn)}, equal only to itself ({token})>"


def _closure_text(fn: Any, depth: int) -> str | None:
    """``factory(k=v, ...)`` when every variable the closure ``fn`` holds can be written
    out (see :func:`_closure_value`), else None.

    The factory's own parameters come first, in its order, then any other variable it
    computed from them (``piecewise_interpolate_schedule`` keeps ``boundaries`` and
    ``scales``): two closures of one factory with different variables never read alike.
    Functions defined inside the same factory are plumbing and left out.
    """
    qualname = getattr(fn, "__qualname__", "")
    cells = _cells(fn)
    if "<locals>" not in qualname or not cells or depth > _MAX_CLOSURE_DEPTH:
        return None
    args = []
    for key, value in _ordered(cells, _signature_names(fn)):
        if callable(value) and _is_helper(value, qualname) and not _cells(value):
            continue
        text = _closure_value(value, depth)
        if text is None:
            return None
        args.append(f"{key}={text}")
    if not args:
        return None
    name = _public_name(getattr(fn, "__module__", "") or "", qualname.split(".<locals>")[0])
    return f"{name}({', '.join(args)})"


def _closure_value(value: Any, depth: int) -> str | None:
    """One closed-over variable as text, or None when it cannot be written out exactly."""
    if _is_plain(value):
        return _fmt(_value(value))
    if isinstance(value, (np.ndarray, jax.Array)) and not isinstance(value, jax.core.Tracer):
        if np.size(value) > _MAX_ARRAY_ELEMENTS:
            return None  # dtype[shape] would make two different arrays read alike
        return _fmt(_value(value))
    if isinstance(value, (list, tuple)):
        parts = [_closure_value(v, depth) for v in value]
        if any(p is None for p in parts):
            return None
        inner = ", ".join(parts)  # type: ignore[arg-type]
        if isinstance(value, list):
            return f"[{inner}]"
        return f"({inner},)" if len(parts) == 1 else f"({inner})"
    if isinstance(value, dict):
        items = [(_closure_value(k, depth), _closure_value(v, depth)) for k, v in value.items()]
        if any(k is None or v is None for k, v in items):
            return None
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    if callable(value):  # a callable that cannot be written out is shown by its token
        return _callable_text(value, depth + 1)
    return None


def _partial_text(fn: functools.partial) -> str:
    """``partial(f, args..., k=v...)``, or an opaque token when an argument cannot be
    written out."""
    args = [_closure_value(a, 0) for a in fn.args]
    kwargs = {k: _closure_value(v, 0) for k, v in fn.keywords.items()}
    if any(t is None for t in [*args, *kwargs.values()]):
        return _opaque(fn)
    parts = [_callable_text(fn.func), *args, *(f"{k}={t}" for k, t in kwargs.items())]
    return f"partial({', '.join(parts)})"  # type: ignore[arg-type]


def _fmt(value: Value) -> str:
    if isinstance(value, float):
        return "inf" if value == math.inf else "-inf" if value == -math.inf else repr(value)
    if isinstance(value, tuple):
        inner = ", ".join(_fmt(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _to_json(value: Value) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Value:
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    return value
