"""Muon on the library's spine: with_moments + ema_momentum + orthogonal_update.

Its state is a WithMomentsState, it follows the parameters' precision, its filter keeps
statistics like filtered Adam's, and it runs on explicit-axis meshes without jax.set_mesh.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import filtered_optax as fo
from tests._devices import run_on_devices


def _tree(rng, shapes, dtype=jnp.float32):
    return {k: jnp.asarray(rng.standard_normal(s), dtype) for k, s in shapes.items()}


SHAPES = {"a": (8, 16), "b": (16, 8)}


def test_scale_by_muon_is_with_moments_with_its_stages():
    params = _tree(np.random.default_rng(0), SHAPES)
    state = fo.scale_by_muon().init(params)
    assert isinstance(state, fo.WithMomentsState) and state.nu is None
    assert isinstance(fo.scale_by_muon(filter_gamma=5.0).init(params).nu, dict)
    desc = fo.describe(fo.scale_by_muon(beta=0.9, filter_gamma=5.0))
    stages = dict(desc.children)
    assert stages["filter"].name == "fo.kalman_filter"
    assert stages["moments"].name == "fo.ema_momentum"
    assert dict(stages["moments"].hyperparams) == {"beta": 0.9, "b2": 0.999}
    assert stages["scale"].name == "fo.orthogonal_update"
    assert dict(fo.describe(fo.scale_by_muon()).children)["filter"].name == "fo.identity_filter"


def test_stages_assembled_by_hand_equal_scale_by_muon_bitwise():
    rng = np.random.default_rng(1)
    params = _tree(rng, SHAPES)
    grads = [_tree(rng, SHAPES) for _ in range(10)]
    by_hand = fo.with_moments(
        moments=fo.ema_momentum(0.95), scale=fo.orthogonal_update(coefficients="keller")
    )
    alias = fo.scale_by_muon(0.95, coefficients="keller")
    s1, s2 = by_hand.init(params), alias.init(params)
    for g in grads:
        u1, s1 = by_hand.update(g, s1)
        u2, s2 = alias.update(g, s2)
        for k in params:
            np.testing.assert_array_equal(u1[k], u2[k])


def test_muon_state_name_is_a_deprecated_alias():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        alias = fo.MuonState
    assert alias is fo.WithMomentsState
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)


def test_orthogonal_update_outside_with_moments_says_where_it_belongs():
    tx = fo.orthogonal_update()
    g = {"w": jnp.ones((4, 8))}
    with pytest.raises(TypeError, match="with_moments"):
        tx.update(g, tx.init(g))


# --------------------------------------------------------------------------------------------
# float64 (a regression: the momentum was float32 whatever the parameters)


def _meta_loss(lr, params, target, tx):
    """Loss after three Muon steps on a quadratic, as a function of the learning rate."""

    def loss(p):
        return jnp.sum((p["w"] - target) ** 2)

    state = tx.init(params)
    p = params
    for _ in range(3):
        u, state = tx.update(jax.grad(loss)(p), state, p)
        p = jax.tree.map(lambda x, d: x - lr * d, p, u)
    return loss(p)


@pytest.mark.parametrize("filter_gamma", [float("inf"), 3.0])
def test_float64_muon_meta_gradient_matches_finite_differences(filter_gamma):
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        params = {"w": jnp.asarray(rng.standard_normal((6, 10)), jnp.float64)}
        target = jnp.asarray(rng.standard_normal((6, 10)), jnp.float64)
        tx = fo.scale_by_muon(compute_dtype=jnp.float64, filter_gamma=filter_gamma, filter_warmup=1)
        state = tx.init(params)
        u, state = tx.update(params, state)
        assert u["w"].dtype == state.mu["w"].dtype == jnp.float64
        lr, h = 0.05, 1e-5
        grad = float(jax.grad(_meta_loss)(lr, params, target, tx))
        fd = float(
            (_meta_loss(lr + h, params, target, tx) - _meta_loss(lr - h, params, target, tx))
            / (2 * h)
        )
        # float64 throughout: central differences agree to ~1e-9 relative; the float32
        # momentum this replaces agreed to ~1e-3.
        assert abs(grad - fd) <= 1e-7 * abs(fd), (grad, fd)


def test_bfloat16_gradients_keep_a_float32_floor_and_bf16_storage():
    rng = np.random.default_rng(3)
    params = _tree(rng, SHAPES, jnp.bfloat16)
    tx = fo.scale_by_muon(filter_gamma=5.0)
    state = tx.init(params)
    u, state = tx.update(_tree(rng, SHAPES, jnp.bfloat16), state)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(u))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.mu))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.nu))


# --------------------------------------------------------------------------------------------
# Filter statistics (the same stats= switch as filtered Adam)


def test_muon_filter_statistics_report_spikes_and_gain():
    rng = np.random.default_rng(4)
    params = {"w": jnp.zeros((8, 16)), "bias": jnp.zeros(16)}
    tx = fo.muon(1e-2, filter_gamma=3.0, filter_warmup=2, filter_eta=0.5, stats=True)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(6):
        g = _tree(rng, {"w": (8, 16), "bias": (16,)})
        if t == 5:
            g["w"] = g["w"].at[0, :4].set(1e4)  # 4 of 128 Muon elements are spikes
        _, state = step(g, state, params)
    stats = fo.read_stats(state)
    # Named by the partition label, as for any filter in a branch of optax.partition.
    assert set(stats) == {"muon/filter/spike_fraction", "muon/filter/mean_gain"}
    assert float(stats["muon/filter/spike_fraction"]) >= 4 / 128
    assert 0.0 < float(stats["muon/filter/mean_gain"]) < 1.0  # smoothing (eta < 1), clipping
    assert fo.filter_stats(state)["spike_fraction"] == stats["muon/filter/spike_fraction"]
    assert fo.filter_stats(fo.muon(1e-2, filter_gamma=3.0).init(params)) is None


def test_stats_without_a_filter_is_an_error():
    with pytest.raises(ValueError, match="filter_gamma"):
        fo.muon(1e-2, stats=True)


# --------------------------------------------------------------------------------------------
# Explicit-axis meshes without jax.set_mesh (8 simulated CPU devices, own process)


def test_explicit_mesh_without_set_mesh_matches_single_device():
    result = run_on_devices("_explicit_mesh_check.py", timeout=300)[0][-1]
    for layout in ("replicated", "sharded", "replicated_filtered", "sharded_filtered"):
        # float32 round-off of a sharded reduction only.
        assert result[layout] <= 1e-6, (layout, result)
        assert result[layout + "_kept"], (layout, result)
    assert result["set_mesh"] <= 1e-6


def test_update_scale_is_one_function_for_stage_and_table():
    """routing_table's scale column is the factor the stage multiplies by."""
    g = {"w": jnp.asarray(np.random.default_rng(5).standard_normal((8, 32)), jnp.float32)}
    for scale in ("moonshot", "keller", 0.5):
        tx = fo.scale_by_muon(nesterov=False, coefficients="keller", scale=scale)
        u, _ = tx.update(g, tx.init(g))
        o = fo.newton_schulz(g["w"], coefficients="keller")
        factor = float(fo.routing_table(g, scale=scale)[0].scale)
        np.testing.assert_allclose(u["w"], factor * o, rtol=2e-3, atol=1e-6)
    assert fo.routing_table(g, scale="rms", rms=0.3)[0].scale == "rms→0.3"
    assert optax.tree.get(fo.scale_by_muon().init(g), "mu")["w"].shape == (8, 32)
