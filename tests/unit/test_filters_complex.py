"""Complex parameters: the filters' complex generalization, against a NumPy reference.

For a complex gradient the spike test compares the modulus |g - m_hat| with sqrt(v_hat),
v being the EMA of |g|^2; a spike is clipped along d / |d| (its phase is kept); the gain
acts on the modulus. Real inputs are the special case d / |d| = sign(d).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import filtered_optax as fo
from tests.numpy_reference import adam_with_filter_reference, kalman_filter_reference

B1, B2 = 0.9, 0.999
# Decays exact in float32 (1 - b is a power of two), for whole-optimizer comparisons: at
# count 1 the noise estimate divides v_hat - |m_hat|^2 (zero up to rounding) by
# 1 - rho = 1e-4, so float32's rounding of 1 - 0.999 alone would move it visibly.
EXACT_B1, EXACT_B2 = 0.875, 1 - 2.0**-10


def _complex(key, shape, scale=1.0):
    re, im = jax.random.normal(key, (2, *shape))
    return (scale * (re + 1j * im)).astype(jnp.complex64)


def _moments(count):
    """Previous moments as Adam would hold them after ``count`` steps of unit-size noise."""
    key = jax.random.PRNGKey(count)
    m = _complex(key, (64,), 0.1)
    v = jnp.abs(_complex(jax.random.fold_in(key, 1), (64,))) ** 2 + 0.5
    return m, v.astype(jnp.complex64)  # optax keeps nu in the parameters' (complex) dtype


@pytest.mark.parametrize("count", [0, 3, 30])
@pytest.mark.parametrize("eta,gamma", [(1.0, 10.0), (0.5, 2.0), (0.0, 1.0)])
def test_kalman_math_on_complex_gradients_matches_numpy_reference(count, eta, gamma):
    m, v = _moments(count)
    g = _complex(jax.random.PRNGKey(100 + count), (64,), 3.0)
    g = g.at[:4].multiply(1e3)  # a few spikes
    kw = dict(b1=B1, b2=B2, eta=eta, gamma=gamma, warmup=2, kappa=1e-2)
    ours = fo.kalman_filter_math(g, m, v, count, **kw)
    ref, spikes = kalman_filter_reference(np.asarray(g), np.asarray(m), np.asarray(v), count, **kw)
    assert ours.filtered.dtype == jnp.complex64
    np.testing.assert_allclose(np.asarray(ours.filtered), ref, rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(np.asarray(ours.is_spike), spikes)
    if count >= 2:
        assert spikes[:4].all()  # the case is not vacuous: spikes were flagged
    assert ours.gain.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(ours.gain)))


def test_a_clipped_complex_spike_keeps_its_phase_and_lands_on_the_threshold():
    m, v = _moments(30)
    g = _complex(jax.random.PRNGKey(7), (64,), 1e3)
    r = fo.kalman_filter_math(g, m, v, 30, b1=B1, b2=B2, gamma=3.0)
    assert bool(jnp.all(r.is_spike))
    m_hat, v_hat = m / (1 - B1**30), jnp.real(v) / (1 - B2**30)
    d, out = g - m_hat, r.filtered - m_hat
    np.testing.assert_allclose(jnp.angle(out), jnp.angle(d), atol=1e-5)
    np.testing.assert_allclose(jnp.abs(out), 3.0 * jnp.sqrt(v_hat), rtol=1e-4)


@pytest.mark.parametrize(
    "math_fn",
    [
        fo.kalman_filter_math,
        fo.zscore_filter_math,
        fo.soft_clip_filter_math,
        fo.spam_filter_math,
    ],
)
def test_every_filter_on_a_real_valued_complex_input_equals_the_real_filter(math_fn):
    m, v = _moments(30)
    m, v = jnp.real(m), jnp.real(v)
    g = 5.0 * jax.random.normal(jax.random.PRNGKey(3), (64,))
    g = g.at[:3].set(jnp.asarray([400.0, -900.0, 1e4]))
    real = math_fn(g, m, v, 30, b1=B1, b2=B2)
    cplx = math_fn(
        g.astype(jnp.complex64), m.astype(jnp.complex64), v.astype(jnp.complex64), 30, b1=B1, b2=B2
    )
    np.testing.assert_allclose(np.asarray(cplx.filtered), np.asarray(real.filtered), rtol=1e-6)
    assert np.all(np.imag(np.asarray(cplx.filtered)) == 0)
    np.testing.assert_array_equal(np.asarray(cplx.is_spike), np.asarray(real.is_spike))
    assert bool(jnp.any(real.is_spike))


@pytest.mark.parametrize(
    "math_fn", [fo.zscore_filter_math, fo.soft_clip_filter_math, fo.spam_filter_math]
)
def test_the_other_filters_keep_a_complex_spikes_phase(math_fn):
    m, v = _moments(30)
    g = _complex(jax.random.PRNGKey(11), (64,), 1e4)
    r = math_fn(g, m, v, 30, b1=B1, b2=B2)
    assert bool(jnp.all(r.is_spike))
    centre = 0.0 if math_fn is fo.spam_filter_math else m / (1 - B1**30)
    np.testing.assert_allclose(jnp.angle(r.filtered - centre), jnp.angle(g - centre), atol=1e-4)
    assert bool(jnp.all(jnp.abs(r.filtered) < jnp.abs(g)))


def test_an_infinite_complex_gradient_is_clipped_to_a_finite_value():
    m, v = _moments(30)
    g = jnp.full((64,), complex(np.inf, 0.0), jnp.complex64).at[1].set(complex(0.0, -np.inf))
    r = fo.kalman_filter_math(g, m, v, 30, b1=B1, b2=B2)
    assert bool(jnp.all(jnp.isfinite(r.filtered)))
    assert float(jnp.real(r.filtered[0] - m[0] / (1 - B1**30))) > 0
    assert float(jnp.imag(r.filtered[1] - m[1] / (1 - B1**30))) < 0


@pytest.mark.parametrize("eta,gamma,warmup", [(1.0, 3.0, 2), (0.6, 2.0, 0)])
def test_filtered_adam_on_complex_parameters_matches_numpy_reference(eta, gamma, warmup):
    key = jax.random.PRNGKey(0)
    grads = [
        np.asarray(_complex(jax.random.fold_in(key, t), (5,), 100.0 if t % 9 == 8 else 1.0))
        for t in range(30)
    ]
    kw = dict(eta=eta, gamma=gamma, warmup=warmup, kappa=1e-2)
    tx = fo.filtered_adam(1e-2, b1=EXACT_B1, b2=EXACT_B2, **kw)
    params = jnp.zeros(5, jnp.complex64)
    state = tx.init(params)
    ours = []
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, params)
        ours.append(np.asarray(updates))
    ref = adam_with_filter_reference(
        grads, lr=1e-2, b1=EXACT_B1, b2=EXACT_B2, eps=1e-8, filter_kwargs=kw
    )
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    plain = adam_with_filter_reference(
        grads,
        lr=1e-2,
        b1=EXACT_B1,
        b2=EXACT_B2,
        eps=1e-8,
        filter_kwargs=dict(eta=1.0, gamma=np.inf, warmup=0, kappa=0.0),
    )
    assert not np.allclose(ref[-1], plain[-1])  # the filter changed the run


@pytest.mark.parametrize("make", [fo.filtered_adam, fo.filtered_adamw, fo.adam, fo.adamw])
def test_complex_mu_dtype_is_accepted_as_optax_accepts_it(make):
    state = make(0.1, mu_dtype=jnp.complex64).init(jnp.zeros(2, jnp.float32))
    assert optax.tree.get(state, "mu").dtype == jnp.complex64
    assert (
        optax.adam(0.1, mu_dtype=jnp.complex64).init(jnp.zeros(2)).__getitem__(0).mu.dtype
        == jnp.complex64
    )
    with pytest.raises(ValueError, match="nu_dtype"):
        make(0.1, nu_dtype=jnp.complex64)  # nu is an EMA of |g|^2: real


def test_a_filter_stage_takes_a_complex_bare_array():
    tx = fo.filtered_adam(1e-2, warmup=0, stats=True)
    params = jnp.ones((3,), jnp.complex64)
    state = tx.init(params)
    for t in range(5):
        updates, state = jax.jit(tx.update)(params * (1 + t * 1j), state, params)
    assert updates.dtype == jnp.complex64 and bool(jnp.all(jnp.isfinite(updates)))
    assert set(fo.filter_stats(state)) == {"spike_fraction", "mean_gain"}
