"""Distributed Newton–Schulz through ``fo.muon`` (``ns_split_axes``): each device
orthogonalizes only its own share of the same-shape matrices.

The 8-device checks run ``tests/_muon_ns_split_check.py`` in a subprocess, because
``--xla_force_host_platform_device_count=8`` must be set before jax is imported.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import filtered_optax as fo
from tests._devices import one, run_on_devices

SCRIPT = "_muon_ns_split_check.py"  # in tests/, run by tests/_devices.py
MODES = ("auto", "auto_set_mesh", "explicit", "explicit_set_mesh", "auto_eager")
LAYOUTS = ("replicated", "fsdp", "stacked_layers")
# Per-device FLOPs of the whole update for 8 equal 512² matrices on 8 devices, relative to
# one device: 1/8 = 0.125 plus the elementwise work every device still does in full.
MAX_FLOPS_RATIO = 0.30
MAX_ERR = 1e-5  # updates against one device


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return run_on_devices(SCRIPT, timeout=900)[0]


def test_issue_repro_explicit_mesh_equals_one_device(rows):
    r = one(rows, kind="repro")
    assert r["err"] <= MAX_ERR and r["zero_finite"] and r["kept"], r


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_updates_equal_one_device(rows, mode, layout):
    r = one(rows, kind="correctness", mode=mode, layout=layout)
    assert r["err"] <= MAX_ERR, r
    if mode != "auto" and mode != "auto_set_mesh":
        # Explicit meshes, and concrete arrays outside jit, know each parameter's sharding:
        # the updates come back in it. (Under jit on an Auto mesh only the mesh is visible.)
        assert r["kept"], r


@pytest.mark.parametrize("mode", ["auto", "explicit"])
@pytest.mark.parametrize("layout", ["replicated", "fsdp"])
def test_per_device_flops_of_the_whole_update(rows, mode, layout):
    r = one(rows, kind="cost", mode=mode, layout=layout, split="auto")
    assert r["flops_ratio"] <= MAX_FLOPS_RATIO, r
    # Newton-Schulz dots on slices: one device multiplies one matrix (no batch of 8), and
    # 1/8 of the single device's NS dots are left in each device's program.
    assert all(len(d) == 2 or d[0] == 1 for d in r["dots"]), r
    assert r["dot_count"] * 8 == r["single_dot_count"], r


@pytest.mark.parametrize("mode", ["auto", "explicit"])
def test_split_off_is_the_control(rows, mode):
    off = one(rows, kind="cost", mode=mode, layout="replicated", split="None")
    assert abs(off["flops_ratio"] - 1.0) < 0.02, off  # every device does every matrix
    assert off["dot_count"] == off["single_dot_count"], off
    if mode == "explicit":  # FSDP without the split: each device gathers every matrix
        fsdp = one(rows, kind="cost", mode=mode, layout="fsdp", split="None")
        assert abs(fsdp["flops_ratio"] - 1.0) < 0.02, fsdp


def test_axis_override(rows):
    r = one(rows, kind="cost", mode="explicit", layout="replicated", split="('fsdp',)")
    assert abs(r["flops_ratio"] - 0.25) < 0.03, r  # 2 of 8 matrices on each of 4 groups
    assert all(len(d) == 3 and d[0] == 2 for d in r["dots"]), r


def _tree(seed):
    rng = np.random.default_rng(seed)
    shapes = {"a": (16, 32), "b": (16, 32), "t": (32, 16), "layers": {"mlp": (3, 16, 16)}}
    return jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s), jnp.float32),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


@pytest.mark.parametrize("on_mesh", [False, True])
def test_one_device_is_bitwise_the_unsplit_update(on_mesh):
    params, grads = _tree(0), _tree(1)
    if on_mesh:  # a one-device mesh: nothing to split over
        mesh = jax.make_mesh((1,), ("data",))
        params, grads = jax.device_put((params, grads), NamedSharding(mesh, P()))
    out = {}
    for split in ("auto", None, ("data",)):
        tx = fo.muon(1e-2, stacked=("layers",), ns_split_axes=split)
        out[split] = jax.jit(tx.update)(grads, tx.init(params), params)[0]
    for split in ("auto", ("data",)):
        for a, b in zip(jax.tree.leaves(out[split]), jax.tree.leaves(out[None]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "bad, error",
    [
        ("all", ValueError),
        (("x", "x"), ValueError),
        (("",), ValueError),
        (3, TypeError),
        (("x", 1), TypeError),
    ],
)
def test_bad_ns_split_axes(bad, error):
    for make in (
        lambda: fo.muon(1e-3, ns_split_axes=bad),
        lambda: fo.scale_by_muon(ns_split_axes=bad),
        lambda: fo.orthogonal_update(ns_split_axes=bad),
    ):
        with pytest.raises(error, match="ns_split_axes"):
            make()


def test_unknown_axis_name_raises_on_a_mesh(rows):
    r = one(rows, kind="bad_axis")
    assert r["error"] and "ns_split_axes" in r["error"] and "model" in r["error"], r
    assert "data" in r["error"], r  # names the axes that exist


def test_unknown_axis_name_is_not_looked_up_on_one_device():
    mesh = jax.make_mesh((1,), ("data",))
    params = jax.device_put(_tree(0), NamedSharding(mesh, P()))
    tx = fo.muon(1e-3, ns_split_axes=("model",))
    # One device: nothing is split, so the name is never looked up.
    tx.update(params, tx.init(params), params)
