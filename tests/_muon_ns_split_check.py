"""Run by tests/unit/test_muon_ns_split.py in a subprocess: ``fo.muon`` with distributed
Newton–Schulz on 8 CPU devices.

On a 2 x 4 ("data", "fsdp") mesh, in four modes (Auto or Explicit axes, with or without
``jax.set_mesh``), prints one JSON line per case:

* ``cost``: the whole jitted ``tx.update`` for eight 512² matrices, replicated or FSDP
  (first matrix axis over "fsdp"), compiled only: per-device FLOPs (XLA cost analysis)
  relative to the same update on one device, the big dots' shapes and counts, collectives;
* ``correctness``: two steps of ``tx.update`` on a mixed tree (same-shape matrices, a tall
  one that joins its wide twins, a declared stack, a lone matrix, a bias) against one
  device, and whether the updates kept the parameters' shardings;
* ``repro``: the issue's snippet (a replicated 64² matrix on an Explicit mesh).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import contextlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import filtered_optax as fo  # noqa: E402
from benchmarks.ns_scaling import collective_bytes, compiled_flops, dot_shapes  # noqa: E402

MODES = ("auto", "auto_set_mesh", "explicit", "explicit_set_mesh")
BIG, COUNT = 512, 8  # the cost case: eight 512² matrices
COST_SPECS = {"replicated": P(), "fsdp": P("fsdp", None)}
# The mixed tree of the correctness case and its shardings per layout.
SHAPES = {
    "a0": (64, 128),
    "a1": (64, 128),
    "a2": (64, 128),
    "tall": (128, 64),
    "lone": (32, 96),
    "layers": {"mlp": (4, 64, 64)},
    "bias": (64,),
}
LAYOUTS = {
    "replicated": {},
    "fsdp": {
        "a0": P("fsdp", None),
        "a1": P("fsdp", None),
        "a2": P("fsdp", None),
        "tall": P("fsdp", None),
        "lone": P("fsdp", None),
        "layers": {"mlp": P(None, "fsdp", None)},
    },
    "stacked_layers": {
        "layers": {"mlp": P("fsdp", None, None)},
        "a0": P(None, "fsdp"),
        "tall": P("data", None),
    },
}


def mesh_of(mode: str):
    kind = AxisType.Explicit if mode.startswith("explicit") else AxisType.Auto
    return jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(kind,) * 2)


def context(mode: str, mesh):
    return jax.set_mesh(mesh) if mode.endswith("set_mesh") else contextlib.nullcontext()


def is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def host_tree(shapes, seed: int):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: rng.standard_normal(s).astype(np.float32), shapes, is_leaf=is_shape
    )


def shardings(mesh, shapes, specs):
    """A NamedSharding per leaf: the layout's spec where given, replicated elsewhere."""
    flat = dict(jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda s: isinstance(s, P))[0])
    return jax.tree_util.tree_map_with_path(
        lambda path, _: NamedSharding(mesh, flat.get(path, P())), shapes, is_leaf=is_shape
    )


def big_dots(hlo: str) -> list[tuple[int, ...]]:
    """Shapes of the dots of Newton–Schulz size (both matrix sides >= BIG / 2)."""
    return [d for d in dot_shapes(hlo) if len(d) >= 2 and min(d[-2:]) >= BIG // 2]


_SINGLE: dict[str, object] = {}


def single_device(tx, params):
    """The update compiled on one device (the same program for every ``ns_split_axes``)."""
    if "compiled" not in _SINGLE:
        one = jax.devices()[0]
        _SINGLE["compiled"] = (
            jax.jit(tx.update)
            .lower(*(jax.device_put(t, one) for t in (params, tx.init(params), params)))
            .compile()
        )
    return _SINGLE["compiled"]


def cost(mode: str, layout: str, split) -> dict:
    """Compiles ``jit(tx.update)`` on the mesh and on one device; compares per-device FLOPs."""
    mesh = mesh_of(mode)
    shapes = {f"w{i}": (BIG, BIG) for i in range(COUNT)}
    tx = fo.muon(1e-3, ns_split_axes=split)
    params = host_tree(shapes, 0)
    single = single_device(tx, params)
    with context(mode, mesh):
        sh = jax.tree.map(lambda _: NamedSharding(mesh, COST_SPECS[layout]), params)
        p = jax.device_put(params, sh)
        state = jax.jit(tx.init, out_shardings=fo.state_shardings(tx, p))(p)
        compiled = jax.jit(tx.update).lower(p, state, p).compile()
    hlo = compiled.as_text()
    return {
        "kind": "cost",
        "mode": mode,
        "layout": layout,
        "split": str(split),
        "flops_ratio": compiled_flops(compiled) / compiled_flops(single),
        "dots": sorted(set(big_dots(hlo))),
        "dot_count": len(big_dots(hlo)),
        "single_dot_count": len(big_dots(single.as_text())),
        "collectives": collective_bytes(hlo),
    }


def run_steps(tx, params, grads, jitted=True):
    state = tx.init(params)
    step = jax.jit(tx.update) if jitted else tx.update
    out = []
    for g in grads:
        u, state = step(g, state, params)
        out.append(u)
    return out


def correctness(mode: str, layout: str, jitted: bool = True) -> dict:
    """Two updates of ``fo.muon`` on the mixed tree, mesh vs one device (eager: no jit)."""
    mesh = mesh_of(mode)
    tx = fo.muon(1e-2, stacked=("layers",))
    params = host_tree(SHAPES, 0)
    grads = [host_tree(SHAPES, 1 + i) for i in range(2)]
    reference = run_steps(tx, params, grads)
    with context(mode, mesh):
        sh = shardings(mesh, SHAPES, LAYOUTS[layout])
        updates = run_steps(
            tx, jax.device_put(params, sh), [jax.device_put(g, sh) for g in grads], jitted
        )
    err = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for u, r in zip(updates, reference)
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(r))
    )
    kept = all(
        a.sharding.is_equivalent_to(s, a.ndim)
        for a, s in zip(jax.tree.leaves(updates[-1]), jax.tree.leaves(sh))
    )
    return {
        "kind": "correctness",
        "mode": mode if jitted else f"{mode}_eager",
        "layout": layout,
        "err": err,
        "kept": kept,
    }


def repro() -> dict:
    """The issue's snippet: replicated params on an Explicit mesh, jitted update."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))

    def put(t):
        return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P())), t)

    params = {"w": jnp.zeros((64, 64))}
    grads = {"w": jnp.asarray(host_tree((64, 64), 3))}
    tx = fo.muon(1e-3)
    ref, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    got, _ = jax.jit(tx.update)(put(grads), put(tx.init(params)), put(params))
    zero, _ = jax.jit(tx.update)(put(params), put(tx.init(params)), put(params))
    return {
        "kind": "repro",
        "err": float(jnp.max(jnp.abs(got["w"] - ref["w"]))),
        "zero_finite": bool(jnp.all(jnp.isfinite(zero["w"]))),
        "kept": got["w"].sharding.is_equivalent_to(NamedSharding(mesh, P()), 2),
    }


def bad_axis() -> dict:
    """``ns_split_axes`` naming an axis the parameters' mesh lacks: the error it raises."""
    mesh = mesh_of("explicit")
    params = jax.device_put(host_tree({"a": (16, 32), "b": (16, 32)}, 0), NamedSharding(mesh, P()))
    tx = fo.muon(1e-3, ns_split_axes=("model",))
    try:
        jax.jit(tx.update)(params, tx.init(params), params)
    except ValueError as e:
        return {"kind": "bad_axis", "error": str(e)}
    return {"kind": "bad_axis", "error": None}


def main() -> None:
    if jax.device_count() != 8:
        raise SystemExit(f"expected 8 devices, got {jax.devices()}")
    print(json.dumps(repro()), flush=True)
    print(json.dumps(bad_axis()), flush=True)
    for mode in MODES:
        for layout in LAYOUTS:
            print(json.dumps(correctness(mode, layout)), flush=True)
    for layout in LAYOUTS:
        print(json.dumps(correctness("auto", layout, jitted=False)), flush=True)
    # Compiling is the slow part: the costs on one mode of each kind (jax.set_mesh does not
    # change the compiled program), controls where they say something.
    for mode in ("auto", "explicit"):
        for layout in COST_SPECS:
            print(json.dumps(cost(mode, layout, "auto")), flush=True)
        print(json.dumps(cost(mode, "replicated", None)), flush=True)
    print(json.dumps(cost("explicit", "fsdp", None)), flush=True)
    print(json.dumps(cost("explicit", "replicated", ("fsdp",))), flush=True)


if __name__ == "__main__":
    main()
