"""The DESIGN.md test battery, run on every public optimizer in tests/registry.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.registry import (
    CONVERGENCE_LR,
    DEFAULT_CONVERGENCE_LR,
    MU_DTYPE,
    OPTIMIZERS,
    ids,
)

PARAMS = {"w": jnp.array([1.0, -2.0, 0.5]), "b": {"c": jnp.ones((2, 2))}}

pytestmark = pytest.mark.parametrize("name,make,kwargs", OPTIMIZERS, ids=ids())


def _grads(params, step=0):
    key = jax.random.fold_in(jax.random.PRNGKey(1), step)
    return jax.tree.map(lambda p: p + 0.1 * jax.random.normal(key, p.shape, p.dtype), params)


def _minimize(tx, loss, params, steps):
    def body(carry, _):
        params, state = carry
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return params


def test_converges_on_parabola_rosenbrock_and_matrix_target(name, make, kwargs):
    lr_parabola, lr_rosenbrock, lr_matrix = CONVERGENCE_LR.get(name, DEFAULT_CONVERGENCE_LR)
    tx = make(lr_parabola, **kwargs)

    def parabola(p):
        return jnp.sum((p["x"] - 3.0) ** 2)

    out = jax.jit(lambda p: _minimize(tx, parabola, p, 2000))({"x": jnp.zeros(4)})
    assert parabola(out) < 1e-2 * parabola({"x": jnp.zeros(4)})

    def rosenbrock(p):
        x, y = p["xy"][0], p["xy"][1]
        return (1 - x) ** 2 + 100 * (y - x**2) ** 2

    tx = make(lr_rosenbrock, **kwargs)
    start = {"xy": jnp.array([-1.0, 1.5])}
    out = jax.jit(lambda p: _minimize(tx, rosenbrock, p, 4000))(start)
    assert rosenbrock(out) < 0.1 * rosenbrock(start)

    target = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 6))

    def matrix(p):
        return jnp.mean((x @ p["m"] - x @ target) ** 2)

    tx = make(lr_matrix, **kwargs)
    start = {"m": jnp.zeros((6, 4))}
    out = jax.jit(lambda p: _minimize(tx, matrix, p, 2000))(start)
    assert matrix(out) < 0.05 * matrix(start)


def test_no_recompilation_on_second_call(name, make, kwargs):
    tx = make(1e-2, **kwargs)
    update = jax.jit(tx.update)
    state = tx.init(PARAMS)
    _, state = update(_grads(PARAMS, 0), state, PARAMS)
    size = update._cache_size()
    _, state = update(_grads(PARAMS, 1), state, PARAMS)
    assert update._cache_size() == size == 1


def test_unknown_extra_args_accepted_under_jit(name, make, kwargs):
    tx = make(1e-2, **kwargs)
    state = tx.init(PARAMS)
    plain, _ = jax.jit(tx.update)(_grads(PARAMS), state, PARAMS)
    extra, _ = jax.jit(lambda g, s, p: tx.update(g, s, p, some_unknown_arg=jnp.ones(2)))(
        _grads(PARAMS), state, PARAMS
    )
    jax.tree.map(np.testing.assert_array_equal, plain, extra)


def test_inject_hyperparams_equals_plain(name, make, kwargs):
    plain = make(1e-2, **kwargs)
    injected = optax.inject_hyperparams(make)(learning_rate=1e-2, **kwargs)
    p1 = p2 = PARAMS
    s1, s2 = plain.init(PARAMS), injected.init(PARAMS)
    for t in range(25):
        u1, s1 = plain.update(_grads(p1, t), s1, p1)
        u2, s2 = injected.update(_grads(p2, t), s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    # Injected hyperparameters are float32 arrays, plain ones Python floats folded at
    # trace time; optax.adabelief itself differs by 1.4e-5 between the two after 25 steps.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=5e-5, atol=1e-7), p1, p2)


def test_update_dtype_is_gradient_dtype(name, make, kwargs):
    for dtype in (jnp.float32, jnp.bfloat16):
        params = jax.tree.map(lambda p, dtype=dtype: p.astype(dtype), PARAMS)
        tx = make(1e-2, **kwargs)
        state = tx.init(params)
        for t in range(3):
            updates, state = jax.jit(tx.update)(_grads(params, t), state, params)
        for u in jax.tree.leaves(updates):
            assert u.dtype == dtype


def test_mu_dtype_is_honoured(name, make, kwargs):
    if name not in MU_DTYPE:
        pytest.skip("keeps no first moment with a configurable dtype")
    tx = make(1e-2, mu_dtype=jnp.bfloat16, **kwargs)
    state = tx.init(PARAMS)
    for t in range(3):
        _, state = jax.jit(tx.update)(_grads(PARAMS, t), state, PARAMS)
    assert all(m.dtype == jnp.bfloat16 for m in jax.tree.leaves(optax.tree.get(state, "mu")))
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(optax.tree.get(state, "nu")))


def test_state_stable_under_lax_cond(name, make, kwargs):
    tx = make(1e-2, **kwargs)
    state = tx.init(PARAMS)

    @jax.jit
    def step(state, flag):
        return jax.lax.cond(
            flag, lambda s: tx.update(_grads(PARAMS), s, PARAMS)[1], lambda s: s, state
        )

    new = step(state, True)
    assert jax.tree.structure(new) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state)):
        assert a.shape == b.shape and a.dtype == b.dtype


def test_multisteps_first_update_is_zero(name, make, kwargs):
    tx = optax.MultiSteps(make(1e-2, **kwargs), every_k_schedule=3)
    state = tx.init(PARAMS)
    updates, state = tx.update(_grads(PARAMS), state, PARAMS)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    for t in range(2):
        updates, state = tx.update(_grads(PARAMS, t), state, PARAMS)
    assert any(np.any(np.asarray(u) != 0) for u in jax.tree.leaves(updates))


def test_tree_map_params(name, make, kwargs):
    tx = make(1e-2, **kwargs)
    state = tx.init(PARAMS)
    doubled = optax.tree.map_params(tx.init, lambda p: p * 0 + 7.0, state)
    assert jax.tree.structure(doubled) == jax.tree.structure(state)


def test_eval_shape_of_init(name, make, kwargs):
    tx = make(1e-2, **kwargs)
    shapes = jax.eval_shape(tx.init, PARAMS)
    real = tx.init(PARAMS)
    assert jax.tree.structure(shapes) == jax.tree.structure(real)
    for s, r in zip(jax.tree.leaves(shapes), jax.tree.leaves(real)):
        assert s.shape == r.shape and s.dtype == r.dtype


def test_constant_schedule_equals_scalar_lr(name, make, kwargs):
    scalar = make(1e-2, **kwargs)
    schedule = make(optax.constant_schedule(1e-2), **kwargs)
    s1, s2 = scalar.init(PARAMS), schedule.init(PARAMS)
    for t in range(5):
        u1, s1 = scalar.update(_grads(PARAMS, t), s1, PARAMS)
        u2, s2 = schedule.update(_grads(PARAMS, t), s2, PARAMS)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, u2)


def test_inside_partition_masked_and_apply_if_finite(name, make, kwargs):
    labels = {"w": "opt", "b": {"c": "frozen"}}
    part = optax.partition({"opt": make(1e-2, **kwargs), "frozen": optax.set_to_zero()}, labels)
    updates, _ = part.update(_grads(PARAMS), part.init(PARAMS), PARAMS)
    assert np.all(np.asarray(updates["b"]["c"]) == 0) and np.any(np.asarray(updates["w"]) != 0)

    masked = optax.masked(make(1e-2, **kwargs), {"w": True, "b": {"c": False}})
    updates, _ = masked.update(_grads(PARAMS), masked.init(PARAMS), PARAMS)
    np.testing.assert_array_equal(updates["b"]["c"], _grads(PARAMS)["b"]["c"])

    guarded = optax.apply_if_finite(make(1e-2, **kwargs), max_consecutive_errors=3)
    state = guarded.init(PARAMS)
    bad = jax.tree.map(lambda g: g.at[..., 0].set(jnp.nan), _grads(PARAMS))
    updates, new_state = guarded.update(bad, state, PARAMS)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    for a, b in zip(jax.tree.leaves(new_state.inner_state), jax.tree.leaves(state.inner_state)):
        np.testing.assert_array_equal(a, b)  # the NaN never reached the state
    assert int(new_state.notfinite_count) == 1


def test_schedule_a_filter_hyperparameter(name, make, kwargs):
    if not name.startswith("filtered"):
        pytest.skip("no filter hyperparameters")
    arg = "filter_gamma" if name == "filtered_muon" else "gamma"
    gamma = optax.linear_schedule(50.0, 2.0, transition_steps=20)
    fixed = {k: v for k, v in kwargs.items() if k != arg}
    tx = optax.inject_hyperparams(make)(learning_rate=1e-2, **fixed, **{arg: gamma})
    state = tx.init(PARAMS)
    for t in range(5):
        _, state = jax.jit(tx.update)(_grads(PARAMS, t), state, PARAMS)
    # The state holds the value used by the last (fifth, step index 4) update.
    assert float(state.hyperparams[arg]) == pytest.approx(50.0 - 48.0 * 4 / 20)
