"""Optimizer specs: short strings that build optax chains, so an ablation is a grid, not code.

Grammar (a Python expression, parsed with :mod:`ast`, never evaluated)::

    spec     := base ("+" modifier)*
    base     := NAME | NAME "(" args ")"          e.g. adam, filtered_adam(gamma=inf, eta=0.5)
    modifier := NAME | NAME "(" args ")"          e.g. clip(1.0)  (applied to the gradient first)
    args     := literal numbers / strings / True / False / None / inf, positional or keyword

Examples: ``"adam"``, ``"adam(b1=0.8)"``, ``"adam+clip(1.0)"``, ``"filtered_adam(gamma=inf)"``,
``"staged(filter='spam', threshold=5000)"``, ``"filtered_adam(mu_dtype='bfloat16')"``.
:func:`spec_from_description` reads the spec back from a built chain:
``spec_from_description(fo.describe(build(s, lr))) == parse_spec(s).text``.
"""

from __future__ import annotations

import ast
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import optax

import filtered_optax as fo

INF = float("inf")


@dataclass(frozen=True)
class Entry:
    """A registry entry: a base optimizer or a gradient modifier.

    ``params`` maps keyword names to defaults (positional arguments bind in this order);
    ``None`` means "validated against the target callable's signature at build time".
    """

    kind: str  # "base" | "modifier"
    build: Callable[..., optax.GradientTransformation]
    params: dict[str, Any] | None
    family: str = "adam"  # learning-rate family, used to centre the LR window
    uses_filter: bool = False  # built with ``stats=`` (the filter's per-step statistics)
    doc: str = ""


def _checked_call(fn: Callable[..., Any], name: str, *args: Any, **kw: Any) -> Any:
    """Call ``fn`` after checking ``kw`` against its signature (clear error if unknown)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn(*args, **kw)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    unknown = [k for k in kw if k not in sig.parameters]
    if unknown and not accepts_any:
        valid = sorted(k for k in sig.parameters if k != "learning_rate")
        raise ValueError(f"{name}: unknown argument(s) {unknown}; valid: {valid}")
    return fn(*args, **kw)


def _filtered(name: str) -> Callable[..., optax.GradientTransformation]:
    def build(lr: Any, stats: bool = True, **kw: Any) -> optax.GradientTransformation:
        return getattr(fo, name)(lr, stats=stats, **kw)

    return build


def _fo_plain(name: str) -> Callable[..., optax.GradientTransformation]:
    def build(lr: Any, **kw: Any) -> optax.GradientTransformation:
        return _checked_call(getattr(fo, name), f"fo.{name}", lr, **kw)

    return build


def _staged(
    lr: Any,
    stats: bool = True,
    filter: str = "kalman",  # noqa: A002 - mirrors fo.with_moments(filter=...)
    moments: str = "ema",
    **kw: Any,
) -> optax.GradientTransformation:
    """``fo.with_moments(filter=fo.<filter>_filter(**kw), moments=fo.<moments>(b1, b2),
    scale=fo.normalize(eps), mu_dtype=, nu_dtype=)`` followed by
    ``optax.scale_by_learning_rate(lr)``.

    ``b1``, ``b2`` (moment rule), ``eps`` (normalize), ``mu_dtype``, ``nu_dtype``
    (with_moments) and the filter's own arguments are passed on only when the spec names
    them, so the built chain records exactly what the spec asked for (the defaults are the
    stages' own: 0.9, 0.999, 1e-8, None).
    """
    rule_kw = {k: kw.pop(k) for k in ("b1", "b2") if k in kw}
    scale_kw = {k: kw.pop(k) for k in ("eps",) if k in kw}
    dtype_kw = {k: kw.pop(k) for k in ("mu_dtype", "nu_dtype") if k in kw}
    filter_kw = kw
    filters = {
        "kalman": "kalman_filter",
        "spam": "spam_filter",
        "zscore": "zscore_filter",
        "soft_clip": "soft_clip_filter",
        "identity": "identity_filter",
    }
    if filter not in filters:
        raise ValueError(f"staged: unknown filter {filter!r}; valid: {sorted(filters)}")
    if moments not in ("ema", "belief"):
        raise ValueError(f"staged: unknown moments {moments!r}; valid: ['belief', 'ema']")
    filt_fn = getattr(fo, filters[filter])
    if stats and "stats" in inspect.signature(filt_fn).parameters:
        filter_kw = {"stats": True, **filter_kw}
    filt = _checked_call(filt_fn, f"fo.{filters[filter]}", **filter_kw)
    stage = fo.with_moments(
        filter=filt,
        moments=getattr(fo, moments)(**rule_kw),
        scale=fo.normalize(**scale_kw),
        **dtype_kw,
    )
    return optax.chain(stage, optax.scale_by_learning_rate(lr))


def hidden_matrices(params: Any, labels: Any = None) -> Any:
    """``optax.contrib.muon``'s ``muon_weight_dimension_numbers`` for the hidden matrices only.

    The same leaves and axes as ``fo.muon`` routes with the same ``labels`` (``fo.muon_specs``:
    embeddings, positions, heads and vectors go to Adam), in optax's terms, so both Muons
    orthogonalize the same matrices, as optax's documentation advises (Jordan et al. 2024,
    "Muon: an optimizer for hidden layers").
    """
    dn = optax.contrib.MuonDimensionNumbers
    return jax.tree.map(
        lambda s: None if s is None else dn(s.reduction_axes, s.output_axes),
        fo.muon_specs(params, labels=labels),
        is_leaf=lambda s: s is None or isinstance(s, fo.MatrixSpec),
    )


def _optax_muon(lr: Any, labels: Any = None, **kw: Any) -> optax.GradientTransformation:
    """``optax.contrib.muon`` on the hidden matrices only (:func:`hidden_matrices`)."""
    return optax.contrib.muon(
        lr, muon_weight_dimension_numbers=lambda p: hidden_matrices(p, labels), **kw
    )


_ADAM = {"b1": 0.9, "b2": 0.999, "eps": 1e-8}
_FILTER = {"eta": 1.0, "gamma": 10.0, "warmup": 20, "kappa": 1e-2}
# Storage dtypes of the moments, as strings: filtered_adam(mu_dtype='bfloat16').
_DTYPES = {"mu_dtype": None, "nu_dtype": None}

REGISTRY: dict[str, Entry] = {
    "sgd": Entry(
        "base",
        lambda lr, **k: optax.sgd(lr, **k),
        {"momentum": 0.9, "nesterov": False},
        family="sgd",
        doc="optax.sgd (heavy-ball momentum 0.9 by default)",
    ),
    "adam": Entry("base", lambda lr, **k: optax.adam(lr, **k), dict(_ADAM), doc="optax.adam"),
    "adamw": Entry(
        "base",
        lambda lr, **k: optax.adamw(lr, **k),
        {**_ADAM, "weight_decay": 1e-4},
        doc="optax.adamw",
    ),
    "rmsprop": Entry(
        "base",
        lambda lr, **k: optax.rmsprop(lr, **k),
        {"decay": 0.9, "eps": 1e-8, "momentum": None},
        family="rmsprop",
        doc="optax.rmsprop",
    ),
    "adabelief": Entry(
        "base",
        lambda lr, **k: optax.adabelief(lr, **k),
        {"b1": 0.9, "b2": 0.999, "eps": 1e-16, "eps_root": 1e-16},
        doc="optax.adabelief",
    ),
    "adopt": Entry(
        "base",
        lambda lr, **k: optax.contrib.adopt(lr, **k),
        {"b1": 0.9, "b2": 0.9999, "eps": 1e-6},
        doc="optax.contrib.adopt",
    ),
    "optax_muon": Entry(
        "base",
        _optax_muon,
        {
            "beta": 0.95,
            "weight_decay": 0.0,
            "ns_steps": 5,
            "adam_b2": 0.999,
            "adam_weight_decay": 0.0,
        },
        family="muon",
        doc="optax.contrib.muon on the hidden matrices only "
        "(muon_weight_dimension_numbers = fo.muon's routing)",
    ),
    "filtered_adam": Entry(
        "base",
        _filtered("filtered_adam"),
        {**_ADAM, **_FILTER, **_DTYPES},
        uses_filter=True,
        doc="fo.filtered_adam",
    ),
    "filtered_adamw": Entry(
        "base",
        _filtered("filtered_adamw"),
        {**_ADAM, **_FILTER, "weight_decay": 1e-4, **_DTYPES},
        uses_filter=True,
        doc="fo.filtered_adamw",
    ),
    "muon": Entry(
        "base",
        _fo_plain("muon"),
        None,
        family="adam",
        doc="fo.muon (hidden matrices → Muon, the rest → AdamW)",
    ),
    "staged": Entry(
        "base",
        _staged,
        None,
        uses_filter=True,
        doc="fo.with_moments(filter=…, moments=…, scale=normalize) + lr",
    ),
    "fo_adam": Entry("base", _fo_plain("adam"), None, doc="fo.adam"),
    "fo_sgd": Entry("base", _fo_plain("sgd"), None, family="sgd", doc="fo.sgd"),
    "clip": Entry(
        "modifier",
        lambda max_norm: optax.clip_by_global_norm(max_norm),
        {"max_norm": 1.0},
        doc="optax.clip_by_global_norm before the optimizer",
    ),
    "clip_value": Entry(
        "modifier",
        lambda max_delta: optax.clip(max_delta),
        {"max_delta": 1.0},
        doc="optax.clip (element-wise) before the optimizer",
    ),
}


@dataclass(frozen=True)
class Term:
    """One ``name(args)`` term of a spec, with keyword arguments resolved."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    def canonical(self) -> str:
        """``name`` or ``name(k=v, ...)`` with only the given (non-default) arguments."""
        if not self.kwargs:
            return self.name
        return f"{self.name}({', '.join(f'{k}={_fmt(v)}' for k, v in self.kwargs)})"


@dataclass(frozen=True)
class OptSpec:
    """A parsed optimizer spec: a base term and gradient modifiers applied before it."""

    base: Term
    modifiers: tuple[Term, ...] = field(default=())

    @property
    def text(self) -> str:
        """Canonical text; equal specs have equal text."""
        return "+".join([self.base.canonical()] + [m.canonical() for m in self.modifiers])

    @property
    def entry(self) -> Entry:
        """Registry entry of the base optimizer."""
        return REGISTRY[self.base.name]

    @property
    def family(self) -> str:
        """Learning-rate family of the base optimizer."""
        return self.entry.family

    @property
    def uses_filter(self) -> bool:
        """Whether the base optimizer contains a gradient filter (stats are logged)."""
        return self.entry.uses_filter

    def __str__(self) -> str:
        return self.text


def _fmt(v: Any) -> str:
    """Literal formatting used in canonical spec text."""
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    return repr(v)


def valid_names(kind: str | None = None) -> list[str]:
    """Sorted registry names, optionally only bases or only modifiers."""
    return sorted(n for n, e in REGISTRY.items() if kind is None or e.kind == kind)


def _literal(node: ast.AST, where: str) -> Any:
    """Evaluate a literal argument; ``inf`` / ``-inf`` are accepted as names."""
    if isinstance(node, ast.Name) and node.id == "inf":
        return INF
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Name)
        and node.operand.id == "inf"
    ):
        return -INF
    try:
        return ast.literal_eval(node)
    except ValueError as e:
        raise ValueError(f"{where}: arguments must be literals, got {ast.unparse(node)!r}") from e


def _flatten_sum(node: ast.AST) -> list[ast.AST]:
    """``a + b + c`` → ``[a, b, c]``."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _flatten_sum(node.left) + _flatten_sum(node.right)
    return [node]


def _parse_term(node: ast.AST, text: str) -> Term:
    """Turn one AST term into a :class:`Term`, validating name and arguments."""
    if isinstance(node, ast.Name):
        name, args, keywords = node.id, [], []
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name, args, keywords = node.func.id, node.args, node.keywords
    else:
        raise ValueError(
            f"bad optimizer spec {text!r}: expected name or name(args), got "
            f"{ast.unparse(node)!r}; valid names: {valid_names()}"
        )
    if name not in REGISTRY:
        raise ValueError(
            f"unknown optimizer {name!r} in spec {text!r}; valid bases: {valid_names('base')}; "
            f"valid modifiers: {valid_names('modifier')}"
        )
    entry = REGISTRY[name]
    where = f"{name} in spec {text!r}"
    kw: dict[str, Any] = {}
    if args:
        if entry.params is None:
            raise ValueError(f"{where}: use keyword arguments only")
        order = list(entry.params)
        if len(args) > len(order):
            raise ValueError(f"{where}: too many positional arguments; parameters: {order}")
        for pname, a in zip(order, args, strict=False):
            kw[pname] = _literal(a, where)
    for k in keywords:
        if k.arg is None:
            raise ValueError(f"{where}: **kwargs are not allowed")
        if entry.params is not None and k.arg not in entry.params:
            raise ValueError(
                f"{where}: unknown argument {k.arg!r}; valid arguments: {list(entry.params)}"
            )
        if k.arg in kw:
            raise ValueError(f"{where}: argument {k.arg!r} given twice")
        kw[k.arg] = _literal(k.value, where)
    if entry.params is not None and entry.kind == "modifier":  # modifiers: always explicit
        items = tuple((k, kw.get(k, d)) for k, d in entry.params.items())
    elif entry.params is not None:  # bases: drop defaults and order canonically
        items = tuple((k, kw[k]) for k in entry.params if k in kw and kw[k] != entry.params[k])
    else:
        items = tuple(sorted(kw.items()))
    return Term(name, items)


def parse_spec(text: str) -> OptSpec:
    """Parse a spec string into an :class:`OptSpec` (raises ``ValueError`` when malformed).

    >>> parse_spec("adam+clip(1.0)").text
    'adam+clip(max_norm=1.0)'
    >>> parse_spec("filtered_adam(gamma=inf)").text
    'filtered_adam(gamma=inf)'
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty optimizer spec; valid names: {valid_names()}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(
            f"cannot parse optimizer spec {text!r} ({e.msg}); valid names: {valid_names()}"
        ) from e
    terms = [_parse_term(n, text) for n in _flatten_sum(tree.body)]
    base, mods = terms[0], terms[1:]
    if REGISTRY[base.name].kind != "base":
        raise ValueError(
            f"spec {text!r} must start with an optimizer; valid bases: {valid_names('base')}"
        )
    for m in mods:
        if REGISTRY[m.name].kind != "modifier":
            raise ValueError(
                f"spec {text!r}: {m.name!r} after '+' must be a modifier; "
                f"valid modifiers: {valid_names('modifier')}"
            )
    return OptSpec(base, tuple(mods))


# Bases that route parameters between Muon and AdamW, and so take a routing rule.
ROUTED_BASES = ("muon", "optax_muon")


def build(
    spec: OptSpec | str, learning_rate: Any, *, stats: bool = True, routing: Any = None
) -> optax.GradientTransformation:
    """Build the optax transformation for ``spec`` (``learning_rate`` may be a traced scalar).

    ``stats=False`` builds filtered optimizers without their statistics buffers. ``routing``
    (a ``labels=`` rule, e.g. ``fo.trace_routing(loss, params, batch)``) decides which
    parameters the Muon bases send to Muon; None keeps fo.muon's name presets.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    mods = []
    for m in spec.modifiers:
        entry = REGISTRY[m.name]
        mods.append(entry.build(**{**(entry.params or {}), **dict(m.kwargs)}))
    # The registry's defaults, not the target's: "sgd" is heavy-ball SGD with momentum 0.9
    # even though optax.sgd's own default is no momentum.
    kwargs = {**(spec.entry.params or {}), **dict(spec.base.kwargs)}
    if spec.uses_filter:
        kwargs["stats"] = stats
    if routing is not None and spec.base.name in ROUTED_BASES:
        kwargs["labels"] = routing
    base = spec.entry.build(learning_rate, **kwargs)
    return optax.chain(*mods, base) if mods else base


def check_available(spec: OptSpec | str) -> str | None:
    """``None`` if ``spec`` can be built now, else the reason it cannot."""
    try:
        build(spec, 1e-3)
    except AttributeError as e:  # the library lacks a name the spec needs
        return str(e)
    return None


# ----------------------------------------------------------------------------- description → spec
#
# ``fo.describe(build(spec, lr))`` lists the built chain's stages; the readers below turn such
# a description back into spec text. Each reader only proposes a candidate; a candidate is
# accepted when building it gives the same description (learning rate and ``stats`` aside),
# so a reader never has to check the whole structure itself.

# fo aliases that are registry bases, by the name their description carries.
_FO_BASES = {
    "fo.filtered_adam": "filtered_adam",
    "fo.filtered_adamw": "filtered_adamw",
    "fo.muon": "muon",
    "fo.adam": "fo_adam",
    "fo.sgd": "fo_sgd",
}
_STAGED_FILTERS = {
    "fo.kalman_filter": "kalman",
    "fo.spam_filter": "spam",
    "fo.zscore_filter": "zscore",
    "fo.soft_clip_filter": "soft_clip",
    "fo.identity_filter": "identity",
}
_MODIFIERS = {
    "optax.clip_by_global_norm": ("clip", "max_norm"),
    "optax.clip": ("clip_value", "max_delta"),
}
_NOT_SPEC = ("learning_rate", "stats")  # set by build(), not by the spec


def _hyper(desc: Any, stage: str, *names: str) -> dict[str, Any]:
    found = desc.find(stage)
    if found is None:
        raise LookupError(stage)
    hp = dict(found.hyperparams)
    return {n: hp[n] for n in names}


def _given(desc: Any, drop: tuple[str, ...] = _NOT_SPEC) -> dict[str, Any]:
    """The arguments the caller passed to one of our constructors."""
    hp = dict(desc.hyperparams)
    return {k: hp[k] for k in desc.given or () if k not in drop}


def _momentum(desc: Any) -> dict[str, Any]:
    trace = desc.find("optax.trace")
    if trace is None:
        return {"momentum": None}
    hp = dict(trace.hyperparams)
    return {"momentum": hp["decay"], "nesterov": hp["nesterov"]}


_OPTAX_READERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "sgd": _momentum,
    "adam": lambda d: _hyper(d, "optax.scale_by_adam", "b1", "b2", "eps"),
    "adamw": lambda d: {
        **_hyper(d, "optax.scale_by_adam", "b1", "b2", "eps"),
        **_hyper(d, "optax.add_decayed_weights", "weight_decay"),
    },
    "rmsprop": lambda d: {
        **_hyper(d, "optax.scale_by_rms", "decay", "eps"),
        "momentum": _momentum(d)["momentum"],
    },
    "adabelief": lambda d: _hyper(d, "optax.scale_by_belief", "b1", "b2", "eps", "eps_root"),
    "adopt": lambda d: _hyper(d, "optax.contrib.scale_by_adopt", "b1", "b2", "eps"),
    "optax_muon": lambda d: _optax_muon_kwargs(d),
}


def _optax_muon_kwargs(desc: Any) -> dict[str, Any]:
    """``optax_muon(...)`` arguments from ``optax.partition(muon=..., adam=...)``."""
    parts = dict(desc.children)
    muon, adam = parts["muon"], parts["adam"]
    return {
        **_hyper(muon, "optax.contrib.scale_by_muon", "beta", "ns_steps"),
        **_hyper(muon, "optax.add_decayed_weights", "weight_decay"),
        "adam_b2": _hyper(adam, "optax.scale_by_adam", "b2")["b2"],
        "adam_weight_decay": _hyper(adam, "optax.add_decayed_weights", "weight_decay")[
            "weight_decay"
        ],
    }


def _staged_kwargs(desc: Any) -> dict[str, Any]:
    """``staged(...)`` arguments from ``chain(fo.with_moments(...), lr)``."""
    if desc.name != "optax.chain" or not desc.children:
        raise LookupError("staged")
    stage = desc.children[0][1]
    parts = dict(stage.children)
    if stage.name != "fo.with_moments" or parts["scale"].name != "fo.normalize":
        raise LookupError("staged")
    kw: dict[str, Any] = {}
    flt, rule = _STAGED_FILTERS[parts["filter"].name], parts["moments"].name.removeprefix("fo.")
    if flt != "kalman":
        kw["filter"] = flt
    if rule != "ema":
        kw["moments"] = rule
    kw.update(_given(parts["filter"]))
    kw.update(_given(parts["moments"]))
    kw.update(_given(parts["scale"]))
    kw.update({k: v for k, v in stage.hyperparams if v is not None})  # mu_dtype, nu_dtype
    return kw


def _candidates(desc: Any) -> list[str]:
    """Spec texts (not yet checked) that may build the optimizer ``desc`` describes."""
    out = []
    if desc.name in _FO_BASES:
        name = _FO_BASES[desc.name]
        if REGISTRY[name].params is None:  # only what was passed (canonical text keeps it)
            kw = _given(desc)
        else:  # everything known to the spec; parse_spec drops the defaults
            hp = dict(desc.hyperparams)
            kw = {k: hp[k] for k in REGISTRY[name].params if k in hp}
        out.append(_term_text(name, kw))
    for name, reader in [("staged", _staged_kwargs), *_OPTAX_READERS.items()]:
        try:
            out.append(_term_text(name, reader(desc)))
        except (LookupError, TypeError):
            continue
    return out


def _term_text(name: str, kw: dict[str, Any]) -> str:
    return f"{name}({', '.join(f'{k}={_fmt(v)}' for k, v in sorted(kw.items()))})"


def _comparable(desc: Any) -> Any:
    """``desc`` without what a spec does not fix: the learning rate and ``stats``."""
    if desc.name == "optax.scale_by_schedule" or (
        desc.name == "optax.scale"
        and not (isinstance(s := dict(desc.hyperparams).get("step_size"), float) and s > 0)
    ):
        return fo.Description("learning rate")
    return fo.Description(
        desc.name,
        tuple((k, v) for k, v in desc.hyperparams if k not in _NOT_SPEC),
        tuple((k, _comparable(c)) for k, c in desc.children),
    )


def spec_from_description(desc: Any) -> str:
    """The canonical spec text whose :func:`build` gives the optimizer ``desc`` describes.

    ``desc`` is ``fo.describe(tx)`` of a built chain, so this inverts :func:`build`:
    ``spec_from_description(fo.describe(build(s, lr))) == parse_spec(s).text``. The
    learning rate and ``stats`` are not part of a spec and are ignored.

    >>> import filtered_optax as fo
    >>> spec_from_description(fo.describe(build("filtered_adam(gamma=inf)+clip(0.5)", 1e-3)))
    'filtered_adam(gamma=inf)+clip(max_norm=0.5)'

    Raises:
      ValueError: when no spec builds that optimizer (say, a hand-written chain).
    """
    target = _comparable(desc)
    mods: list[str] = []
    bases = [desc]
    if desc.name == "optax.chain" and len(desc.children) > 1:
        *front, (_, last) = desc.children
        if all(c.name in _MODIFIERS for _, c in front):
            for _, c in front:
                name, arg = _MODIFIERS[c.name]
                mods.append(f"{name}({arg}={_fmt(dict(c.hyperparams)[arg])})")
            bases.append(last)
    for base in bases:
        chosen = mods if base is not desc else []
        for text in _candidates(base):
            try:
                spec = parse_spec("+".join([text, *chosen]))
                rebuilt = fo.describe(build(spec, 1e-3))
            except (AttributeError, ValueError, TypeError):
                continue
            if _comparable(rebuilt) == target:
                return spec.text
    raise ValueError(
        f"no optimizer spec builds this chain (top stage {desc.name}); valid bases: "
        f"{valid_names('base')}"
    )


def filter_stats(opt_state: Any) -> dict[str, Any] | None:
    """``fo.filter_stats(opt_state)``: the filter's spike fraction and mean gain."""
    return fo.filter_stats(opt_state)
