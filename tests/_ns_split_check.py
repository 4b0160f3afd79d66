"""Run by tests/unit/test_ns_split.py in a subprocess: distributed Newton–Schulz on 8 CPU devices.

Prints one JSON line per case with the error against the single-device result, whether the
result kept its sharding, the per-device FLOPs of the compiled program relative to one device,
the collectives found in the compiled HLO and the shapes of its dots.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from benchmarks.ns_scaling import collective_bytes, compiled_flops, dot_shapes  # noqa: E402
from filtered_optax._ns_split import orthogonalize_stack  # noqa: E402
from filtered_optax._orthogonal import newton_schulz  # noqa: E402

MODES = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}
# (name, stack shape, spec on the ("data", "fsdp") = (2, 4) mesh)
LAYOUTS = [
    ("replicated", (8, 64, 128), P()),
    ("fsdp", (8, 64, 128), P(None, "fsdp", None)),
    ("fsdp_padded", (5, 128, 64), P(None, "fsdp", None)),
    ("stacked_layers", (8, 64, 128), P(("data", "fsdp"), None, None)),
    ("stacked_layers_fsdp", (4, 128, 64), P("data", "fsdp", None)),
]
BIG = (8, 512, 512)  # the cost case: 8 equal 512² matrices


def mesh_of(mode: str):
    return jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(MODES[mode],) * 2)


def host(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def correctness(mode: str, name: str, shape, spec) -> dict:
    """Eager and jitted runs against the single-device result; the sharding they keep."""
    mesh = mesh_of(mode)
    sharding = NamedSharding(mesh, spec)
    x_host = host(shape)
    ref = np.asarray(jax.jit(newton_schulz)(x_host))
    x = jax.device_put(x_host, sharding)
    eager = orthogonalize_stack(x, newton_schulz)
    jitted = jax.jit(lambda s: orthogonalize_stack(s, newton_schulz, out_sharding=sharding))(x)
    err = max(float(np.max(np.abs(np.asarray(y) - ref))) for y in (eager, jitted))
    kept = all(y.sharding.is_equivalent_to(sharding, 3) for y in (eager, jitted))
    # Under jit on an Auto mesh only out_sharding tells the stack's spec (as a caller that
    # knows its parameters' shardings passes it); the same call on an Explicit mesh.
    hlo = jax.jit(lambda s: orthogonalize_stack(s, newton_schulz, out_sharding=sharding)).lower(x)
    hlo = hlo.compile().as_text()
    return {
        "kind": "correctness",
        "mode": mode,
        "layout": name,
        "err": err,
        "kept": kept,
        "collectives": collective_bytes(hlo),
        "full_matrix_moved": full_matrix_moved(hlo, shape),
    }


def full_matrix_moved(hlo: str, shape) -> bool:
    """Whether any collective in ``hlo`` produces a whole (a, b) matrix of the stack."""
    a, b = shape[1:]
    for line in hlo.splitlines():
        if any(
            f" {c}(" in line or f" {c}-start(" in line
            for c in ("all-gather", "all-to-all", "all-reduce", "collective-permute")
        ):
            head = line.split("=", 1)[1].split(" all-")[0].split(" collective-")[0]
            if f",{a},{b}]" in head:
                return True
    return False


def cost(mode: str, spec, split="auto") -> dict:
    """Per-device FLOPs relative to one device, the dot shapes, the collectives (compile only)."""
    mesh = mesh_of(mode)
    x = jax.device_put(np.zeros(BIG, np.float32), NamedSharding(mesh, spec))
    compiled = jax.jit(lambda s: orthogonalize_stack(s, newton_schulz, split=split)).lower(x)
    compiled = compiled.compile()
    single = (
        jax.jit(newton_schulz)
        .lower(jax.device_put(np.zeros(BIG, np.float32), jax.devices()[0]))
        .compile()
    )
    hlo = compiled.as_text()
    return {
        "kind": "cost",
        "mode": mode,
        "spec": str(spec),
        "split": str(split),
        "flops_ratio": compiled_flops(compiled) / compiled_flops(single),
        "dots": sorted(set(dot_shapes(hlo))),
        "single_dots": sorted(set(dot_shapes(single.as_text()))),
        "collectives": collective_bytes(hlo),
        "full_matrix_moved": full_matrix_moved(hlo, BIG),
    }


def main() -> None:
    if jax.device_count() != 8:
        raise SystemExit(f"expected 8 devices, got {jax.devices()}")
    for mode in MODES:
        for name, shape, spec in LAYOUTS:
            print(json.dumps(correctness(mode, name, shape, spec)), flush=True)
        for spec in (P(), P(None, "fsdp", None)):
            print(json.dumps(cost(mode, spec)), flush=True)
        print(json.dumps(cost(mode, P(), split=("fsdp",))), flush=True)
        print(json.dumps(cost(mode, P(None, "fsdp", None), split=None)), flush=True)


if __name__ == "__main__":
    main()
