"""Sharded training with filtered_optax on JAX's own engine: a Mesh + NamedSharding.

Trains a small MLP classifier with ``fo.filtered_adam`` and ``fo.muon`` twice: once on a
single device, once with the batch sharded over the ``data`` axis and the weights over the
``model`` axis of a 4 x 2 mesh of 8 devices. Prints one JSON line per optimizer with the
largest loss / parameter difference between the two runs and whether the optimizer state
(mu, nu) is sharded exactly like its parameter.

Run standalone (8 simulated CPU devices are requested before jax is imported)::

    python tests/_sharded_training.py --steps 200

On real accelerators the same script runs unchanged on one host with 8 devices. On several
hosts, start it on every host with ``--distributed`` (which calls
``jax.distributed.initialize()`` first); every host feeds only its own slice of the batch
through ``jax.make_array_from_process_local_data``. ``tests/integration/test_sharding.py``
runs it in a subprocess, because the device-count flag must be set before jax is imported.
"""

from __future__ import annotations

import os

if "jax" not in __import__("sys").modules:  # only effective before jax is imported
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, when run standalone

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import filtered_optax as fo  # noqa: E402

try:
    from filtered_optax import muon as _muon_alias
except ImportError:  # not yet exported
    from filtered_optax._muon import muon as _muon_alias

D_IN, HIDDEN, CLASSES, BATCH = 32, 64, 10, 64

# Megatron-style tensor parallelism over "model": fc1 column-parallel, fc2 row-parallel;
# the batch is split over "data". The head is also split, so AdamW state is sharded too.
PARAM_SPECS = {
    "fc1": {"kernel": P(None, "model"), "bias": P("model")},
    "fc2": {"kernel": P("model", None), "bias": P()},
    "head": {"kernel": P("model", None), "bias": P()},
}
DATA_SPEC, LABEL_SPEC = P("data", None), P("data")

OPTIMIZERS = {
    "filtered_adam": lambda: fo.filtered_adam(3e-3, warmup=5, gamma=5.0),
    # fc1, fc2 -> Muon; the head and the biases -> AdamW.
    "muon": lambda: _muon_alias(3e-3, weight_decay=0.01),
}


def make_mesh() -> Mesh:
    devices = np.array(jax.devices()[:8])
    if devices.size != 8:
        raise SystemExit(f"need 8 devices, got {jax.devices()}")
    return Mesh(devices.reshape(4, 2), ("data", "model"))


def init_params(key: jax.Array) -> dict[str, Any]:
    k1, k2, k3 = jax.random.split(key, 3)

    def dense(k, n_in, n_out):
        w = jax.random.normal(k, (n_in, n_out), jnp.float32) / jnp.sqrt(n_in)
        return {"kernel": w, "bias": jnp.zeros((n_out,), jnp.float32)}

    return {
        "fc1": dense(k1, D_IN, HIDDEN),
        "fc2": dense(k2, HIDDEN, HIDDEN),
        "head": dense(k3, HIDDEN, CLASSES),
    }


def loss_fn(params, x, y):
    h = jax.nn.gelu(x @ params["fc1"]["kernel"] + params["fc1"]["bias"])
    h = jax.nn.gelu(h @ params["fc2"]["kernel"] + params["fc2"]["bias"])
    logits = h @ params["head"]["kernel"] + params["head"]["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def global_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic synthetic data (a random two-layer teacher), the same on every host."""
    rng = np.random.default_rng(1000 + step)
    teacher = np.random.default_rng(7)
    t1 = teacher.standard_normal((D_IN, 48))
    t2 = teacher.standard_normal((48, CLASSES))
    x = rng.standard_normal((BATCH, D_IN)).astype(np.float32)
    y = np.argmax(np.tanh(x @ t1) @ t2, axis=-1).astype(np.int32)
    return x, y


def local_slice(x: np.ndarray) -> np.ndarray:
    """This process's rows of the global batch (all of it on a single host).

    Assumes the mesh's "data" axis is laid out host by host, as ``jax.make_mesh`` does. A
    real input pipeline would load only these rows.
    """
    n, rank = jax.process_count(), jax.process_index()
    per = x.shape[0] // n
    return x[rank * per : (rank + 1) * per]


def train(name: str, steps: int, mesh: Mesh | None) -> dict[str, Any]:
    """Trains on ``mesh`` (sharded) or on one device (``mesh=None``)."""
    tx = OPTIMIZERS[name]()
    if mesh is None:
        one = SingleDeviceSharding(jax.devices()[0])
        param_sh = jax.tree.map(lambda _: one, PARAM_SPECS)
        data_sh = label_sh = scalar_sh = one
    else:
        param_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), PARAM_SPECS)
        data_sh, label_sh = NamedSharding(mesh, DATA_SPEC), NamedSharding(mesh, LABEL_SPEC)
        scalar_sh = NamedSharding(mesh, P())

    # Parameters are created directly in their shards (no host-side full copy).
    params = jax.jit(init_params, out_shardings=param_sh)(jax.random.PRNGKey(0))
    # The optimizer state gets its parameters' shardings, scalars (count, ...) replicated.
    # (A bare jax.jit(tx.init)(params) would replicate mu / nu: zeros do not depend on the
    # parameters' values, so nothing propagates their sharding to them.)
    state_sh = fo.state_shardings(tx, params)
    state = jax.jit(tx.init, out_shardings=state_sh)(params)

    # Pin the output shardings: otherwise XLA may pick other layouts for the new params
    # (and the state would follow them), and the next step would reshard.
    @partial(jax.jit, out_shardings=(param_sh, state_sh, scalar_sh), donate_argnums=(0, 1))
    def train_step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for step in range(steps):
        x, y = global_batch(step)
        if mesh is None:
            x, y = jax.device_put(x, data_sh), jax.device_put(y, label_sh)
        else:
            x = jax.make_array_from_process_local_data(data_sh, local_slice(x))
            y = jax.make_array_from_process_local_data(label_sh, local_slice(y))
        params, state, loss = train_step(params, state, x, y)
        losses.append(float(loss))
    return {
        "losses": losses,
        "params": params,
        "state": state,
        "param_shardings": param_sh,
        "data_sharding": x.sharding,
    }


def _path(p) -> str:
    return jax.tree_util.keystr(p, simple=True, separator="/")


def state_sharding_report(params, state) -> dict[str, Any]:
    """Compares every param-sized state leaf (mu, nu, ...) with its parameter's sharding.

    A state leaf belongs to the parameter whose path its own path ends with (e.g.
    ``0/mu/fc1/kernel`` or ``inner_states/muon/inner_state/0/mu/fc1/kernel``).
    """
    by_path = {_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    checked, mismatched = [], []
    for p, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        path = _path(p)
        owner = [k for k in by_path if path.endswith("/" + k)]
        if not owner or getattr(leaf, "ndim", 0) == 0:
            continue
        param = by_path[max(owner, key=len)]
        checked.append(path)
        if leaf.shape != param.shape or not leaf.sharding.is_equivalent_to(
            param.sharding, leaf.ndim
        ):
            mismatched.append(f"{path}: {leaf.sharding} vs {param.sharding}")
    return {"checked": checked, "mismatched": mismatched}


def compare(name: str, steps: int, mesh: Mesh) -> dict[str, Any]:
    single = train(name, steps, None)
    sharded = train(name, steps, mesh)
    loss_single, loss_sharded = np.array(single["losses"]), np.array(sharded["losses"])
    param_diff = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(single["params"]), jax.tree.leaves(sharded["params"]))
    )
    params_kept = all(
        a.sharding.is_equivalent_to(s, a.ndim)
        for a, s in zip(
            jax.tree.leaves(sharded["params"]), jax.tree.leaves(sharded["param_shardings"])
        )
    )
    report = state_sharding_report(sharded["params"], sharded["state"])
    return {
        "optimizer": name,
        "devices": mesh.devices.size,
        "mesh": dict(mesh.shape),
        "steps": steps,
        "loss_first": float(loss_single[0]),
        "loss_last_single": float(loss_single[-1]),
        "loss_last_sharded": float(loss_sharded[-1]),
        "max_abs_loss_diff": float(np.max(np.abs(loss_single - loss_sharded))),
        "max_rel_loss_diff": float(np.max(np.abs(loss_single - loss_sharded) / loss_single)),
        "max_abs_param_diff": param_diff,
        "params_kept_sharding": params_kept,
        "data_sharding": str(sharded["data_sharding"].spec),
        "state_leaves_checked": report["checked"],
        "state_sharding_mismatches": report["mismatched"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--optimizer", choices=[*OPTIMIZERS, "all"], default="all")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host)",
    )
    args = parser.parse_args(argv)
    names = list(OPTIMIZERS) if args.optimizer == "all" else [args.optimizer]
    if args.distributed:
        # Every host runs this same program; the mesh spans the devices of all hosts. The
        # single-device reference is skipped (device 0 is not addressable everywhere).
        jax.distributed.initialize()
        mesh = make_mesh()
        for name in names:
            losses = train(name, args.steps, mesh)["losses"]
            if jax.process_index() == 0:
                print(json.dumps({"optimizer": name, "losses": losses}), flush=True)
        return
    mesh = make_mesh()
    for name in names:
        result = compare(name, args.steps, mesh)
        if jax.process_index() == 0:
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
