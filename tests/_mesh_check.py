"""Run by tests/unit/test_sharding.py in a subprocess: every registry optimizer on 8 devices.

For each optimizer of tests/registry.py, on a 4 x 2 ("data", "model") mesh:

* the state made by ``jax.jit(tx.init, out_shardings=fo.state_shardings(tx, params))`` is
  compared leaf by leaf with optax's own structural recipe (``optax.tree.map_params``) and its
  moments with their parameters' shardings;
* three optimizer steps on fixed gradients run on an Auto mesh, on an Explicit mesh (with and
  without ``jax.set_mesh``) and on one device; the largest update difference is reported
  (or the error, if a mode raises).

Plus a Flax NNX model whose parameters carry ``nnx.with_partitioning`` metadata. Prints one
JSON line per check.
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
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import filtered_optax as fo  # noqa: E402
from tests.registry import OPTIMIZERS  # noqa: E402

STEPS = 3
# Megatron-style: fc1 column-parallel, fc2 and the head row-parallel, some biases split.
SPECS = {
    "fc1": {"kernel": P(None, "model"), "bias": P("model")},
    "fc2": {"kernel": P("model", None), "bias": P()},
    "head": {"kernel": P("data", None), "bias": P()},
}
SHAPES = {
    "fc1": {"kernel": (16, 32), "bias": (32,)},
    "fc2": {"kernel": (32, 32), "bias": (32,)},
    "head": {"kernel": (32, 8), "bias": (8,)},
}


def is_shape(x):
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def host_tree(seed: int):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: rng.standard_normal(s).astype(np.float32), SHAPES, is_leaf=is_shape
    )


def mesh(kind: str):
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind,) * 2)


def run_steps(tx, params, grads, state_sh=None):
    """``STEPS`` jitted updates; returns the updates of every step as numpy."""
    init = jax.jit(tx.init, out_shardings=state_sh) if state_sh is not None else jax.jit(tx.init)
    state = init(params)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, u

    out = []
    for g in grads:
        params, state, u = step(params, state, g)
        out.append(jax.tree.map(np.asarray, u))
    return out, params


def max_diff(a, b) -> float:
    return max(
        float(np.max(np.abs(x - y)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def state_check(name, tx, params, shardings) -> dict:
    """``fo.state_shardings`` against optax's structural recipe, and what the init produced."""
    ours = fo.state_shardings(tx, params)
    replicated = NamedSharding(jax.tree.leaves(shardings)[0].mesh, P())
    recipe = optax.tree.map_params(
        tx,
        lambda _, s: s,
        jax.eval_shape(tx.init, params),
        shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, optax.MaskedNode),
    )
    # By key path: the recipe also puts a sharding where optax.masked left a MaskedNode.
    by_path = dict(jax.tree_util.tree_flatten_with_path(recipe)[0])
    same = all(
        p in by_path and s.is_equivalent_to(by_path[p], 2)
        for p, s in jax.tree_util.tree_flatten_with_path(ours)[0]
    )
    state = jax.jit(tx.init, out_shardings=ours)(params)
    # Every state leaf shaped like a non-replicated parameter must carry a sharded layout.
    sharded_params = {
        (x.shape, x.sharding.spec) for x in jax.tree.leaves(params) if x.sharding.spec != P()
    }
    moments = [
        x
        for x in jax.tree.leaves(state)
        if x.ndim and any(x.shape == shape for shape, _ in sharded_params)
    ]
    sharded_moments = [x for x in moments if not x.sharding.is_fully_replicated]
    # Control: a bare jit(tx.init) does not shard them (zeros do not depend on the params).
    bare = [
        x
        for x in jax.tree.leaves(jax.jit(tx.init)(params))
        if x.ndim and not x.sharding.is_fully_replicated
    ]
    kept = all(
        a.sharding.is_equivalent_to(b, a.ndim)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ours), strict=True)
    )
    return {
        "kind": "state",
        "optimizer": name,
        "same_as_recipe": same,
        "kept": kept,
        "moments": len(moments),
        "sharded_moments": len(sharded_moments),
        "bare_sharded_moments": len(bare),
        "scalars_replicated": all(
            x.sharding.is_fully_replicated for x in jax.tree.leaves(state) if x.ndim == 0
        ),
    }


def mode_check(name, make, kwargs, reference, params_host, grads_host, mode) -> dict:
    kind = AxisType.Auto if mode == "auto" else AxisType.Explicit
    m = mesh(kind)
    sh = jax.tree.map(lambda s: NamedSharding(m, s), SPECS)
    ctx = jax.set_mesh(m) if mode == "explicit_set_mesh" else contextlib.nullcontext()
    try:
        with ctx:
            tx = make(1e-2, **kwargs)
            params = jax.device_put(params_host, sh)
            grads = [jax.device_put(g, sh) for g in grads_host]
            updates, new_params = run_steps(tx, params, grads, fo.state_shardings(tx, params))
        kept = all(
            a.sharding.is_equivalent_to(b, a.ndim)
            for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(sh), strict=True)
        )
        err = max(max_diff(u, r) for u, r in zip(updates, reference))
        return {"kind": "mode", "optimizer": name, "mode": mode, "err": err, "kept": kept}
    except Exception as e:  # reported, the test decides
        return {
            "kind": "mode",
            "optimizer": name,
            "mode": mode,
            "error": f"{type(e).__name__}: {str(e)[:500]}",
        }


class Net(nnx.Module):
    """A two-layer MLP whose parameters declare their own shardings."""

    def __init__(self, rngs: nnx.Rngs):
        part = nnx.with_partitioning
        init = nnx.initializers.lecun_normal()
        self.fc1 = nnx.Linear(
            16,
            32,
            rngs=rngs,
            kernel_init=part(init, (None, "model")),
            bias_init=part(nnx.initializers.zeros_init(), ("model",)),
        )
        self.fc2 = nnx.Linear(32, 8, rngs=rngs, kernel_init=part(init, ("model", None)))

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))


def nnx_check() -> dict:
    """Parameters created sharded from their metadata; the optimizer state follows them."""
    m = mesh(AxisType.Auto)

    @nnx.jit
    def create():
        model = Net(nnx.Rngs(0))
        state = nnx.state(model)
        nnx.update(model, jax.lax.with_sharding_constraint(state, nnx.get_partition_spec(state)))
        return model

    with jax.set_mesh(m):
        model = create()
        params = nnx.state(model, nnx.Param)
        tx = fo.filtered_adam(1e-2)
        state_sh = fo.state_shardings(tx, params)
        opt_state = jax.jit(tx.init, out_shardings=state_sh)(params)
        graphdef, _ = nnx.split(model, nnx.Param)
        param_sh = jax.tree.map(lambda x: x.sharding, params)
        x = jax.device_put(np.ones((8, 16), np.float32), NamedSharding(m, P("data", None)))

        @jax.jit
        def train_step(params, opt_state, x):
            def loss(p):
                return jnp.mean(nnx.merge(graphdef, p)(x) ** 2)

            grads = jax.grad(loss)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        step = jax.jit(train_step, out_shardings=(param_sh, state_sh))
        params, opt_state = step(params, opt_state, x)
    pairs = [(opt_state[0].mu, params), (opt_state[0].nu, params)]
    specs = sorted({str(x.sharding.spec) for x in jax.tree.leaves(params)})
    like = all(
        a.sharding.is_equivalent_to(b.sharding, a.ndim)
        for mom, p in pairs
        for a, b in zip(jax.tree.leaves(mom), jax.tree.leaves(p), strict=True)
    )
    return {
        "kind": "nnx",
        "param_specs": specs,
        "moments_like_params": like,
        "count_replicated": opt_state[0].count.sharding.is_fully_replicated,
    }


def main() -> None:
    if jax.device_count() != 8:
        raise SystemExit(f"expected 8 devices, got {jax.devices()}")
    params_host = host_tree(0)
    grads_host = [host_tree(1 + i) for i in range(STEPS)]
    auto = mesh(AxisType.Auto)
    auto_sh = jax.tree.map(lambda s: NamedSharding(auto, s), SPECS)
    for name, make, kwargs in OPTIMIZERS:
        params = jax.device_put(params_host, auto_sh)
        print(json.dumps(state_check(name, make(1e-2, **kwargs), params, auto_sh)), flush=True)
        one = jax.devices()[0]
        reference, _ = run_steps(
            make(1e-2, **kwargs),
            jax.device_put(params_host, one),
            [jax.device_put(g, one) for g in grads_host],
        )
        for mode in ("auto", "explicit", "explicit_set_mesh"):
            row = mode_check(name, make, kwargs, reference, params_host, grads_host, mode)
            print(json.dumps(row), flush=True)
    print(json.dumps(nnx_check()), flush=True)


if __name__ == "__main__":
    main()
