"""``fo.path_names``: one spelling of a parameter's path for routing, monitor and describe."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import filtered_optax as fo


def _names(tree):
    return [fo.path_names(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


class _Pair(NamedTuple):
    left: jax.Array
    right: jax.Array


def test_dict_list_and_namedtuple_keys_become_strings():
    tree = {"blocks": [{"w": jnp.zeros(1)}, _Pair(jnp.zeros(1), jnp.zeros(1))], "3": jnp.zeros(1)}
    assert sorted(_names(tree)) == sorted(
        [("blocks", "0", "w"), ("blocks", "1", "left"), ("blocks", "1", "right"), ("3",)]
    )


def test_a_bare_array_has_no_names():
    assert _names(jnp.zeros(3)) == [()]


class _MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(2, 3, rngs=rngs)
        self.norm = nnx.LayerNorm(3, rngs=rngs)


def test_nnx_variables_and_pure_arrays_get_the_same_names():
    state = nnx.state(_MLP(nnx.Rngs(0)), nnx.Param)
    pure = jax.tree.map(lambda v: v, nnx.to_pure_dict(state))
    assert sorted(_names(state)) == sorted(_names(pure))
    assert ("fc", "kernel") in _names(state) and ("norm", "scale") in _names(state)


def test_monitor_and_routing_name_the_same_leaf_alike():
    """read_stats names branches by partition labels; routing names leaves by path_names."""
    params = {"enc": {"kernel": jnp.ones((4, 4))}, "bias": jnp.ones(4)}
    table = fo.routing_table(params)
    assert {row.path for row in table} == {"/".join(n) for n in _names(params)}
    tx = optax.chain(fo.monitor("grad"), fo.adam(1e-3))
    _, state = tx.update(params, tx.init(params), params)
    assert set(fo.read_stats(state)) == {"grad/norm", "grad/rms"}
