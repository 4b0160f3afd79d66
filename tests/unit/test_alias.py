"""The stages against optax: bitwise Adam, the article's table, and the fused oracle."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import filtered_optax as fo

STEPS = 100


def _params():
    return {
        "dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
        "blocks": [{"w": jnp.full((2, 2), 0.5)}, {"w": jnp.full((5,), -0.3)}],
        "scalar": jnp.asarray(2.0),
    }


def _grads(step: int, params, spikes: bool = False):
    key = jax.random.fold_in(jax.random.PRNGKey(42), step)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, p in zip(keys, leaves):
        g = 0.1 * p + jax.random.normal(k, p.shape)
        if spikes and step % 17 == 16:
            g = g * 1e3
        out.append(g)
    return jax.tree.unflatten(treedef, out)


def _run(tx, steps=STEPS, spikes=False):
    params = _params()
    state = tx.init(params)
    update = jax.jit(tx.update)
    trajectory = []
    for t in range(steps):
        updates, state = update(_grads(t, params, spikes), state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append(params)
    return trajectory, state


def test_disabled_filter_is_bitwise_adam():
    ours, state = _run(fo.filtered_adam(1e-2, eta=1.0, gamma=math.inf))
    ref, _ = _run(optax.adam(1e-2))
    for a, b in zip(ours, ref):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    assert int(optax.tree.get(state, "count")) == STEPS


def test_disabled_filter_equals_adam_when_traced_by_inject_hyperparams():
    # Traced eta/gamma cannot be short-circuited at trace time: the filter runs and
    # returns g exactly, but XLA may fuse the surrounding arithmetic differently, so the
    # promise here is equality to float32 rounding rather than bitwise.
    tx = optax.inject_hyperparams(fo.filtered_adam)(learning_rate=1e-2, eta=1.0, gamma=math.inf)
    ours, _ = _run(tx, steps=30)
    ref, _ = _run(optax.inject_hyperparams(optax.adam)(learning_rate=1e-2), steps=30)
    for a, b in zip(ours, ref):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-8), a, b)


TABLE = {
    "sgd": (fo.sgd(3e-2), optax.sgd(3e-2)),
    "sgd_momentum": (fo.sgd(3e-2, momentum=0.9), optax.sgd(3e-2, momentum=0.9)),
    "sgd_nesterov": (fo.sgd(3e-2, 0.9, nesterov=True), optax.sgd(3e-2, 0.9, nesterov=True)),
    "adam": (fo.adam(1e-2, b1=0.8, b2=0.99), optax.adam(1e-2, b1=0.8, b2=0.99)),
    "nadam": (fo.adam(1e-2, nesterov=True), optax.adam(1e-2, nesterov=True)),
    "adamw": (fo.adamw(1e-2, weight_decay=0.1), optax.adamw(1e-2, weight_decay=0.1)),
    "rmsprop": (fo.rmsprop(1e-2, decay=0.95), optax.rmsprop(1e-2, decay=0.95)),
    "rmsprop_momentum": (
        fo.rmsprop(1e-2, momentum=0.9, nesterov=True, eps_in_sqrt=False, bias_correction=True),
        optax.rmsprop(1e-2, momentum=0.9, nesterov=True, eps_in_sqrt=False, bias_correction=True),
    ),
    "adabelief": (fo.adabelief(1e-2), optax.adabelief(1e-2)),
    "rmsprop_centered": (
        fo.rmsprop(1e-2, decay=0.95, centered=True),
        optax.rmsprop(1e-2, decay=0.95, centered=True),
    ),
    "rmsprop_centered_momentum": (
        fo.rmsprop(1e-2, centered=True, momentum=0.9, eps_in_sqrt=False, bias_correction=True),
        optax.rmsprop(1e-2, centered=True, momentum=0.9, eps_in_sqrt=False, bias_correction=True),
    ),
    "sgd_momentum_bf16_accumulator": (
        fo.sgd(3e-2, 0.9, accumulator_dtype=jnp.bfloat16),
        optax.sgd(3e-2, 0.9, accumulator_dtype=jnp.bfloat16),
    ),
}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_table_optimizer_equals_optax(name):
    ours, ref = TABLE[name]
    a_traj, _ = _run(ours)
    b_traj, _ = _run(ref)
    for a, b in zip(a_traj, b_traj):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)
    # The run moved the parameters, so the comparison is not vacuous.
    assert not np.allclose(a_traj[-1]["dense"]["kernel"], 1.0)


def fused_filtered_adam(learning_rate, b1, b2, eps, **filter_kwargs):
    """The oracle: filter + EMA + scale in one transform, written like optax.scale_by_adam."""

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return optax.ScaleByAdamState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update_fn(grads, state, params=None):
        del params
        c = state.count

        def per_leaf(g, m, v):
            gf = fo.kalman_filter_math(g, m, v, c, b1=b1, b2=b2, **filter_kwargs).filtered
            # Same operation order as optax.scale_by_adam, so rounding matches.
            m = (1 - b1) * gf + b1 * m
            v = (1 - b2) * gf**2 + b2 * v
            t = c + 1
            u = (m / (1 - b1**t)) / (jnp.sqrt(v / (1 - b2**t)) + eps)
            return -learning_rate * u, m, v

        out = jax.tree.map(per_leaf, grads, state.mu, state.nu)
        pick = lambda i: jax.tree.map(lambda _, o: o[i], grads, out)  # noqa: E731
        return pick(0), optax.ScaleByAdamState(c + 1, pick(1), pick(2))

    return optax.GradientTransformation(init_fn, update_fn)


@pytest.mark.parametrize("eta,gamma,warmup", [(1.0, 10.0, 20), (0.7, 3.0, 5), (0.0, 2.0, 0)])
def test_composed_chain_equals_fused_oracle(eta, gamma, warmup):
    kw = dict(eta=eta, gamma=gamma, warmup=warmup, kappa=1e-2)
    ours, state = _run(fo.filtered_adam(1e-2, stats=True, **kw), steps=60, spikes=True)
    ref, _ = _run(fused_filtered_adam(1e-2, 0.9, 0.999, 1e-8, **kw), steps=60, spikes=True)
    for a, b in zip(ours, ref):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)
    # Spikes were present and clipped at the last spike step (step 50 % 17 == 16).
    unfiltered, _ = _run(optax.adam(1e-2), steps=60, spikes=True)
    assert not np.allclose(ours[-1]["dense"]["kernel"], unfiltered[-1]["dense"]["kernel"])


def test_state_is_exactly_adams():
    params = {"w": jnp.ones((7, 3)), "b": jnp.ones(3)}
    for stats in (False, True):
        state = fo.filtered_adam(1e-3, eta=0.5, stats=stats).init(params)
        leaves = jax.tree.leaves(state)
        big = [x for x in leaves if np.ndim(x) > 0]
        # mu and nu for each of the two parameters, nothing else parameter-sized.
        assert len(big) == 2 * len(params)
        assert sum(x.size for x in big) == 2 * sum(p.size for p in params.values())
        assert optax.tree.get(state, "mu")["w"].shape == (7, 3)
        assert optax.tree.get(state, "nu")["b"].shape == (3,)
        scalars = [x for x in leaves if np.ndim(x) == 0]
        assert len(scalars) == (3 if stats else 1)  # count (+ spike_fraction, mean_gain)
    adam_bytes = sum(x.nbytes for x in jax.tree.leaves(optax.adam(1e-3).init(params)))
    ours_bytes = sum(x.nbytes for x in jax.tree.leaves(fo.filtered_adam(1e-3).init(params)))
    assert ours_bytes == adam_bytes


@pytest.mark.parametrize("make", [fo.filtered_adam, fo.adam, fo.adabelief, fo.rmsprop])
def test_zero_gradients_give_finite_zero_updates(make):
    tx = make(1e-2)
    params = {"w": jnp.ones((3, 2))}
    state = tx.init(params)
    for _ in range(30):
        updates, state = tx.update({"w": jnp.zeros((3, 2))}, state, params)
        assert np.all(np.asarray(updates["w"]) == 0.0)
