"""``fo.with_moments`` and the moment rules, against NumPy recurrences written out here."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import filtered_optax as fo

RNG = np.random.default_rng(0)
GRADS = [RNG.standard_normal((3, 4)).astype(np.float64) for _ in range(4)]


def _spy_filter():
    """A filter stage whose output reveals what it saw: prev count and mu."""

    def update(updates, state, params=None, *, prev_moments=None, **extra):
        del params
        seen = prev_moments.count.astype(jnp.float32) + 1000.0 * extra.get("tag", 0.0)
        return jax.tree.map(lambda g, m: g + 0.0 * m, updates, prev_moments.mu), seen

    return optax.GradientTransformationExtraArgs(lambda p: jnp.zeros([]), update)


def _spy_scale():
    """A scale stage whose output is the new mu, and whose state records the new count."""

    def update(updates, state, params=None, *, moments=None, **extra):
        del updates, params, extra
        return moments.mu, moments.count.astype(jnp.float32)

    return optax.GradientTransformationExtraArgs(lambda p: jnp.zeros([]), update)


def test_filter_sees_the_previous_count_and_scale_the_new_one():
    tx = fo.with_moments(filter=_spy_filter(), moments=fo.ema(0.5, 0.5), scale=_spy_scale())
    state = tx.init(jnp.zeros((3, 4)))
    for t, g in enumerate(GRADS[:3]):
        u, state = tx.update(jnp.asarray(g, jnp.float32), state, tag=1.0)
        assert float(state.filter_state) == t + 1000.0  # count before the step, extra arg seen
        assert float(state.scale_state) == t + 1  # count after the step
        np.testing.assert_allclose(u, state.mu)  # the scale read the moments after this step


def test_extra_arguments_named_like_the_views_are_refused():
    tx = fo.with_moments()
    state = tx.init(jnp.zeros(2))
    for name in ("moments", "prev_moments"):
        with pytest.raises(TypeError, match=f"{name}="):
            tx.update(jnp.ones(2), state, **{name: None})


def _run_rule(rule, grads):
    tx = fo.with_moments(moments=rule, scale=_spy_scale())
    state = tx.init(jnp.zeros((3, 4), jnp.float64))
    for g in grads:
        _, state = tx.update(jnp.asarray(g), state)
    return state


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def test_ema_is_adams_moment_recurrence():
    b1, b2 = 0.8, 0.95
    m = v = np.zeros((3, 4))
    for g in GRADS:
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    state = _run_rule(fo.ema(b1, b2), GRADS)
    np.testing.assert_allclose(state.mu, m, rtol=1e-12)
    np.testing.assert_allclose(state.nu, v, rtol=1e-12)
    assert int(state.count) == len(GRADS)


def test_belief_centres_the_second_moment_on_the_new_mean():
    b1, b2, eps_root = 0.8, 0.95, 1e-6
    m = s = np.zeros((3, 4))
    for g in GRADS:
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps_root
    state = _run_rule(fo.belief(b1, b2, eps_root), GRADS)
    np.testing.assert_allclose(state.mu, m, rtol=1e-12)
    np.testing.assert_allclose(state.nu, s, rtol=1e-12)


def test_second_moment_keeps_no_mu_and_starts_at_initial_scale():
    rho, v = 0.7, np.full((3, 4), 0.25)
    for g in GRADS:
        v = rho * v + (1 - rho) * g * g
    state = _run_rule(fo.second_moment(rho, initial_scale=0.25), GRADS)
    assert state.mu is None
    np.testing.assert_allclose(state.nu, v, rtol=1e-12)


def test_heavy_ball_sums_without_damping_and_keeps_no_nu():
    mom, m = 0.9, np.zeros((3, 4))
    for g in GRADS:
        m = mom * m + g
    state = _run_rule(fo.heavy_ball(mom), GRADS)
    assert state.nu is None
    np.testing.assert_allclose(state.mu, m, rtol=1e-12)


@pytest.mark.parametrize("b2", [None, 0.99])
def test_ema_momentum_keeps_nu_only_when_asked(b2):
    beta, m, v = 0.95, np.zeros((3, 4)), np.zeros((3, 4))
    for g in GRADS:
        m, v = beta * m + (1 - beta) * g, (b2 or 0) * v + (1 - (b2 or 0)) * g * g
    state = _run_rule(fo.ema_momentum(beta, b2), GRADS)
    np.testing.assert_allclose(state.mu, m, rtol=1e-12)
    if b2 is None:
        assert state.nu is None
    else:
        np.testing.assert_allclose(state.nu, v, rtol=1e-12)


def test_storage_dtypes_are_kept_across_steps():
    tx = fo.with_moments(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    state = tx.init(jnp.zeros(5, jnp.float32))
    for _ in range(2):
        _, state = tx.update(jnp.ones(5, jnp.float32), state)
    assert state.mu.dtype == state.nu.dtype == jnp.bfloat16


@pytest.mark.parametrize("bad", [lambda: 0.9, "ema", optax.adam(1e-3)])
def test_moments_slot_takes_a_moment_rule_only(bad):
    with pytest.raises(TypeError, match="moments"):
        fo.with_moments(moments=bad)


def test_gradients_shaped_unlike_the_state_are_refused_with_the_leaf():
    tx = fo.with_moments()
    state = tx.init({"w": jnp.zeros((2, 3))})
    with pytest.raises(ValueError, match="w"):
        tx.update({"w": jnp.zeros((3, 2))}, state)


# Every public stage, in the slot it belongs to: with_moments recognises our constructors by
# name (to say which slot a misplaced one belongs in), so a new stage must be known there.
SLOTTED = [
    ("filter", fo.identity_filter),
    ("filter", lambda: fo.kalman_filter(gamma=3.0)),
    ("filter", fo.spam_filter),
    ("filter", fo.zscore_filter),
    ("filter", fo.soft_clip_filter),
    ("moments", fo.ema),
    ("moments", fo.belief),
    ("moments", fo.second_moment),
    ("moments", fo.heavy_ball),
    ("moments", fo.ema_momentum),
    ("scale", fo.normalize),
    ("scale", fo.rms_normalize),
    ("scale", fo.momentum_output),
    ("scale", fo.sign_update),
    ("scale", fo.orthogonal_update),
]


@pytest.mark.parametrize("slot, make", SLOTTED)
def test_every_public_stage_is_accepted_in_its_slot_and_refused_elsewhere(slot, make):
    fo.with_moments(**{slot: make()})
    for other in {"filter", "moments", "scale"} - {slot}:
        with pytest.raises(TypeError, match=f"pass it as {slot}="):
            fo.with_moments(**{other: make()})
