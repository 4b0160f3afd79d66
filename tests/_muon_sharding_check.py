"""Run by tests/unit/test_muon.py in a subprocess: Muon on 8 simulated CPU devices.

Prints one JSON line with the measured errors, whether shardings were kept, and the
collectives found in the compiled HLO of a step on a stack sharded along its stack axis.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import json  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from filtered_optax._muon import muon  # noqa: E402

COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")


def main() -> None:
    if jax.device_count() != 8:
        raise SystemExit(f"expected 8 devices, got {jax.devices()}")
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    rng = np.random.default_rng(0)

    def arr(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    params = {
        "embed": {"embedding": arr(32, 16)},
        "fc1": {"kernel": arr(16, 64), "bias": arr(64)},
        "fc2": {"kernel": arr(64, 16), "bias": arr(16)},
        "fc3": {"kernel": arr(16, 64)},  # same shape as fc1: batched with it
        "layers": {"mlp": {"kernel": arr(8, 16, 32)}},  # declared stack
        "head": {"kernel": arr(16, 32)},
    }
    specs = {
        "embed": {"embedding": P("data", None)},
        "fc1": {"kernel": P(None, "model"), "bias": P("model")},
        "fc2": {"kernel": P("data", "model"), "bias": P()},
        "fc3": {"kernel": P("model", None)},
        "layers": {"mlp": {"kernel": P(("data", "model"), None, None)}},
        "head": {"kernel": P(None, "data")},
    }
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    grads = [jax.tree.map(lambda x: arr(*x.shape), params) for _ in range(3)]
    tx = muon(0.02, stacked=("layers",))

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    # Reference on one device (no sharding).
    p_ref, s_ref = params, tx.init(params)
    for g in grads:
        p_ref, s_ref = jax.jit(step)(p_ref, s_ref, g)

    p_sh = jax.device_put(params, shardings)
    s_sh = jax.jit(tx.init)(p_sh)
    jstep = jax.jit(step)
    for g in grads:
        p_sh, s_sh = jstep(p_sh, s_sh, jax.device_put(g, shardings))

    err = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_sh), strict=True)
    )
    kept = all(
        a.sharding.is_equivalent_to(b, a.ndim)
        for a, b in zip(jax.tree.leaves(p_sh), jax.tree.leaves(shardings), strict=True)
    )
    # Muon's momentum shards like its parameter (MaskedNode entries hold no leaves).
    mu_sh = s_sh.inner_states["muon"].inner_state[0].mu
    mu_paths = jax.tree_util.tree_flatten_with_path(mu_sh)[0]
    sh_by_path = dict(jax.tree_util.tree_flatten_with_path(shardings)[0])
    mu_kept = len(mu_paths) == 4 and all(  # fc1, fc2, fc3, layers
        m.sharding.is_equivalent_to(sh_by_path[p], m.ndim) for p, m in mu_paths
    )

    # Stacked matrices sharded along the stack axis: NS needs no communication.
    stack_only = {"layers": {"mlp": {"kernel": params["layers"]["mlp"]["kernel"]}}}
    st_sh = {"layers": {"mlp": {"kernel": shardings["layers"]["mlp"]["kernel"]}}}
    p_st = jax.device_put(stack_only, st_sh)
    s_st = jax.jit(tx.init)(p_st)
    g_st = jax.device_put(grads[0]["layers"], st_sh["layers"])
    hlo = jstep.lower(p_st, s_st, {"layers": g_st}).compile().as_text()
    found = sorted({c for c in COLLECTIVES if re.search(rf"\b{c}(-start)?\(", hlo)})
    # Control: the same stack sharded along a matrix axis must communicate, so the HLO
    # check above can see collectives when there are some.
    row_sh = {"layers": {"mlp": {"kernel": NamedSharding(mesh, P(None, ("data", "model")))}}}
    p_row = jax.device_put(stack_only, row_sh)
    hlo_row = (
        jstep.lower(p_row, jax.jit(tx.init)(p_row), jax.device_put({"layers": g_st}, row_sh))
        .compile()
        .as_text()
    )
    control = sorted({c for c in COLLECTIVES if re.search(rf"\b{c}(-start)?\(", hlo_row)})

    # Explicit sharding mode (jax.sharding.AxisType.Explicit): NS must not raise.
    emesh = jax.make_mesh(
        (4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Explicit,) * 2
    )
    with jax.set_mesh(emesh):
        e_sh = jax.tree.map(lambda s: NamedSharding(emesh, s), specs)
        p_ex = jax.device_put(params, e_sh)
        s_ex = jax.jit(tx.init)(p_ex)
        estep = jax.jit(step)
        for g in grads:
            p_ex, s_ex = estep(p_ex, s_ex, jax.device_put(g, e_sh))
    explicit_err = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_ex), strict=True)
    )
    explicit_kept = all(
        a.sharding.is_equivalent_to(b, a.ndim)
        for a, b in zip(jax.tree.leaves(p_ex), jax.tree.leaves(e_sh), strict=True)
    )
    result = dict(err=err, kept=kept, mu_kept=mu_kept, collectives=found, control=control)
    result.update(explicit_err=explicit_err, explicit_kept=explicit_kept)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
