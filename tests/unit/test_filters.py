"""The filter math against an independent NumPy implementation of README, "The filter"."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import filtered_optax as fo
from tests.numpy_reference import kalman_filter_reference

B1, B2 = 0.9, 0.999
# In float32, 0.999 is 0.99900001287...; over c steps that representation error is
# amplified in 1 - b2^c by about c / (1 - b2^c). Closed-form expectations for float32
# results therefore use the float32 values of the decays.
B1_F32, B2_F32 = float(np.float32(B1)), float(np.float32(B2))


def _random_state(seed: int, n: int, count: int):
    """Random (g, m, v) where v is consistent with m (v >= m^2 holds on average)."""
    rng = np.random.default_rng(seed)
    bc1, bc2 = 1 - B1**count, 1 - B2**count
    m_hat = rng.normal(size=n)
    var = rng.gamma(1.0, size=n)
    v_hat = m_hat**2 + var * rng.uniform(0.2, 2.0, size=n)
    g = m_hat + np.sqrt(var) * rng.standard_t(3, size=n)
    g[: n // 10] *= 50.0  # some spikes
    # Round to float32 so the float64 reference sees exactly the library's inputs.
    return tuple(np.float32(x).astype(np.float64) for x in (g, m_hat * bc1, v_hat * bc2))


@pytest.mark.parametrize("count", [1, 5, 20, 21, 100, 10_000])
@pytest.mark.parametrize("eta,gamma", [(1.0, 10.0), (0.5, 10.0), (0.0, 3.0), (0.9, math.inf)])
def test_kalman_matches_numpy_reference(count, eta, gamma):
    kw = dict(b1=B1, b2=B2, eta=eta, gamma=gamma, warmup=20, kappa=1e-2)
    g, m, v = _random_state(count, 2000, count)
    expected, expected_spikes = kalman_filter_reference(g, m, v, count, **kw)
    # In float64 the library's math is the reference's to rounding.
    with jax.enable_x64(True):
        got64 = fo.kalman_filter_math(jnp.asarray(g), jnp.asarray(m), jnp.asarray(v), count, **kw)
        assert got64.filtered.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got64.filtered), expected, rtol=1e-10, atol=1e-12)
        assert np.array_equal(np.asarray(got64.is_spike), expected_spikes)
    # In float32 (the default) it agrees up to float32 rounding, amplified where
    # v_hat - m_hat^2 cancels; errors are measured in units of the RMS scale s.
    got = fo.kalman_filter_math(*(jnp.asarray(x, jnp.float32) for x in (g, m, v)), count, **kw)
    s = np.sqrt(v / (1 - B2 ** max(count, 1)))
    assert np.max(np.abs(np.asarray(got.filtered) - expected) / s) < 1e-3
    if count >= 20 and gamma < math.inf:
        assert expected_spikes.any()  # the comparison exercised the clipping branch
    if count >= 20 and eta < 1:
        assert np.mean(np.abs(expected - g) > 1e-6 * s) > 0.1  # ... and the smoothing one


def test_matches_reference_under_jit_with_traced_hyperparameters():
    g, m, v = _random_state(3, 500, 40)
    kw = dict(b1=B1, b2=B2, warmup=20, kappa=1e-2)
    expected, _ = kalman_filter_reference(g, m, v, 40, eta=0.7, gamma=4.0, **kw)
    f = jax.jit(
        lambda g, m, v, c, eta, gamma: (
            fo.kalman_filter_math(g, m, v, c, eta=eta, gamma=gamma, **kw).filtered
        )
    )
    got = f(*(jnp.asarray(x, jnp.float32) for x in (g, m, v)), 40, 0.7, 4.0)
    s = np.sqrt(v / (1 - B2**40))
    assert np.max(np.abs(np.asarray(got) - expected) / s) < 1e-3


@pytest.mark.parametrize(
    "case,g,m,v,count",
    [
        ("before warmup", 1e6, 0.1, 1.0, 19),
        ("first step", 1e6, 0.0, 0.0, 0),
        ("v == 0", 1e6, 0.0, 0.0, 50),
        ("g == 0", 0.0, 5.0, 1.0, 50),
    ],
)
def test_gate_is_identity(case, g, m, v, count):
    out = fo.kalman_filter_math(
        jnp.float32(g), jnp.float32(m), jnp.float32(v), count, b1=B1, b2=B2, eta=0.5, gamma=3.0
    )
    assert float(out.filtered) == g, case
    assert not bool(out.is_spike)


def test_infinities_are_clipped_to_the_threshold():
    count, m, v, gamma = 50, 0.2, 2.0, 10.0
    m_hat, s = m / (1 - B1_F32**count), math.sqrt(v / (1 - B2_F32**count))
    g = jnp.array([jnp.inf, -jnp.inf], jnp.float32)
    for eta in (1.0, 0.5):
        out = fo.kalman_filter_math(
            g, jnp.full(2, m), jnp.full(2, v), count, b1=B1, b2=B2, eta=eta, gamma=gamma
        )
        np.testing.assert_allclose(
            np.asarray(out.filtered), [m_hat + gamma * s, m_hat - gamma * s], rtol=2e-5
        )
        assert np.all(np.asarray(out.is_spike))


def test_nan_propagates():
    out = fo.kalman_filter_math(
        jnp.array([jnp.nan, 1.0]), jnp.zeros(2), jnp.ones(2), 50, b1=B1, b2=B2, eta=0.5, gamma=3.0
    )
    assert math.isnan(float(out.filtered[0])) and math.isfinite(float(out.filtered[1]))


@pytest.mark.parametrize("eta,gamma", [(1.0, 10.0), (0.3, 2.0), (0.3, math.inf)])
def test_no_nan_leaks_from_unselected_branches(eta, gamma):
    # Elements hitting every branch: gated (v=0, g=0, count), exact trend (d=0), spike,
    # smoothed - values and jax.grad must be finite everywhere.
    g = jnp.array([1.0, 0.0, 0.5, 40.0, 0.3, -1e30], jnp.float32)
    m = jnp.array([0.0, 0.2, 0.5 * (1 - B1**50), 0.0, 0.0, 0.0], jnp.float32)
    v = jnp.array([0.0, 1.0, 1.0, 1.0, 1.0, 1.0], jnp.float32)

    def total(g, m, v):
        return jnp.sum(
            fo.kalman_filter_math(g, m, v, 50, b1=B1, b2=B2, eta=eta, gamma=gamma).filtered
        )

    assert np.all(
        np.isfinite(
            np.asarray(
                fo.kalman_filter_math(g, m, v, 50, b1=B1, b2=B2, eta=eta, gamma=gamma).filtered
            )
        )
    )
    for arg in range(3):
        grad = jax.grad(total, argnums=arg)(g, m, v)
        assert np.all(np.isfinite(np.asarray(grad))), (arg, grad)


def test_bf16_gradients_and_bf16_mu_dtype():
    key = jax.random.PRNGKey(0)
    params = {"w": jnp.zeros((64,), jnp.bfloat16)}
    tx = fo.filtered_adam(1e-2, eta=0.8, gamma=3.0, warmup=2, mu_dtype=jnp.bfloat16)
    state = tx.init(params)
    assert state[0].mu["w"].dtype == jnp.bfloat16
    for i in range(10):
        g = {
            "w": (
                jax.random.normal(jax.random.fold_in(key, i), (64,)) * (1 + 100 * (i == 7))
            ).astype(jnp.bfloat16)
        }
        updates, state = jax.jit(tx.update)(g, state, params)
        assert updates["w"].dtype == jnp.bfloat16
        assert state[0].mu["w"].dtype == jnp.bfloat16
        assert np.all(np.isfinite(np.asarray(updates["w"], np.float32)))
    # The math upcasts: bf16 inputs give the float32 result rounded once to bf16.
    g, m, v = (jax.random.normal(jax.random.PRNGKey(k), (256,)) for k in (1, 2, 3))
    v = v**2 + 0.5
    low = fo.kalman_filter_math(
        g.astype(jnp.bfloat16),
        m.astype(jnp.bfloat16),
        v.astype(jnp.bfloat16),
        50,
        b1=B1,
        b2=B2,
        eta=0.5,
        gamma=2.0,
    )
    high = fo.kalman_filter_math(
        g.astype(jnp.bfloat16).astype(jnp.float32),
        m.astype(jnp.bfloat16).astype(jnp.float32),
        v.astype(jnp.bfloat16).astype(jnp.float32),
        50,
        b1=B1,
        b2=B2,
        eta=0.5,
        gamma=2.0,
    )
    assert low.filtered.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(low.filtered), np.asarray(high.filtered.astype(jnp.bfloat16))
    )


@pytest.mark.parametrize("noise", ["gaussian", "student_t3", "uniform"])
@pytest.mark.parametrize("gamma", [2.0, 3.0])
def test_false_positive_rate_respects_chebyshev(noise, gamma):
    """On clean i.i.d. noise around a fixed mean, at most 1/gamma^2 of steps are flagged."""
    rng = np.random.default_rng(0)
    n, steps = 4000, 300
    mean = rng.normal(size=n)
    sample = {
        "gaussian": lambda: rng.normal(size=n),
        "student_t3": lambda: rng.standard_t(3, size=n) / math.sqrt(3.0),
        "uniform": lambda: rng.uniform(-math.sqrt(3), math.sqrt(3), size=n),
    }[noise]
    tx = fo.with_moments(filter=fo.kalman_filter(gamma=gamma, stats=True), moments=fo.ema(B1, B2))
    state = tx.init(jnp.zeros(n))
    update = jax.jit(tx.update)
    flagged = []
    for t in range(steps):
        _, state = update(jnp.asarray(mean + sample(), jnp.float32), state)
        if t >= 50:  # let v settle after warmup
            flagged.append(float(fo.filter_stats(state)["spike_fraction"]))
    rate = float(np.mean(flagged))
    assert rate <= 1 / gamma**2, (noise, gamma, rate)


@pytest.mark.parametrize(
    "make,kwargs",
    [
        (fo.spam_filter_math, dict(threshold=4.0)),
        (fo.zscore_filter_math, dict(gamma=2.0)),
        (fo.soft_clip_filter_math, dict(gamma=2.0)),
    ],
)
def test_alternative_filters_clip_large_and_respect_the_gate(make, kwargs):
    g = jnp.array([1e4, -1e4, 0.01, 1e4], jnp.float32)
    m = jnp.zeros(4)
    v = jnp.array([1.0, 1.0, 1.0, 0.0])  # last element: v == 0 -> identity
    out = make(g, m, v, 50, b1=B1, b2=B2, **kwargs)
    f = np.asarray(out.filtered)
    assert abs(f[0]) < 100 and abs(f[1]) < 100 and f[0] > 0 > f[1]
    np.testing.assert_allclose(f[2], 0.01, rtol=0.05)
    assert f[3] == 1e4
    assert list(np.asarray(out.is_spike)) == [True, True, False, False]


def test_spam_rule_exact():
    v = jnp.array([1.0, 1.0, 1.0])
    g = jnp.array([3.0, -3.0, 1.0])
    out = fo.spam_filter_math(g, jnp.zeros(3), v, 1, b1=B1, b2=B2, threshold=4.0)
    np.testing.assert_allclose(np.asarray(out.filtered), [2.0, -2.0, 1.0])


def test_kalman_filter_stage_stats_match_math():
    g = {"a": jnp.array([100.0, 0.1, 0.2]), "b": jnp.array([[0.05]])}
    prev = fo.Moments(
        jnp.asarray(30),
        jax.tree.map(jnp.zeros_like, g),
        jax.tree.map(lambda x: jnp.full_like(x, 0.01), g),
        B1,
        B2,
    )
    stage = fo.kalman_filter(eta=0.5, gamma=3.0, stats=True)
    out, stats = stage.update(g, stage.init(g), prev_moments=prev)
    results = [
        fo.kalman_filter_math(
            x, jnp.zeros_like(x), jnp.full_like(x, 0.01), 30, b1=B1, b2=B2, eta=0.5, gamma=3.0
        )
        for x in (g["a"], g["b"])
    ]
    assert float(stats.spike_fraction) == pytest.approx(1 / 4)
    gains = np.concatenate([np.asarray(r.gain).ravel() for r in results])
    assert float(stats.mean_gain) == pytest.approx(float(gains.mean()), rel=1e-6)
    # The stage runs the math compiled inside lax.cond, the reference op by op.
    np.testing.assert_allclose(np.asarray(out["a"]), np.asarray(results[0].filtered), rtol=1e-5)


def test_filter_outside_with_moments_raises_clear_type_error():
    tx = optax.chain(fo.kalman_filter(), optax.scale(-1e-3))
    params = {"w": jnp.ones(3)}
    with pytest.raises(TypeError, match="prev_moments"):
        tx.update(params, tx.init(params), params)
    tx = optax.chain(fo.normalize(), optax.scale(-1e-3))
    with pytest.raises(TypeError, match="moments="):
        tx.update(params, tx.init(params), params)
