"""Checkpointing model + optimizer state with orbax-checkpoint.

* A run stopped mid-training, saved, restored into freshly built objects against an abstract
  target (``nnx.eval_shape`` / ``jax.eval_shape``) and resumed is bitwise equal to the
  uninterrupted run, for filtered_adam (with filter statistics) and fo.muon.
* The on-disk format is the optimizer state's field names (``count``, ``mu``, ``nu``,
  ``filter_state``, ``scale_state``, ...), so it is readable and stable.
* Restoring into a different optimizer structure raises a clear ``ValueError`` (orbax checks
  the tree structure and shapes itself); what the structure cannot tell (dtype casts, two
  optimizers with identical state layouts such as Adam vs AdaBelief) is caught by the small
  ``restore_checked`` helper below, which also compares a saved optimizer description.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import filtered_optax as fo
from filtered_optax import _muon

ocp = pytest.importorskip("orbax.checkpoint")

muon = getattr(fo, "muon", _muon.muon)


class MLP(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(8, 16, rngs=rngs)
        self.norm = nnx.LayerNorm(16, rngs=rngs)
        self.fc2 = nnx.Linear(16, 16, rngs=rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.gelu(self.norm(self.fc1(x)))
        return self.head(nnx.gelu(self.fc2(x)))


def _batch(step: int):
    """Deterministic per-step data; step 4 carries a gradient spike (inputs x 50)."""
    key = jax.random.fold_in(jax.random.PRNGKey(0), step)
    x = jax.random.normal(key, (32, 8))
    teacher = jax.random.normal(jax.random.PRNGKey(42), (8, 3))
    y = jnp.argmax(x @ teacher, axis=-1)
    return (x * 50.0 if step == 4 else x), y


@nnx.jit
def _train_step(model, optimizer, x, y):
    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


OPTIMIZERS = {
    # warmup=2: the filter is active on both sides of the save point, and clips step 4.
    "filtered_adam": lambda: fo.filtered_adam(3e-3, eta=0.8, warmup=2, stats=True),
    "muon": lambda: muon(3e-3, filter_gamma=5.0, filter_warmup=2),
}


def _build(name: str, seed: int):
    model = MLP(rngs=nnx.Rngs(seed))
    return model, nnx.Optimizer(model, OPTIMIZERS[name](), wrt=nnx.Param)


def _run(model, optimizer, steps):
    return [np.asarray(_train_step(model, optimizer, *_batch(s))) for s in steps]


def _arrays(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_bitwise(a, b):
    la, lb = _arrays(a), _arrays(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_nnx_resume_is_bitwise_equal_to_uninterrupted_run(name, tmp_path: Path):
    total, cut = 8, 4

    ref_model, ref_opt = _build(name, seed=0)
    full_losses = _run(ref_model, ref_opt, range(total))

    model, optimizer = _build(name, seed=0)
    first = _run(model, optimizer, range(cut))
    checkpointer = ocp.StandardCheckpointer()
    path = tmp_path / "ckpt"
    saved = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
    checkpointer.save(path, saved)
    checkpointer.wait_until_finished()

    # A fresh process would build the objects again: use another seed to prove nothing
    # survives but what was restored, and restore against an abstract target.
    model, optimizer = _build(name, seed=123)
    abstract = nnx.eval_shape(lambda: _build(name, seed=0))
    target = {"model": nnx.state(abstract[0]), "optimizer": nnx.state(abstract[1])}
    restored = checkpointer.restore(path, target)
    nnx.update(model, restored["model"])
    nnx.update(optimizer, restored["optimizer"])
    _assert_bitwise({"model": nnx.state(model), "optimizer": nnx.state(optimizer)}, saved)
    assert int(optimizer.step[...]) == cut

    resumed = first + _run(model, optimizer, range(cut, total))
    np.testing.assert_array_equal(np.array(resumed), np.array(full_losses))

    # Final parameters and optimizer state are bitwise the uninterrupted run's.
    _assert_bitwise(nnx.state(model), nnx.state(ref_model))
    _assert_bitwise(nnx.state(optimizer), nnx.state(ref_opt))
    if name == "filtered_adam":
        stats = fo.filter_stats(optimizer.opt_state)
        assert stats is not None and 0.0 <= float(stats["spike_fraction"]) <= 1.0


# ---------------------------------------------------------------------------------------
# Pure pytrees (plain optax loops): format and checkpoint manager


def _params():
    rng = np.random.default_rng(0)
    return {
        "dense": {
            "kernel": jnp.asarray(rng.standard_normal((4, 8)), jnp.float32),
            "bias": jnp.zeros(8, jnp.float32),
        },
        "head": {"kernel": jnp.asarray(rng.standard_normal((8, 2)), jnp.float32)},
    }


def _pure_train(tx, params, state, steps):
    @jax.jit
    def step(params, state, i):
        x = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(1), i), (16, 4))

        def loss_fn(p):
            hidden = jnp.tanh(x @ p["dense"]["kernel"] + p["dense"]["bias"])
            return jnp.mean((hidden @ p["head"]["kernel"] - 1.0) ** 2)

        grads = jax.grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for i in steps:
        params, state = step(params, state, i)
    return params, state


def _metadata_paths(tree) -> set[str]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in leaves}


def test_pure_pytree_format_and_checkpoint_manager_resume(tmp_path: Path):
    tx = fo.filtered_adam(1e-2, warmup=2, stats=True)
    params = _params()
    full = _pure_train(tx, params, tx.init(params), range(6))

    p, s = _pure_train(tx, params, tx.init(params), range(3))
    with ocp.CheckpointManager(tmp_path / "run") as mngr:
        mngr.save(3, args=ocp.args.StandardSave({"params": p, "opt_state": s}))
        mngr.wait_until_finished()
        assert mngr.latest_step() == 3
        # The on-disk names are the state's field names: the checkpoint format.
        tree = mngr.item_metadata(3).tree
        assert _metadata_paths(tree["opt_state"]) == {
            "0/count",
            "0/filter_state/mean_gain",
            "0/filter_state/spike_fraction",
            "0/mu/dense/bias",
            "0/mu/dense/kernel",
            "0/mu/head/kernel",
            "0/nu/dense/bias",
            "0/nu/dense/kernel",
            "0/nu/head/kernel",
        }
        target = {
            "params": jax.eval_shape(lambda: params),
            "opt_state": jax.eval_shape(tx.init, params),
        }
        restored = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore(target))

    state = restored["opt_state"]
    assert isinstance(state[0], fo.WithMomentsState)  # NamedTuple types come back
    assert isinstance(state[0].filter_state, fo.FilterStats)
    assert int(state[0].count) == 3
    resumed = _pure_train(tx, restored["params"], state, range(3, 6))
    _assert_bitwise(resumed, full)


# ---------------------------------------------------------------------------------------
# Restoring into the wrong optimizer


def _save_filtered_adam(path: Path):
    tx = fo.filtered_adam(1e-3)
    params = _params()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, {"params": params, "opt_state": tx.init(params)})
    checkpointer.wait_until_finished()
    return checkpointer, params


def _wider(params):
    return jax.tree.map(lambda x: jnp.zeros(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype), params)


@pytest.mark.parametrize(
    "make, params_fn, match",
    [
        # Same family, extra filter statistics in the state.
        (lambda: fo.filtered_adam(1e-3, stats=True), None, "spike_fraction"),
        # optax's own Adam: ScaleByAdamState has no filter_state / scale_state.
        (lambda: optax.adam(1e-3), None, "do not match|mismatch"),
        # Muon + AdamW: a PartitionState.
        (lambda: muon(1e-3), None, "inner_states|do not match|mismatch"),
        # Plain SGD with momentum: a TraceState.
        (lambda: optax.sgd(1e-3, momentum=0.9), None, "trace"),
        # Same optimizer, other parameter shapes.
        (lambda: fo.filtered_adam(1e-3), _wider, "shape"),
    ],
    ids=["stats", "optax.adam", "muon", "sgd-momentum", "shapes"],
)
def test_restore_into_other_optimizer_structure_raises(tmp_path, make, params_fn, match):
    checkpointer, params = _save_filtered_adam(tmp_path / "ckpt")
    params = params if params_fn is None else params_fn(params)
    target = {
        "params": jax.eval_shape(lambda: params),
        "opt_state": jax.eval_shape(make().init, params),
    }
    with pytest.raises(ValueError, match=match):
        checkpointer.restore(tmp_path / "ckpt", target)


def _described_paths(tree) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(p, simple=True, separator="/"): (tuple(x.shape), np.dtype(x.dtype))
        for p, x in leaves
    }


def save_checked(mngr, step: int, state: Any, optimizer: dict[str, Any]) -> None:
    """Saves ``state`` plus a JSON description of the optimizer that produced it."""
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), optimizer=ocp.args.JsonSave(optimizer)
        ),
    )
    mngr.wait_until_finished()


def restore_checked(mngr, step: int, target: Any, optimizer: dict[str, Any]) -> Any:
    """Restores ``target`` only if the checkpoint matches it exactly.

    orbax already rejects other tree structures and shapes; this also rejects dtype changes
    (orbax would cast silently, e.g. float32 mu into a bfloat16 ``mu_dtype``) and another
    optimizer with an identical state layout (e.g. Adam's ``nu`` restored as AdaBelief's
    centred second moment), by comparing the saved optimizer description.
    """
    saved_opt = mngr.restore(step, args=ocp.args.Composite(optimizer=ocp.args.JsonRestore()))
    saved_opt = saved_opt["optimizer"]
    if saved_opt != optimizer:
        raise ValueError(
            f"checkpoint step {step} was written by optimizer {saved_opt}, but you restore "
            f"into {optimizer}; their states are not interchangeable."
        )
    on_disk = _described_paths(mngr.item_metadata(step)["state"].tree)
    wanted = _described_paths(target)
    problems = [f"missing in checkpoint: {k}" for k in sorted(wanted.keys() - on_disk.keys())]
    problems += [f"not in target: {k}" for k in sorted(on_disk.keys() - wanted.keys())]
    problems += [
        f"{k}: checkpoint has shape {on_disk[k][0]} {on_disk[k][1]}, target wants "
        f"{wanted[k][0]} {wanted[k][1]}"
        for k in sorted(wanted.keys() & on_disk.keys())
        if on_disk[k] != wanted[k]
    ]
    if problems:
        raise ValueError("checkpoint does not match the target state:\n  " + "\n  ".join(problems))
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))[
        "state"
    ]


def test_restore_checked_catches_what_the_structure_cannot(tmp_path: Path):
    params = _params()
    adam_desc = {"name": "adam", "b1": 0.9, "b2": 0.999}
    with ocp.CheckpointManager(tmp_path / "run") as mngr:
        save_checked(mngr, 1, fo.adam(1e-3).init(params), adam_desc)

        # The matching optimizer restores, with its NamedTuple types.
        state = restore_checked(mngr, 1, jax.eval_shape(fo.adam(1e-3).init, params), adam_desc)
        assert isinstance(state[0], fo.WithMomentsState)

        # AdaBelief's state has exactly Adam's layout; plain orbax would load it silently.
        belief_target = jax.eval_shape(fo.adabelief(1e-3).init, params)
        assert _described_paths(belief_target) == _described_paths(state)
        with pytest.raises(ValueError, match="written by optimizer"):
            restore_checked(mngr, 1, belief_target, {"name": "adabelief", "b1": 0.9, "b2": 0.999})

        # A bfloat16 first moment: orbax alone would cast; the helper refuses.
        bf16_target = jax.eval_shape(fo.adam(1e-3, mu_dtype=jnp.bfloat16).init, params)
        with pytest.raises(ValueError, match="bfloat16"):
            restore_checked(mngr, 1, bf16_target, adam_desc)
