"""Training loops for the network tasks, in two execution modes with identical results.

* **fused** (quick / full suites): the whole run — batch sampling, the optional corrupt batch,
  optimizer updates, periodic validation, the probe around the spike and the final test — is one
  ``lax.scan`` inside one ``jax.jit``, vmapped over seeds. The learning rate and the spike step
  are traced arguments, so one compile per (task, spec) serves every learning rate and both the
  clean and the spiked runs (a factory that cannot take a traced learning rate falls back to one
  compile per rate).
* **stepwise** (smoke suite): a Python loop over steps calling small jitted pieces — the model's
  gradient is compiled once per task and only the optimizer update once per (task, spec). A
  handful of steps then costs far less compile time than a fused program per spec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import specs as specs_lib
from benchmarks.tasks import NetTask

# Seed offset for the corrupt batch's own randomness (kept apart from batch sampling keys).
_CORRUPT_FOLD = 1_000_003
NO_SPIKE = -(10**9)  # spike step meaning "no corrupt batch"
PROBE_BEFORE, PROBE_AFTER = 20, 100  # probe-loss window around the spike step


def max_sqrt_nu(opt_state: Any) -> jax.Array:
    """Largest √ν over every ``nu`` buffer in the optimizer state (NaN when there is none)."""
    found = optax.tree.get_all_with_path(opt_state, "nu")
    leaves = [leaf for _, nu in found for leaf in jax.tree.leaves(nu)]
    if not leaves:
        return jnp.float32(jnp.nan)
    return jnp.sqrt(jnp.max(jnp.stack([jnp.max(leaf.astype(jnp.float32)) for leaf in leaves])))


def _keys(seed: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(init key, data key) of a seed — shared by both modes so their runs are identical."""
    k_init, k_data = jax.random.split(jax.random.key(seed))
    return k_init, k_data


def _batch(task: NetTask, arrays: dict, k_data: jax.Array, i: jax.Array,
           spike_step: jax.Array) -> dict:
    """Training batch of step ``i``, replaced by the corrupt batch when ``i == spike_step``."""
    batch = task.sample(arrays, jax.random.fold_in(k_data, i))
    bad = task.corrupt(arrays, jax.random.fold_in(k_data, _CORRUPT_FOLD), batch)
    return jax.tree.map(lambda b, c: jnp.where(i == spike_step, c, b), batch, bad)


def _opt_records(spec: specs_lib.OptSpec, state: Any) -> dict[str, jax.Array]:
    """Per-step optimizer statistics: filter stats (if any) and max √ν."""
    rec = {"max_sqrt_nu": max_sqrt_nu(state)}
    if spec.uses_filter:
        stats = specs_lib.filter_stats(state)
        if stats is not None:
            rec["spike_fraction"] = jnp.asarray(stats["spike_fraction"], jnp.float32)
            rec["mean_gain"] = jnp.asarray(stats["mean_gain"], jnp.float32)
    return rec


def _in_window(i: jax.Array, spike_step: jax.Array) -> jax.Array:
    return (i >= spike_step - PROBE_BEFORE) & (i < spike_step + PROBE_AFTER)


def _run_fused(task: NetTask, spec: specs_lib.OptSpec, arrays: dict, lr: Any,
               spike_step: jax.Array, seed: jax.Array) -> dict[str, jax.Array]:
    """Train one seed in one scan; returns per-step and per-eval curves and test metrics."""
    k_init, k_data = _keys(seed)
    params = task.init(k_init)
    opt = specs_lib.build(spec, lr)
    state = opt.init(params)
    n_chunks = task.steps // task.eval_every
    nan = jnp.float32(jnp.nan)

    def step(carry, i):
        params, state = carry
        batch = _batch(task, arrays, k_data, i, spike_step)
        loss, grads = jax.value_and_grad(task.loss)(params, batch)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        rec = _opt_records(spec, state)
        rec["train_loss"] = loss / batch["w"]
        rec["probe_loss"] = jax.lax.cond(
            _in_window(i, spike_step),
            lambda p: task.evaluate(p, arrays, "probe")[0].astype(jnp.float32),
            lambda p: nan, params)
        return (params, state), rec

    def chunk(carry, c):
        carry, recs = jax.lax.scan(step, carry, c * task.eval_every + jnp.arange(task.eval_every))
        val_loss, val_metric = task.evaluate(carry[0], arrays, "val")
        return carry, (recs, val_loss, val_metric)

    (params, _), (recs, val_loss, val_metric) = jax.lax.scan(
        chunk, (params, state), jnp.arange(n_chunks)
    )
    out = {k: v.reshape(-1) for k, v in recs.items()}
    out["val_loss"], out["val_metric"] = val_loss, val_metric
    out["test_loss"], out["test_metric"] = task.evaluate(params, arrays, "test")
    return out


TrainFn = Callable[[float, np.ndarray, int | None], dict[str, np.ndarray]]


def make_fused_fn(task: NetTask, spec: specs_lib.OptSpec) -> TrainFn:
    """``fn(lr, seeds, spike_step=None) -> {name: array[len(seeds), ...]}`` (fused mode)."""

    def batched(arrays, lr, spike_step, seeds):
        return jax.vmap(lambda s: _run_fused(task, spec, arrays, lr, spike_step, s))(seeds)

    traced = jax.jit(batched)
    static = jax.jit(batched, static_argnums=1)
    mode = {"static": False}

    def fn(lr: float, seeds: np.ndarray, spike_step: int | None = None) -> dict[str, np.ndarray]:
        seeds = jnp.asarray(seeds, jnp.int32)
        s = jnp.int32(NO_SPIKE if spike_step is None else spike_step)
        if not mode["static"]:
            try:
                return jax.tree.map(np.asarray, traced(task.arrays, jnp.float32(lr), s, seeds))
            except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError):
                mode["static"] = True
        return jax.tree.map(np.asarray, static(task.arrays, float(lr), s, seeds))

    fn.mode = mode  # type: ignore[attr-defined]
    return fn


_PIECES: dict[int, tuple[NetTask, dict[str, Callable]]] = {}


def _task_pieces(task: NetTask) -> dict[str, Callable]:
    """Jitted, seed-vmapped model pieces of a task (compiled once per task)."""
    if id(task) in _PIECES and _PIECES[id(task)][0] is task:
        return _PIECES[id(task)][1]

    def keys(seed):
        return _keys(seed)

    def batch(arrays, k_data, i, spike_step):
        return _batch(task, arrays, k_data, i, spike_step)

    pieces = {
        "keys": jax.jit(jax.vmap(keys)),
        "init": jax.jit(jax.vmap(task.init)),
        "batch": jax.jit(jax.vmap(batch, (None, 0, None, None))),
        "grad": jax.jit(jax.vmap(jax.value_and_grad(task.loss))),
        "eval": jax.jit(jax.vmap(task.evaluate, (0, None, None)), static_argnums=2),
    }
    _PIECES[id(task)] = (task, pieces)
    return pieces


def make_stepwise_fn(task: NetTask, spec: specs_lib.OptSpec) -> TrainFn:
    """Same contract and numbers as :func:`make_fused_fn`, driven step by step from Python."""
    pieces = _task_pieces(task)

    def init(params, lr):
        return specs_lib.build(spec, lr).init(params)

    def update(grads, state, params, lr):
        updates, state = specs_lib.build(spec, lr).update(grads, state, params)
        return optax.apply_updates(params, updates), state, _opt_records(spec, state)

    # init runs eagerly: its few primitives (zeros of each leaf shape) are compiled once and
    # reused by every spec, where a jitted init would cost one more compile per spec.
    opt_init = jax.vmap(init, (0, None))
    opt_update = jax.jit(jax.vmap(update, (0, 0, 0, None)))

    def fn(lr: float, seeds: np.ndarray, spike_step: int | None = None) -> dict[str, np.ndarray]:
        arrays = task.arrays
        lr = jnp.float32(lr)
        s = jnp.int32(NO_SPIKE if spike_step is None else spike_step)
        k_init, k_data = pieces["keys"](jnp.asarray(seeds, jnp.int32))
        params = pieces["init"](k_init)
        state = opt_init(params, lr)
        recs: dict[str, list] = {}
        vals: list[tuple] = []
        for i in range(task.steps):
            batch = pieces["batch"](arrays, k_data, jnp.int32(i), s)
            loss, grads = pieces["grad"](params, batch)
            params, state, rec = opt_update(grads, state, params, lr)
            rec["train_loss"] = loss / batch["w"]
            in_win = spike_step is not None and bool(_in_window(i, spike_step))
            rec["probe_loss"] = (pieces["eval"](params, arrays, "probe")[0] if in_win
                                 else jnp.full(loss.shape, jnp.nan))
            for k, v in rec.items():
                recs.setdefault(k, []).append(np.asarray(v))
            if (i + 1) % task.eval_every == 0:
                vals.append(pieces["eval"](params, arrays, "val"))
        out = {k: np.stack(v, axis=1) for k, v in recs.items()}
        out["val_loss"] = np.stack([np.asarray(v[0]) for v in vals], axis=1)
        out["val_metric"] = np.stack([np.asarray(v[1]) for v in vals], axis=1)
        test = pieces["eval"](params, arrays, "test")
        out["test_loss"], out["test_metric"] = np.asarray(test[0]), np.asarray(test[1])
        return out

    fn.mode = {"static": False}  # type: ignore[attr-defined]
    return fn


def make_train_fn(task: NetTask, spec: specs_lib.OptSpec, stepwise: bool = False) -> TrainFn:
    """Fused (default) or stepwise training function for (task, spec)."""
    if task.steps % task.eval_every:
        raise ValueError(f"{task.name}: steps {task.steps} not a multiple of {task.eval_every}")
    return (make_stepwise_fn if stepwise else make_fused_fn)(task, spec)
