"""``fo.state_shardings`` and explicit meshes, for every optimizer of tests/registry.py.

The 8-device checks run ``tests/_mesh_check.py`` in a subprocess, because
``--xla_force_host_platform_device_count=8`` must be set before jax is imported.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

import filtered_optax as fo
from tests._devices import one, run_on_devices
from tests.registry import ids

SCRIPT = "_mesh_check.py"  # in tests/, run by tests/_devices.py
MODES = ("auto", "explicit", "explicit_set_mesh")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return run_on_devices(SCRIPT, timeout=600)[0]


@pytest.mark.parametrize("name", ids())
def test_init_shards_moments_like_their_parameters(rows, name):
    r = one(rows, kind="state", optimizer=name)
    assert r["kept"] and r["same_as_recipe"] and r["scalars_replicated"], r
    if name == "sgd":  # no state beyond the step count
        assert r["moments"] == 0, r
    else:
        assert r["sharded_moments"] > 0, r
        assert r["bare_sharded_moments"] < r["sharded_moments"], r  # control


# Every optimizer, Muon included, on Auto and Explicit meshes (with and without jax.set_mesh).
CASES = [pytest.param(name, mode, id=f"{name}-{mode}") for name in ids() for mode in MODES]


@pytest.mark.parametrize("name, mode", CASES)
def test_updates_on_a_mesh_equal_one_device(rows, name, mode):
    r = one(rows, kind="mode", optimizer=name, mode=mode)
    assert "error" not in r, r["error"]
    assert r["err"] <= 1e-6, r
    assert r["kept"], r


def test_flax_nnx_partitioning_metadata(rows):
    r = one(rows, kind="nnx")
    assert r["param_specs"] == ["P('model',)", "P()", "P(None, 'model')"], r
    assert r["moments_like_params"] and r["count_replicated"], r


def test_single_device_and_shapes_only():
    params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    tx = fo.filtered_adam(1e-3)
    sh = fo.state_shardings(tx, params)
    assert all(isinstance(s, SingleDeviceSharding) for s in jax.tree.leaves(sh))
    state = jax.jit(tx.init, out_shardings=sh)(params)
    assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))
    # Shapes (as from jax.eval_shape) plus an explicit tree of shardings.
    mesh = jax.make_mesh((1,), ("x",))
    shapes = jax.eval_shape(lambda: params)
    param_sh = {"w": NamedSharding(mesh, P("x", None)), "b": NamedSharding(mesh, P())}
    sh = fo.state_shardings(tx, shapes, param_sh)
    assert sh[0].mu["w"] == param_sh["w"] and sh[0].nu["b"] == param_sh["b"]
    assert sh[0].count == NamedSharding(mesh, P())


def test_wrappers_keep_hyperparameters_replicated():
    mesh = jax.make_mesh((1,), ("x",))
    params = {"w": jax.device_put(jnp.zeros((4, 3)), NamedSharding(mesh, P("x", None)))}
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.inject_hyperparams(fo.filtered_adam)(learning_rate=1e-3),
    )
    sh = fo.state_shardings(tx, params)
    inner = sh[1].inner_state[0]
    assert inner.mu["w"] == params["w"].sharding and inner.nu["w"] == params["w"].sharding
    assert sh[1].hyperparams["learning_rate"] == NamedSharding(mesh, P())
    state = jax.jit(tx.init, out_shardings=sh)(params)
    assert state[1].inner_state[0].mu["w"].sharding == params["w"].sharding


def test_bad_arguments():
    tx = fo.adam(1e-3)
    mesh = jax.make_mesh((1,), ("x",))
    one = NamedSharding(mesh, P())
    with pytest.raises(TypeError, match="ShapeDtypeStruct"):
        fo.state_shardings(tx, {"w": one})  # shardings alone carry no shapes
    with pytest.raises(TypeError, match="sharding"):
        fo.state_shardings(tx, {"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
    with pytest.raises(ValueError, match="shardings"):
        fo.state_shardings(tx, {"w": jnp.zeros(2)}, [one, one])
