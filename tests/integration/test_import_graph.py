"""The package's architecture, checked on its source: imports run one way, down the layers,
none inside a function, and every function body stays short."""

from __future__ import annotations

import ast
import functools
import gc
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "filtered_optax"

# Lower layers first; a module may import only from its own layer or below, and the graph
# must have no cycle (which catches two modules of one layer importing each other).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_validation", "_record", "_types", "_paths", "_ns_split"),
    ("_filters", "_scaling", "_orthogonal"),
    ("_moments",),
    ("_alias",),
    ("_routing", "_muon", "_trace"),
    ("_monitor", "_describe", "_sharding"),
    ("__init__",),
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
# Longest function body allowed (lines, docstring excluded).
MAX_BODY_LINES = 60


def _parse(source: str, filename: str = "<test>") -> ast.Module:
    """``ast.parse`` with the garbage collector held off.

    On CPython 3.11 a finalizer that runs mid-parse (an earlier test's abandoned coroutine,
    reported through ``traceback``, which itself parses) corrupts ``ast``'s recursion counter
    and the parse fails with "AST constructor recursion depth mismatch". Collecting first and
    pausing collection while parsing keeps finalizers out of the parse.
    """
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        return ast.parse(source, filename)
    finally:
        if was_enabled:
            gc.enable()


@functools.cache
def _modules() -> dict[str, ast.Module]:
    return {p.stem: _parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def _imported(node: ast.AST) -> list[str]:
    """Package modules an import statement names (``filtered_optax._x`` or ``from
    filtered_optax import _x``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
        return []
    out = []
    for name in names:
        parts = name.split(".")
        if parts[0] == "filtered_optax" and len(parts) > 1 and parts[1] in LAYER:
            out.append(parts[1])
    return sorted(set(out))


def _graph() -> dict[str, set[str]]:
    return {
        name: {dep for node in ast.walk(tree) for dep in _imported(node)} - {name}
        for name, tree in _modules().items()
    }


def test_every_module_has_a_layer():
    assert set(_modules()) == set(LAYER), "add new modules to LAYERS"


def test_imports_never_go_up_a_layer():
    upward = [
        f"{name} (layer {LAYER[name]}) imports {dep} (layer {LAYER[dep]})"
        for name, deps in _graph().items()
        for dep in sorted(deps)
        if LAYER[dep] > LAYER[name]
    ]
    assert not upward, upward


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_import_graph_has_no_cycle():
    assert _cycle(_graph()) is None, _cycle(_graph())


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _functions(tree: ast.Module):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_import_inside_a_function():
    found = [
        f"{name}.py:{inner.lineno} in {fn.name}"
        for name, tree in _modules().items()
        for fn in _functions(tree)
        for inner in ast.walk(fn)
        if isinstance(inner, (ast.Import, ast.ImportFrom))
    ]
    assert not found, found


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


def test_every_function_body_is_short():
    long = [
        f"{name}.py:{fn.lineno} {fn.name}: {_body_lines(fn)} lines"
        for name, tree in _modules().items()
        for fn in _functions(tree)
        if _body_lines(fn) > MAX_BODY_LINES
    ]
    assert not long, long


def test_body_length_counts_code_not_the_docstring():
    fn = _parse('def f():\n    """Doc.\n\n    More.\n    """\n    a = 1\n    return a\n').body[0]
    assert _body_lines(fn) == 2
