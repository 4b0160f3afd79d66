"""The scale stages, each against its formula written out in NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import filtered_optax as fo

RNG = np.random.default_rng(1)
GRADS = [RNG.standard_normal(6) for _ in range(5)]


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def _updates(tx):
    state = tx.init(jnp.zeros(6, jnp.float64))
    out = []
    for g in GRADS:
        u, state = tx.update(jnp.asarray(g), state)
        out.append(np.asarray(u))
    return out


def _adam_moments(b1, b2):
    m = v = np.zeros(6)
    for g in GRADS:
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        yield g, m, v


@pytest.mark.parametrize("nesterov", [False, True])
def test_normalize_is_bias_corrected_adam(nesterov):
    b1, b2, eps, eps_root = 0.8, 0.9, 1e-3, 1e-4
    got = _updates(
        fo.with_moments(
            moments=fo.ema(b1, b2), scale=fo.normalize(eps, eps_root, nesterov=nesterov)
        )
    )
    for t, ((g, m, v), u) in enumerate(zip(_adam_moments(b1, b2), got), start=1):
        if nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        np.testing.assert_allclose(u, m_hat / (np.sqrt(v_hat + eps_root) + eps), rtol=1e-12)


@pytest.mark.parametrize("eps_in_sqrt", [True, False])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_rms_normalize_divides_the_gradient_by_the_root_second_moment(eps_in_sqrt, bias_correction):
    rho, eps = 0.9, 1e-3
    got = _updates(
        fo.with_moments(
            moments=fo.second_moment(rho),
            scale=fo.rms_normalize(eps, eps_in_sqrt=eps_in_sqrt, bias_correction=bias_correction),
        )
    )
    v = np.zeros(6)
    for t, (g, u) in enumerate(zip(GRADS, got), start=1):
        v = rho * v + (1 - rho) * g * g
        v_hat = v / (1 - rho**t) if bias_correction else v
        denom = np.sqrt(v_hat + eps) if eps_in_sqrt else np.sqrt(v_hat) + eps
        np.testing.assert_allclose(u, g / denom, rtol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_output_is_the_trace_or_its_lookahead(nesterov):
    mom = 0.9
    got = _updates(
        fo.with_moments(moments=fo.heavy_ball(mom), scale=fo.momentum_output(nesterov=nesterov))
    )
    m = np.zeros(6)
    for g, u in zip(GRADS, got):
        m = mom * m + g
        np.testing.assert_allclose(u, g + mom * m if nesterov else m, rtol=1e-12)


def test_sign_update_is_the_sign_of_the_new_first_moment():
    got = _updates(fo.with_moments(moments=fo.ema(0.5, 0.5), scale=fo.sign_update()))
    for (_, m, _), u in zip(_adam_moments(0.5, 0.5), got):
        np.testing.assert_array_equal(u, np.sign(m))


@pytest.mark.parametrize(
    "stage",
    [
        fo.normalize(),
        fo.rms_normalize(),
        fo.momentum_output(),
        fo.sign_update(),
        fo.orthogonal_update(),
    ],
)
def test_a_scale_stage_outside_with_moments_says_where_it_belongs(stage):
    state = stage.init(jnp.zeros((2, 2)))
    with pytest.raises(TypeError, match="moments="):
        stage.update(jnp.ones((2, 2)), state)


@pytest.mark.parametrize(
    "scale, rule",
    [
        (fo.normalize(), fo.second_moment()),
        (fo.rms_normalize(), fo.heavy_ball()),
        (fo.sign_update(), fo.second_moment()),
    ],
)
def test_a_scale_paired_with_a_rule_missing_its_moment_says_which(scale, rule):
    tx = fo.with_moments(moments=rule, scale=scale)
    with pytest.raises(TypeError, match="moment"):
        tx.update(jnp.ones(3), tx.init(jnp.zeros(3)))


def test_orthogonal_update_orthogonalizes_the_nesterov_direction():
    g = jnp.asarray(RNG.standard_normal((8, 16)))
    tx = fo.with_moments(
        moments=fo.ema_momentum(0.5),
        scale=fo.orthogonal_update(
            coefficients="polar_express", scale=1.0, compute_dtype=jnp.float64
        ),
    )
    u, _ = tx.update(g, tx.init(jnp.zeros((8, 16), jnp.float64)))
    direction = 0.5 * g + 0.5 * (0.5 * g)  # (1 - beta) g + beta m with m = (1 - beta) g
    s_u = np.linalg.svd(np.asarray(u), compute_uv=False)
    assert 0.7 < s_u.min() and s_u.max() < 1.3  # singular values pulled towards 1
    # Same singular vectors as the direction: u = U_d f(S_d) V_dᵀ with f increasing.
    ud, _, vdt = np.linalg.svd(np.asarray(direction), full_matrices=False)
    core = ud.T @ np.asarray(u) @ vdt.T
    np.testing.assert_allclose(core, np.diag(np.diag(core)), atol=1e-6)
    assert optax.tree.get(tx.init(g), "mu").shape == (8, 16)
