"""Long runs: the step counter near int32 max, 20k steps, and low-precision states.

Documented float16 / bfloat16 settings (README "Reliability"), each asserted below:

* float32 (or bfloat16) parameters with ``mu_dtype=jnp.bfloat16``: safe - bfloat16 has
  float32's exponent range, ``nu`` stays in the parameter dtype.
* ``mu_dtype=jnp.float16``: ``mu`` overflows once ``|m|`` passes 65504. A single spike
  after warmup is clipped by the filter and cannot do it; in ``optax.adam`` it does.
* float16 parameters (so float16 gradients and ``nu``): only with an ``eps`` float16 can
  represent (>= 1e-4 recommended; the default 1e-8 rounds to 0, so a zero gradient gives
  0/0 = NaN and a gradient below ~1e-3 gives an infinite step) and gradients below 256 in
  magnitude (``g**2`` must fit in 65504; above it ``nu`` becomes inf and the coordinate
  stops moving). All of this is inherited from Adam: ``optax.adam`` is bitwise the same.
  The filter does clip a one-off large gradient after warmup, so it cannot overflow
  ``nu`` the way it does in ``optax.adam``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import filtered_optax as fo
from tests.registry import OPTIMIZERS, ids

INT32_MAX = 2**31 - 1
PARAMS = {"bias": jnp.linspace(-1.0, 1.0, 5), "kernel": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)}


def _finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x, np.float64)))) for x in jax.tree.leaves(tree))


def _has_count(x) -> bool:
    return "count" in getattr(x, "_fields", ())  # NamedTuple states (tuple.count is a method)


def _counts(state):
    return [int(x.count) for x in jax.tree.leaves(state, is_leaf=_has_count) if _has_count(x)]


# ---------------------------------------------------------------------------------------
# The step counter saturates at int32 max.


@pytest.mark.parametrize("name,make,kwargs", OPTIMIZERS, ids=ids())
def test_count_saturates_near_int32_max(name, make, kwargs):
    tx = make(1e-2, **kwargs)
    update = jax.jit(tx.update)
    state = tx.init(PARAMS)
    for t in range(25):  # real moments first (past the filter's warmup)
        _, state = update(jax.tree.map(lambda p, t=t: p + 0.1 * t, PARAMS), state, PARAMS)
    if not _counts(state):
        pytest.skip("keeps no step counter")
    near = optax.tree.set(state, count=jnp.asarray(INT32_MAX - 3, jnp.int32))
    far = optax.tree.set(state, count=jnp.asarray(10_000_000, jnp.int32))
    for t in range(6):
        grads = jax.tree.map(lambda p, t=t: p - 0.05 * t, PARAMS)
        u_near, near = update(grads, near, PARAMS)
        u_far, far = update(grads, far, PARAMS)
        assert _finite(u_near) and _finite(near)
        # Bias corrections are 1 in float32 at both counts: the same update.
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), u_near, u_far
        )
    assert set(_counts(near)) == {INT32_MAX}  # saturated, not wrapped to negative


def test_filter_math_at_saturated_count():
    """The filter's own use of the count (bias correction, rho_c, warmup gate) is safe."""
    r = fo.kalman_filter_math(
        jnp.array([0.5, 50.0]),
        jnp.array([0.1, 0.1]),
        jnp.array([0.02, 0.02]),
        jnp.int32(INT32_MAX),
        b1=0.9,
        b2=0.999,
        eta=0.5,
        gamma=10.0,
    )
    assert _finite(r.filtered)
    np.testing.assert_array_equal(r.is_spike, [False, True])


# ---------------------------------------------------------------------------------------
# 20k steps on an ill-conditioned quadratic.

DIM = 32
CURVATURES = jnp.logspace(-3, 3, DIM)  # condition number 1e6


def _quadratic(x):
    return 0.5 * jnp.sum(CURVATURES * x**2)


LONG = [
    ("filtered_adam", lambda lr: fo.filtered_adam(lr)),
    ("filtered_adam_smoothing", lambda lr: fo.filtered_adam(lr, eta=0.7, gamma=5.0)),
    ("filtered_adamw", lambda lr: fo.filtered_adamw(lr, weight_decay=0.0)),
    ("adam", lambda lr: fo.adam(lr)),
    ("adabelief", lambda lr: fo.adabelief(lr)),
    ("rmsprop", lambda lr: fo.rmsprop(lr)),
]


@pytest.mark.parametrize("name,make", LONG, ids=[n for n, _ in LONG])
def test_20k_steps_on_ill_conditioned_quadratic(name, make):
    steps = 20_000
    tx = make(optax.cosine_decay_schedule(1e-2, steps))
    x0 = jnp.ones(DIM)

    def body(carry, _):
        x, state = carry
        updates, state = tx.update(jax.grad(_quadratic)(x), state, x)
        x = optax.apply_updates(x, updates)
        return (x, state), (_quadratic(x), jnp.all(jnp.isfinite(x)))

    (x, state), (loss, finite) = jax.jit(
        lambda x: jax.lax.scan(body, (x, tx.init(x)), None, length=steps)
    )(x0)
    assert bool(jnp.all(finite)) and _finite(state)
    assert set(_counts(state)) == {steps}  # moments and schedule counted every step
    assert float(loss[-1]) < 1e-5 * float(_quadratic(x0)), float(loss[-1])
    # ... including the flattest direction (curvature 1e-3), which needs all 20k steps.
    assert abs(float(x[0])) < 0.05


# ---------------------------------------------------------------------------------------
# Low-precision states.


def _spike_run(tx, params, spike, at=30, steps=40):
    update = jax.jit(tx.update)
    state = tx.init(params)
    history = []
    for t in range(steps):
        g = jax.tree.map(lambda p, t=t: jnp.ones_like(p) * (1 + 0.1 * math.sin(t)), params)
        if t == at:
            g = jax.tree.map(lambda x: x * spike, g)
        u, state = update(g, state, params)
        history.append(u)
    return history, state


def test_bf16_mu_dtype_never_overflows():
    """bfloat16 mu has float32's range: even a 1e30 gradient leaves it finite."""
    params = {"w": jnp.zeros(4)}
    for tx in (fo.filtered_adam(1e-3, mu_dtype=jnp.bfloat16), fo.adam(1e-3, mu_dtype=jnp.bfloat16)):
        history, state = _spike_run(tx, params, 1e30)
        mu = optax.tree.get(state, "mu")["w"]
        assert mu.dtype == jnp.bfloat16 and _finite(mu) and _finite(history)


def test_f16_mu_dtype_overflows_in_adam_not_in_filtered_adam():
    params = {"w": jnp.zeros(4)}
    history, state = _spike_run(fo.filtered_adam(1e-3, mu_dtype=jnp.float16), params, 1e6)
    assert optax.tree.get(state, "mu")["w"].dtype == jnp.float16
    assert _finite(state) and _finite(history)
    history, state = _spike_run(optax.adam(1e-3, mu_dtype=jnp.float16), params, 1e6)
    assert not _finite(optax.tree.get(state, "mu"))  # 0.1 * 1e6 > 65504
    assert not _finite(history[-1])


@pytest.mark.parametrize("make", [fo.filtered_adam, optax.adam], ids=["filtered_adam", "adam"])
def test_f16_params_need_an_eps_float16_can_represent(make):
    params = {"w": jnp.zeros(3, jnp.float16)}
    zero = {"w": jnp.array([0.0, 1e-4, 1.0], jnp.float16)}

    def step(tx):
        return tx.update(zero, tx.init(params), params)[0]["w"]

    default = step(make(1e-3))  # eps=1e-8 is 0 in float16
    assert bool(jnp.isnan(default[0])) and bool(jnp.isinf(default[1]))
    safe = step(make(1e-3, eps=1e-4))
    assert safe.dtype == jnp.float16 and _finite(safe) and float(safe[0]) == 0.0
    # Inherited from Adam: ours is bitwise optax's.
    np.testing.assert_array_equal(
        step(fo.filtered_adam(1e-3, eps=1e-4)), step(optax.adam(1e-3, eps=1e-4))
    )


def test_f16_nu_overflow_sustained_vs_one_spike():
    params = {"w": jnp.zeros(2, jnp.float16)}
    # Sustained |g| >= 256: g**2 overflows float16, nu = inf, the coordinate stops (both).
    for tx in (fo.filtered_adam(1e-3, eps=1e-4), optax.adam(1e-3, eps=1e-4)):
        state = tx.init(params)
        u, state = tx.update({"w": jnp.array([300.0, 1.0], jnp.float16)}, state, params)
        nu = optax.tree.get(state, "nu")["w"]
        assert bool(jnp.isinf(nu[0])) and float(u["w"][0]) == 0.0 and float(u["w"][1]) != 0.0
    # One spike after warmup: the filter clips it before it reaches nu; Adam does not.
    history, state = _spike_run(fo.filtered_adam(1e-3, eps=1e-4), params, 1e3)
    assert _finite(state) and float(history[-1]["w"][0]) < 0
    history, state = _spike_run(optax.adam(1e-3, eps=1e-4), params, 1e3)
    assert not _finite(optax.tree.get(state, "nu"))
    assert float(history[-1]["w"][0]) == 0.0  # frozen: every later step divides by inf


def test_f16_long_run_within_the_documented_envelope():
    """float16 parameters, eps=1e-4, gradients < 256: 3000 steps stay finite and converge."""
    tx = fo.filtered_adam(3e-3, eps=1e-4)
    curv = jnp.logspace(-1, 1, 8).astype(jnp.float16)
    x0 = jnp.full(8, 4.0, jnp.float16)

    def body(carry, _):
        x, state = carry
        updates, state = tx.update(curv * x, state, x)
        x = optax.apply_updates(x, updates)
        return (x, state), jnp.all(jnp.isfinite(x))

    (x, state), finite = jax.jit(lambda x: jax.lax.scan(body, (x, tx.init(x)), None, length=3000))(
        x0
    )
    assert x.dtype == jnp.float16 and bool(jnp.all(finite)) and _finite(state)
    assert float(jnp.max(jnp.abs(x))) < 0.2
