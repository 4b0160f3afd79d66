"""fo.monitor and fo.read_stats: named per-step statistics that survive optax.partition.

The main optimizer clips the gradient and routes two parameter groups through
``optax.partition`` branches built from the *same* stages (a filtered Adam with filter
statistics, then a monitor), so every statistic occurs twice under the same field name.
A monitor before the clip records the raw gradient norm.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import filtered_optax as fo

MAX_NORM = 1.0
B1, B2, ETA, GAMMA, WARMUP = 0.9, 0.999, 0.5, 5.0, 2
GROUPS = ("body", "head")


def _params():
    return {
        "body": {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)},
        "head": {"w": jnp.zeros((3, 2))},
    }


def _labels(params):
    return {group: jax.tree.map(lambda _, g=group: g, params[group]) for group in params}


def _adam():
    return fo.filtered_adam(0.1, B1, B2, eta=ETA, gamma=GAMMA, warmup=WARMUP, stats=True)


def _tx(monitored: bool = True):
    def branch():
        return optax.chain(_adam(), fo.monitor()) if monitored else _adam()

    stages = [
        optax.clip_by_global_norm(MAX_NORM),
        optax.partition({group: branch() for group in GROUPS}, _labels),
    ]
    return optax.chain(fo.monitor("grad"), *stages) if monitored else optax.chain(*stages)


def _grads(step: int):
    """0.1 everywhere (norm 0.46, below the clip); at step 3 one spike of 100 in body.w."""
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), _params())
    if step == 3:
        grads["body"]["w"] = grads["body"]["w"].at[0, 0].set(100.0)
    return grads


STEPS = 4
EXPECTED_NAMES = [
    "grad/norm",
    "grad/rms",
    *(
        f"{group}/{name}"
        for group in GROUPS
        for name in ("filter/spike_fraction", "filter/mean_gain", "monitor/norm", "monitor/rms")
    ),
]


def _norm(tree):
    leaves = jax.tree.leaves(tree)
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in leaves)))


def _rms(tree):
    return _norm(tree) / np.sqrt(sum(np.size(x) for x in jax.tree.leaves(tree)))


def test_names_are_unique_across_partition_branches():
    state = _tx().init(_params())
    assert list(fo.read_stats(state)) == EXPECTED_NAMES
    # Deterministic: a second optimizer built the same way gives the same names.
    assert list(fo.read_stats(_tx().init(_params()))) == EXPECTED_NAMES
    assert all(v.shape == () and v.dtype == jnp.float32 for v in fo.read_stats(state).values())


def test_values_match_hand_computation():
    tx, params = _tx(), _params()
    state, update = tx.init(params), jax.jit(tx.update)
    for step in range(STEPS):
        grads = _grads(step)
        prev = state
        updates, state = update(grads, state, params)
    stats = fo.read_stats(state)

    raw_norm = _norm(grads)
    assert raw_norm > 99.0  # the spike step is clipped
    np.testing.assert_allclose(stats["grad/norm"], raw_norm, rtol=1e-6)
    np.testing.assert_allclose(stats["grad/rms"], raw_norm / np.sqrt(12 + 3 + 6), rtol=1e-6)
    clipped = jax.tree.map(lambda g: g * (MAX_NORM / raw_norm), grads)

    for group in GROUPS:
        # Update statistics from the update the optimizer actually returned.
        np.testing.assert_allclose(stats[f"{group}/monitor/norm"], _norm(updates[group]), rtol=1e-6)
        np.testing.assert_allclose(stats[f"{group}/monitor/rms"], _rms(updates[group]), rtol=1e-6)
        # Filter statistics from the filter math on this branch's clipped gradient and its
        # moments before the step (the other branch's leaves are optax.MaskedNode there).
        moments = prev[2].inner_states[group].inner_state[0][0]
        results = [
            fo.kalman_filter_math(
                g, m, v, moments.count, b1=B1, b2=B2, eta=ETA, gamma=GAMMA, warmup=WARMUP
            )
            for g, m, v in zip(
                jax.tree.leaves(clipped[group]),
                jax.tree.leaves(moments.mu),
                jax.tree.leaves(moments.nu),
                strict=True,
            )
        ]
        size = sum(r.gain.size for r in results)
        np.testing.assert_allclose(
            stats[f"{group}/filter/spike_fraction"],
            sum(float(r.is_spike.sum()) for r in results) / size,
        )
        np.testing.assert_allclose(
            stats[f"{group}/filter/mean_gain"],
            sum(float(r.gain.sum()) for r in results) / size,
            rtol=1e-6,
        )

    # The injected spike is the one element of 15 flagged in "body"; "head" has none.
    np.testing.assert_allclose(stats["body/filter/spike_fraction"], 1 / 15, rtol=1e-6)
    assert float(stats["head/filter/spike_fraction"]) == 0.0
    assert float(stats["body/filter/mean_gain"]) < 1.0


def test_jit_and_scan_match_eager():
    tx, params = _tx(), _params()
    grads = jax.tree.map(lambda *gs: jnp.stack(gs), *(_grads(s) for s in range(STEPS)))

    def step(state, g):
        _, state = tx.update(g, state, params)
        return state, (fo.read_stats(state), optax.tree.norm(g))

    _, (history, norms) = jax.jit(lambda s: jax.lax.scan(step, s, grads))(tx.init(params))

    state = tx.init(params)
    for s in range(STEPS):
        state, (eager, _) = step(state, _grads(s))
        for name in EXPECTED_NAMES:
            np.testing.assert_allclose(history[name][s], eager[name], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(history["grad/norm"], norms, rtol=1e-6)
    np.testing.assert_allclose(history["body/filter/spike_fraction"], [0, 0, 0, 1 / 15], rtol=1e-6)


def test_nnx_optimizer():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "kernel" if "kernel" in jax.tree_util.keystr(path) else "bias",
            params,
        )

    def branch():
        return optax.chain(fo.filtered_adam(1e-2, warmup=0, stats=True), fo.monitor("update"))

    tx = optax.chain(
        fo.monitor("grad"),
        optax.clip_by_global_norm(MAX_NORM),
        optax.partition({"kernel": branch(), "bias": branch()}, labels),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 3))

    @nnx.jit
    def train_step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)
        return optax.tree.norm(grads)

    for _ in range(3):
        kernel = np.asarray(model.kernel[...])
        grad_norm = train_step(model, optimizer)
    stats = fo.read_stats(optimizer.opt_state)
    assert sorted(stats) == [
        "bias/filter/mean_gain", "bias/filter/spike_fraction", "bias/update/norm",
        "bias/update/rms", "grad/norm", "grad/rms", "kernel/filter/mean_gain",
        "kernel/filter/spike_fraction", "kernel/update/norm", "kernel/update/rms",
    ]  # fmt: skip
    np.testing.assert_allclose(stats["grad/norm"], grad_norm, rtol=1e-6)
    step_rms = np.sqrt(np.mean(np.square(np.asarray(model.kernel[...]) - kernel)))
    np.testing.assert_allclose(stats["kernel/update/rms"], step_rms, rtol=1e-3)


def test_monitors_add_only_scalar_state():
    with_monitors = jax.eval_shape(_tx(True).init, _params())
    without = jax.eval_shape(_tx(False).init, _params())
    shapes = collections.Counter(x.shape for x in jax.tree.leaves(with_monitors))
    shapes.subtract(x.shape for x in jax.tree.leaves(without))
    # Three monitors, two float32 scalars each; nothing else differs.
    assert +shapes == collections.Counter({(): 6})
    assert not -shapes  # nothing removed either
    monitors = [
        x
        for x in jax.tree.leaves(with_monitors, is_leaf=lambda x: isinstance(x, fo.MonitorState))
        if isinstance(x, fo.MonitorState)
    ]
    assert len(monitors) == 3
    assert all(x.norm.dtype == x.rms.dtype == jnp.float32 for x in monitors)


def test_updates_pass_through_bitwise():
    params = _params()
    monitored, plain = _tx(True), _tx(False)
    state_m, state_p = monitored.init(params), plain.init(params)
    for step in range(STEPS):
        grads = _grads(step)
        updates_m, state_m = monitored.update(grads, state_m, params)
        updates_p, state_p = plain.update(grads, state_p, params)
        jax.tree.map(np.testing.assert_array_equal, updates_m, updates_p)
    # The same stage also returns its input arrays themselves.
    grads = _grads(0)
    out, _ = fo.monitor().update(grads, fo.monitor().init(params))
    assert all(a is b for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(grads)))


def test_colliding_names_get_positions_then_full_paths():
    g = {"w": jnp.array([3.0, 4.0])}
    two = optax.chain(fo.monitor(), optax.scale(2.0), fo.monitor())
    state = two.update(g, two.init(g))[1]
    stats = fo.read_stats(state)
    assert list(stats) == ["0/monitor/norm", "0/monitor/rms", "2/monitor/norm", "2/monitor/rms"]
    np.testing.assert_allclose([stats["0/monitor/norm"], stats["2/monitor/norm"]], [5.0, 10.0])

    # Same chain position inside the filter and the scale stage: field names are needed.
    tx = fo.with_moments(
        filter=optax.chain(fo.monitor(), fo.kalman_filter(stats=True)),
        scale=optax.chain(fo.monitor(), fo.normalize()),
    )
    assert list(fo.read_stats(tx.init(g))) == [
        "filter_state/0/monitor/norm",
        "filter_state/0/monitor/rms",
        "filter/spike_fraction",
        "filter/mean_gain",
        "scale_state/0/monitor/norm",
        "scale_state/0/monitor/rms",
    ]


def test_monitor_rejects_bad_name_and_handles_bf16():
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        fo.monitor("")
    g = {"w": jnp.full((1000,), 1.0 / 3, jnp.bfloat16)}
    state = fo.monitor().update(g, fo.monitor().init(g))[1]
    expected = np.sqrt(1000) * float(g["w"][0])  # the bfloat16 value, summed exactly
    np.testing.assert_allclose(state.norm, expected, rtol=1e-6)
    assert state.norm.dtype == jnp.float32


def test_orbax_round_trip(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    tx, params = _tx(), _params()
    state, update = tx.init(params), jax.jit(tx.update)
    for step in range(STEPS):
        _, state = update(_grads(step), state, params)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "state", jax.eval_shape(tx.init, params))
    assert jax.tree.structure(restored) == jax.tree.structure(state)  # names included
    jax.tree.map(np.testing.assert_array_equal, fo.read_stats(restored), fo.read_stats(state))
