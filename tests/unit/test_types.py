"""The shared types: NamedTuples with optax's field names that travel through jit and optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import filtered_optax as fo


def test_moments_view_has_optax_field_names_and_is_a_pytree():
    assert fo.Moments._fields == ("count", "mu", "nu", "b1", "b2")
    view = fo.Moments(jnp.int32(3), {"w": jnp.ones(2)}, {"w": jnp.ones(2)}, 0.9, 0.99)
    doubled = jax.jit(lambda m: jax.tree.map(lambda x: 2 * x, m))(view)
    assert float(doubled.mu["w"][0]) == 2.0 and abs(float(doubled.b1) - 1.8) < 1e-6


def test_filter_stats_are_found_by_name_in_a_state():
    tx = fo.filtered_adam(1e-3, stats=True)
    state = tx.init({"w": jnp.zeros(3)})
    stats = optax.tree.get(state, "spike_fraction")
    assert stats.shape == () and stats.dtype == jnp.float32
    assert fo.FilterStats._fields == ("spike_fraction", "mean_gain")


def test_matrix_spec_is_hashable_and_compares_by_axes():
    a, b = fo.MatrixSpec((0,), (1, 2)), fo.MatrixSpec(reduction_axes=(0,), output_axes=(1, 2))
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a != fo.MatrixSpec((0, 1), (2,))


def test_moment_rule_is_what_with_moments_takes():
    rule = fo.ema(0.9, 0.999)
    assert isinstance(rule, fo.MomentRule)
    assert (rule.b1, rule.b2) == (0.9, 0.999)
    mu, nu = rule.init({"w": jnp.zeros(2)})
    assert mu["w"].shape == nu["w"].shape == (2,)
