"""Run by tests/unit/test_muon_spine.py in a subprocess: fo.muon on an explicit-axis mesh.

The mesh reaches Muon only through the arrays' own shardings (no ``jax.set_mesh``), and
once more under ``jax.set_mesh``. Prints one JSON line: the largest difference from the
single-device update for each case, and whether each update kept its parameter's sharding.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import filtered_optax as fo  # noqa: E402


def _max_diff(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(x - y)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def main() -> None:
    if jax.device_count() != 8:
        raise SystemExit(f"expected 8 devices, got {jax.devices()}")
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.standard_normal((64, 64)), jnp.float32),
        "v": jnp.asarray(rng.standard_normal((16, 64)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal((64,)), jnp.float32),
    }
    grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), params)
    layouts = {
        "replicated": lambda x: P(),
        "sharded": lambda x: P("data") if x.ndim else P(),
    }
    result = {}
    for filtered in (False, True):
        tx = fo.muon(1e-3, filter_gamma=10.0 if filtered else float("inf"))
        reference, _ = jax.jit(tx.update)(grads, tx.init(params), params)
        for name, layout in layouts.items():

            def put(tree, layout=layout):
                return jax.tree.map(
                    lambda x: jax.device_put(x, NamedSharding(mesh, layout(x))), tree
                )

            p = put(params)
            u, _ = jax.jit(tx.update)(put(grads), put(tx.init(params)), p)
            key = f"{name}{'_filtered' if filtered else ''}"
            result[key] = _max_diff(u, reference)
            result[key + "_kept"] = all(
                a.sharding.is_equivalent_to(b.sharding, a.ndim)
                for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(p), strict=True)
            )
    tx = fo.muon(1e-3)
    reference, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    with jax.set_mesh(mesh):
        put = lambda t: jax.tree.map(lambda x: jax.device_put(x, P("data") if x.ndim else P()), t)  # noqa: E731
        u, _ = jax.jit(tx.update)(put(grads), put(tx.init(params)), put(params))
    result["set_mesh"] = _max_diff(u, reference)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
