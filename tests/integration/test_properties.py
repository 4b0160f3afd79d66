"""Property-based tests (hypothesis): random pytrees through every public optimizer.

Random trees of 1-3 leaves, each of rank 0-4 with sizes 0-3 (so 0-size arrays and
scalars occur), in float16 / bfloat16 / float32 (float64 under ``jax.enable_x64``), with
gradients drawn over six decades plus exact zeros. Properties: finite in -> finite out,
update dtype and shape = gradient's, state structure / shapes / dtypes stable across
steps, jit == eager, and the disabled filter (``eta=1, gamma=inf``) == ``optax.adam``
bitwise.

float16 runs use the documented float16 settings (README "Reliability"): an ``eps`` that
float16 can represent (1e-4 here; the default 1e-8 rounds to 0, so a zero gradient gives
0/0) and gradients below 256 in magnitude (g**2 must fit float16's 65504).

Example counts are explicit (``max_examples``) so the whole file stays near a minute on
two CPU cores; ``derandomize=True`` makes every run draw the same examples.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import filtered_optax as fo
from tests.registry import OPTIMIZERS, ids

EXAMPLES_PER_OPTIMIZER = 4
EXAMPLES_X64_PER_OPTIMIZER = 2
EXAMPLES_ADAM_EQUALITY = 15
# Steps per example: past the default filter warmup (20), so the filter is active.
STEPS = 25

SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DTYPES = {"float16": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32}

# The float16 envelope: an eps float16 can represent, on every eps-like argument.
F16_KWARGS = {
    "filtered_adam": {"eps": 1e-4},
    "filtered_adam_smoothing": {"eps": 1e-4},
    "filtered_adamw": {"eps": 1e-4},
    "adam": {"eps": 1e-4},
    "adamw": {"eps": 1e-4},
    "rmsprop": {"eps": 1e-4},
    "adabelief": {"eps": 1e-4, "eps_root": 1e-8},
    "muon": {"adam_eps": 1e-4},
    "filtered_muon": {"adam_eps": 1e-4},
}
# Leaf names: Muon routes by name and rank, so both sides get exercised.
NAMES = ("kernel", "bias", "w")

shapes = st.lists(st.integers(0, 3), min_size=0, max_size=4).map(tuple)
trees = st.dictionaries(st.sampled_from(NAMES), shapes, min_size=1, max_size=3)


def _gradient(rng: np.random.Generator, shape, dtype, max_abs: float):
    """Magnitudes log-uniform over [max_abs * 1e-6, max_abs], random signs, ~20% zeros."""
    mag = max_abs * 10.0 ** rng.uniform(-6, 0, size=shape)
    g = np.where(rng.random(size=shape) < 0.2, 0.0, mag * rng.choice([-1.0, 1.0], size=shape))
    return jnp.asarray(g, dtype)


def _stream(tree_shapes, dtype, seed, steps, max_abs):
    rng = np.random.default_rng(seed)
    params = {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in tree_shapes.items()}
    grads = [
        {k: _gradient(rng, s, dtype, max_abs) for k, s in tree_shapes.items()} for _ in range(steps)
    ]
    return params, grads


def _signature(tree):
    return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


def _finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x, np.float64)))) for x in jax.tree.leaves(tree))


def _check_run(tx, params, grads, tol):
    """Runs the steps in a jitted lax.scan, then one more step jitted and eagerly.

    The scan itself enforces that the state keeps its structure, shapes and dtypes
    (a carry that changes type is a TypeError); the signature is checked again after.
    """
    state = tx.init(params)
    start = _signature(state)

    def body(s, g):
        u, s = tx.update(g, s, params)
        return s, u

    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads[:-1])
    state, updates = jax.jit(lambda s: jax.lax.scan(body, s, stacked))(state)
    assert _finite(updates) and _finite(state), "finite in -> finite out"
    assert jax.tree.structure(updates) == jax.tree.structure(grads[0])
    for ui, gi in zip(jax.tree.leaves(updates), jax.tree.leaves(grads[0])):
        assert ui.dtype == gi.dtype and ui.shape[1:] == gi.shape
    assert _signature(state) == start, "state structure / shapes / dtypes stable"
    # jit == eager on the last step, from the state the scan reached.
    u_jit, s_jit = jax.jit(tx.update)(grads[-1], state, params)
    u_eager, s_eager = tx.update(grads[-1], state, params)
    assert _finite(u_jit) and _signature(s_jit) == start and _signature(s_eager) == start
    for a, b in zip(jax.tree.leaves((u_jit, s_jit)), jax.tree.leaves((u_eager, s_eager))):
        np.testing.assert_allclose(
            np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol * 1e-2
        )


@pytest.mark.parametrize("name,make,kwargs", OPTIMIZERS, ids=ids())
@settings(max_examples=EXAMPLES_PER_OPTIMIZER, **SETTINGS)
@given(
    tree=trees,
    dtype=st.sampled_from(sorted(DTYPES)),
    seed=st.integers(0, 2**31 - 1),
    lr=st.sampled_from([1e-3, 1e-1]),
)
def test_random_trees_through_every_optimizer(name, make, kwargs, tree, dtype, seed, lr):
    extra = F16_KWARGS.get(name, {}) if dtype == "float16" else {}
    max_abs = 100.0 if dtype == "float16" else 1e3
    params, grads = _stream(tree, DTYPES[dtype], seed, steps=STEPS, max_abs=max_abs)
    # jit vs eager: fused vs op-by-op rounding (see test_reliability), in the leaf dtype.
    tol = {"float16": 2e-2, "bfloat16": 2e-2, "float32": 1e-4}[dtype]
    _check_run(make(lr, **{**kwargs, **extra}), params, grads, tol)


@pytest.mark.parametrize("name,make,kwargs", OPTIMIZERS, ids=ids())
@settings(max_examples=EXAMPLES_X64_PER_OPTIMIZER, **SETTINGS)
@given(tree=trees, seed=st.integers(0, 2**31 - 1))
def test_random_float64_trees(name, make, kwargs, tree, seed):
    with jax.enable_x64(True):
        params, grads = _stream(tree, jnp.float64, seed, steps=STEPS, max_abs=1e3)
        assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(params))
        # Muon's Newton-Schulz computes in float32 by default (compute_dtype=None).
        _check_run(make(1e-2, **kwargs), params, grads, tol=1e-5 if "muon" in name else 1e-10)


@settings(max_examples=EXAMPLES_ADAM_EQUALITY, **SETTINGS)
@given(
    tree=trees,
    dtype=st.sampled_from(["bfloat16", "float32"]),
    seed=st.integers(0, 2**31 - 1),
    b1=st.sampled_from([0.0, 0.5, 0.9]),
    b2=st.sampled_from([0.9, 0.999]),
    mu_dtype=st.sampled_from([None, "bfloat16"]),
    steps=st.integers(1, 30),
)
def test_disabled_filter_is_optax_adam_bitwise(tree, dtype, seed, b1, b2, mu_dtype, steps):
    params, grads = _stream(tree, DTYPES[dtype], seed, steps=steps, max_abs=1e3)
    ours = fo.filtered_adam(1e-2, b1=b1, b2=b2, eta=1.0, gamma=math.inf, mu_dtype=mu_dtype)
    ref = optax.adam(1e-2, b1=b1, b2=b2, mu_dtype=mu_dtype)

    def run(tx):
        def body(carry, g):
            p, s = carry
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), u

        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)
        return jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), stacked))(params)

    (p1, s1), u1 = run(ours)
    (p2, s2), u2 = run(ref)
    jax.tree.map(np.testing.assert_array_equal, (p1, u1), (p2, u2))
    jax.tree.map(np.testing.assert_array_equal, optax.tree.get(s1, "mu"), optax.tree.get(s2, "mu"))
    jax.tree.map(np.testing.assert_array_equal, optax.tree.get(s1, "nu"), optax.tree.get(s2, "nu"))
