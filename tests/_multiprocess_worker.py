"""One process of tests/integration/test_multiprocess.py: trains a small MLP on a 2 x 2 mesh.

Run as ``--num-processes 2`` (two copies, 2 CPU devices each, joined by
``jax.distributed.initialize`` over gloo on 127.0.0.1) or as one process with 4 devices. Each
process feeds only its own half of every global batch through
``jax.make_array_from_process_local_data`` (``--wrong-half`` makes process 1 feed process 0's
half instead: a bug the test must detect). The "data" mesh axis runs across processes, "model"
within one. ``--save-at K`` writes an orbax checkpoint after K steps (every process writes its
own shards); ``--resume`` additionally restores that checkpoint into this run's shardings and
trains on from step K. Process 0 writes the final parameters, gathered, and the losses to
``--out`` (``<optimizer>.npz``, and ``<optimizer>_resumed.npz`` for the resumed run).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--optimizers", default="filtered_adam,muon")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--save-at", type=int, default=-1)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--ckpt", default="")
    p.add_argument("--wrong-half", action="store_true")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


ARGS = parse()
LOCAL_DEVICES = 4 // ARGS.num_processes  # 4 devices in all, a 2 x 2 mesh
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={LOCAL_DEVICES}"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import filtered_optax as fo  # noqa: E402

D_IN, HIDDEN, CLASSES, BATCH = 16, 32, 4, 32
# fc2 and fc3 have one shape (sharded differently): Muon's Newton-Schulz splits that pair
# over the mesh, across the two processes.
SPECS = {
    "fc1": {"kernel": P(None, "model"), "bias": P("model")},
    "fc2": {"kernel": P("model", None), "bias": P()},
    "fc3": {"kernel": P(None, "model"), "bias": P("model")},
    "head": {"kernel": P("model", None), "bias": P()},
}
OPTIMIZERS = {
    "filtered_adam": lambda: fo.filtered_adam(1e-2, warmup=2, gamma=5.0),
    "muon": lambda: fo.muon(1e-2, weight_decay=0.01),
}


def init_params(key):
    k1, k2, k3, k4 = jax.random.split(key, 4)

    def dense(k, n_in, n_out):
        return {
            "kernel": jax.random.normal(k, (n_in, n_out)) / jnp.sqrt(n_in),
            "bias": jnp.zeros((n_out,)),
        }

    return {
        "fc1": dense(k1, D_IN, HIDDEN),
        "fc2": dense(k2, HIDDEN, HIDDEN),
        "fc3": dense(k4, HIDDEN, HIDDEN),
        "head": dense(k3, HIDDEN, CLASSES),
    }


def loss_fn(params, x, y):
    h = jax.nn.gelu(x @ params["fc1"]["kernel"] + params["fc1"]["bias"])
    h = jax.nn.gelu(h @ params["fc2"]["kernel"] + params["fc2"]["bias"])
    h = jax.nn.gelu(h @ params["fc3"]["kernel"] + params["fc3"]["bias"])
    logits = h @ params["head"]["kernel"] + params["head"]["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def global_batch(step: int):
    """The same deterministic batch on every process (a real loader reads only its rows)."""
    rng = np.random.default_rng(100 + step)
    x = rng.standard_normal((BATCH, D_IN)).astype(np.float32)
    teacher = np.random.default_rng(7).standard_normal((D_IN, CLASSES))
    return x, np.argmax(x @ teacher, axis=-1).astype(np.int32)


def local_rows(a: np.ndarray) -> np.ndarray:
    n, rank = jax.process_count(), jax.process_index()
    if ARGS.wrong_half and rank == 1:
        rank = 0  # the bug: feed the other process's rows
    per = a.shape[0] // n
    return a[rank * per : (rank + 1) * per]


def train(name: str, mesh: Mesh, out: Path, resume: bool) -> None:
    tx = OPTIMIZERS[name]()
    param_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), SPECS)
    scalar = NamedSharding(mesh, P())
    params = jax.jit(init_params, out_shardings=param_sh)(jax.random.key(0))
    state_sh = fo.state_shardings(tx, params)
    state = jax.jit(tx.init, out_shardings=state_sh)(params)
    ckpt = ocp.StandardCheckpointer()
    path = Path(ARGS.ckpt).resolve() / name
    start = 0
    if resume:
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
            {"params": params, "state": state},
        )
        restored = ckpt.restore(path, target)
        params, state, start = restored["params"], restored["state"], ARGS.save_at

    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    step = jax.jit(step, out_shardings=(param_sh, state_sh, scalar))
    x_sh, y_sh = NamedSharding(mesh, P("data", None)), NamedSharding(mesh, P("data"))
    losses = []
    for s in range(start, ARGS.steps):
        if s == ARGS.save_at and not ARGS.resume:  # --resume reads the checkpoint
            ckpt.save(path, {"params": params, "state": state})
            ckpt.wait_until_finished()
        xb, yb = global_batch(s)
        x = jax.make_array_from_process_local_data(x_sh, local_rows(xb))
        y = jax.make_array_from_process_local_data(y_sh, local_rows(yb))
        params, state, loss = step(params, state, x, y)
        losses.append(float(loss))
    full = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        flat = {
            jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(full)[0]
        }
        tag = "_resumed" if resume else ""
        np.savez(out / f"{name}{tag}.npz", losses=np.asarray(losses), **flat)


def main() -> None:
    if ARGS.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{ARGS.port}",
            num_processes=ARGS.num_processes,
            process_id=ARGS.process_id,
            initialization_timeout=60,
        )
    if jax.device_count() != 4 or jax.local_device_count() != LOCAL_DEVICES:
        raise SystemExit(f"expected 4 devices, {LOCAL_DEVICES} local; got {jax.devices()}")
    # Devices are listed process by process, so the "data" axis runs across processes.
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    out = Path(ARGS.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ARGS.optimizers.split(","):
        train(name, mesh, out, resume=False)
        if ARGS.resume:
            train(name, mesh, out, resume=True)
    if ARGS.num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
