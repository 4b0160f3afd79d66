"""The training loop of the network tasks: one ``lax.scan`` inside one ``jax.jit``, vmapped
over seeds, with every run-level knob traced (so one compile per (task, spec) serves every
learning rate, schedule and injected spike).

Schedule: linear warmup over ``warmup`` steps, then cosine decay to 0 at the last step
(Loshchilov & Hutter 2017, "SGDR"); ``warmup = 0`` starts at the peak rate.

Spike injection (on the gradient, before the optimizer sees it): ``magnitude`` M, ``pattern``
(:data:`PATTERNS`: once at ``step``, every :data:`EVERY` steps from ``step`` on, or a burst of
:data:`BURST` consecutive steps) and ``kind`` (:data:`KINDS`: the whole gradient × M, as a batch
whose loss is M× larger; or one row of the first weight matrix gets M × the gradient's RMS
added, a single corrupted coordinate/row).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.core import specs as specs_lib
from benchmarks.suite.tasks import NetTask

PATTERNS = {"none": 0, "once": 1, "every50": 2, "burst5": 3}
KINDS = {"batch": 0, "row": 1}
EVERY = 50  # period of the "every50" pattern
BURST = 5  # length of the "burst5" pattern
PROBE_BEFORE, PROBE_AFTER = 20, 100  # probe-loss window around the first injected step
NO_INJECTION = {"magnitude": 1.0, "pattern": "none", "kind": "batch", "step": 0}


def max_sqrt_nu(opt_state: Any) -> jax.Array:
    """Largest √ν over every ``nu`` buffer in the optimizer state (NaN when there is none)."""
    found = optax.tree.get_all_with_path(opt_state, "nu")
    leaves = [leaf for _, nu in found for leaf in jax.tree.leaves(nu)]
    if not leaves:
        return jnp.float32(jnp.nan)
    return jnp.sqrt(jnp.max(jnp.stack([jnp.max(leaf.astype(jnp.float32)) for leaf in leaves])))


def schedule(lr: jax.Array, warmup: jax.Array, steps: int) -> optax.Schedule:
    """``count ↦ lr · min(1, (count+1)/warmup) · ½(1 + cos(π count / steps))`` (traced)."""

    def fn(count: jax.Array) -> jax.Array:
        c = jnp.asarray(count, jnp.float32)
        warm = jnp.where(warmup > 0, jnp.minimum(1.0, (c + 1.0) / jnp.maximum(warmup, 1.0)), 1.0)
        return lr * warm * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(c, steps) / steps))

    return fn


def injected(i: jax.Array, inj: dict[str, jax.Array]) -> jax.Array:
    """Whether step ``i`` carries an injected spike (pattern codes: :data:`PATTERNS`)."""
    since = i - inj["step"]
    once = since == 0
    every = (since >= 0) & (since % EVERY == 0)
    burst = (since >= 0) & (since < BURST)
    return jnp.select(
        [inj["pattern"] == 1, inj["pattern"] == 2, inj["pattern"] == 3], [once, every, burst], False
    )


def inject(grads: Any, on: jax.Array, inj: dict[str, jax.Array]) -> Any:
    """``grads`` with the spike of :func:`injected` applied when ``on`` (see module docstring)."""
    leaves, treedef = jax.tree.flatten(grads)
    rms = jnp.sqrt(
        sum(jnp.sum(g.astype(jnp.float32) ** 2) for g in leaves) / sum(g.size for g in leaves)
    )
    row_leaf = next((j for j, g in enumerate(leaves) if g.ndim >= 2), 0)
    out = []
    for j, g in enumerate(leaves):
        whole = g * inj["magnitude"]
        row = g
        if j == row_leaf:
            row = g.at[0].add(inj["magnitude"] * rms) if g.ndim else g + inj["magnitude"] * rms
        spiked = jnp.where(inj["kind"] == 0, whole, row)
        out.append(jnp.where(on, spiked, g))
    return jax.tree.unflatten(treedef, out)


def _records(spec: specs_lib.OptSpec, state: Any) -> dict[str, jax.Array]:
    """Per-step optimizer statistics: filter stats (if any) and max √ν."""
    rec = {"max_sqrt_nu": max_sqrt_nu(state)}
    if spec.uses_filter:
        stats = specs_lib.filter_stats(state)
        rec["spike_fraction"] = jnp.asarray(stats["spike_fraction"], jnp.float32)
        rec["mean_gain"] = jnp.asarray(stats["mean_gain"], jnp.float32)
    return rec


def _run(
    task: NetTask,
    spec: specs_lib.OptSpec,
    arrays: dict,
    hp: dict[str, jax.Array],
    seed: jax.Array,
    probe: bool,
) -> dict[str, jax.Array]:
    """Train one seed in one scan; per-step and per-eval curves and the final test metrics.

    With ``probe`` (spike runs) the probe loss is evaluated on every step of the window around
    the first injection (under ``vmap`` the ``cond`` runs both branches, so runs without an
    injection are compiled without it).
    """
    k_init, k_data = jax.random.split(jax.random.key(seed))
    params = task.init(k_init)
    opt = specs_lib.build(spec, schedule(hp["lr"], hp["warmup"], task.steps), routing=task.routing)
    state = opt.init(params)
    nan = jnp.float32(jnp.nan)

    def step(carry, i):
        params, state = carry
        batch = task.sample(arrays, jax.random.fold_in(k_data, i))
        loss, grads = jax.value_and_grad(task.loss)(params, batch)
        grads = inject(grads, injected(i, hp), hp)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        rec = _records(spec, state)
        rec["train_loss"] = loss
        near = (i >= hp["step"] - PROBE_BEFORE) & (i < hp["step"] + PROBE_AFTER)
        rec["probe_loss"] = (
            jax.lax.cond(
                near,
                lambda p: task.evaluate(p, arrays, "probe")[0].astype(jnp.float32),
                lambda p: nan,
                params,
            )
            if probe
            else nan
        )
        return (params, state), rec

    def chunk(carry, c):
        carry, recs = jax.lax.scan(step, carry, c * task.eval_every + jnp.arange(task.eval_every))
        return carry, (recs, *task.evaluate(carry[0], arrays, "val"))

    (params, _), (recs, val_loss, val_metric) = jax.lax.scan(
        chunk, (params, state), jnp.arange(task.steps // task.eval_every)
    )
    out = {k: v.reshape(-1) for k, v in recs.items()}
    out["val_loss"], out["val_metric"] = val_loss, val_metric
    out["test_loss"], out["test_metric"] = task.evaluate(params, arrays, "test")
    return out


TrainFn = Callable[..., dict[str, np.ndarray]]


def hyper(lr: float, warmup: int, injection: dict[str, Any] | None = None) -> dict[str, Any]:
    """The traced knobs of one run: peak LR, warmup steps and the injection."""
    inj = {**NO_INJECTION, **(injection or {})}
    return {
        "lr": np.float32(lr),
        "warmup": np.float32(warmup),
        "magnitude": np.float32(inj["magnitude"]),
        "pattern": np.int32(PATTERNS[inj["pattern"]]),
        "kind": np.int32(KINDS[inj["kind"]]),
        "step": np.int32(inj["step"]),
    }


def make_train_fn(task: NetTask, spec: specs_lib.OptSpec) -> TrainFn:
    """``fn(hps, seeds) -> {name: array[len(hps), len(seeds), ...]}``: every run knob in
    ``hps`` (a list of :func:`hyper` dicts) and every seed in one compiled call. The probe
    loss is computed only when some run of the call has an injection."""
    if task.steps % task.eval_every:
        raise ValueError(f"{task.name}: steps {task.steps} not a multiple of {task.eval_every}")

    def batched(arrays, hps, seeds, probe):
        one = jax.vmap(lambda hp, s: _run(task, spec, arrays, hp, s, probe), (None, 0))
        return jax.vmap(one, (0, None))(hps, seeds)

    compiled = jax.jit(batched, static_argnums=3)

    def fn(hps: list[dict[str, Any]], seeds: np.ndarray) -> dict[str, np.ndarray]:
        stacked = {k: jnp.asarray(np.stack([h[k] for h in hps])) for k in hps[0]}
        probe = any(int(h["pattern"]) > 0 for h in hps)
        out = compiled(task.arrays, stacked, jnp.asarray(seeds, jnp.int32), probe)
        return jax.tree.map(np.asarray, out)

    return fn
