"""Distributed Newton–Schulz (``filtered_optax._ns_split``): each device orthogonalizes its
own whole matrices, on Auto and Explicit meshes.

The 8-device checks run ``tests/_ns_split_check.py`` in a subprocess, because
``--xla_force_host_platform_device_count=8`` must be set before jax is imported.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from filtered_optax._ns_split import orthogonalize_stack
from filtered_optax._orthogonal import newton_schulz
from tests._devices import run_on_devices

SCRIPT = "_ns_split_check.py"  # in tests/, run by tests/_devices.py
MODES = ("auto", "explicit")
LAYOUTS = ("replicated", "fsdp", "fsdp_padded", "stacked_layers", "stacked_layers_fsdp")
# Layouts whose parameters are sharded on a matrix axis: there each device must receive only
# pieces of the matrices it orthogonalizes, never a whole matrix.
MATRIX_SHARDED = ("fsdp", "fsdp_padded", "stacked_layers_fsdp")
MAX_FLOPS_RATIO = 0.30  # per-device NS FLOPs for 8 equal 512² matrices on 8 devices


@pytest.fixture(scope="module")
def run() -> dict:
    rows, stderr = run_on_devices(SCRIPT, timeout=300)
    return {"rows": rows, "stderr": stderr}


def _row(run, kind, mode, **match):
    found = [
        r
        for r in run["rows"]
        if r["kind"] == kind and r["mode"] == mode and all(r[k] == v for k, v in match.items())
    ]
    assert len(found) == 1, (kind, mode, match)
    return found[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_equals_single_device_and_keeps_sharding(run, mode, layout):
    r = _row(run, "correctness", mode, layout=layout)
    assert r["err"] <= 1e-5, r
    assert r["kept"], r
    if layout in MATRIX_SHARDED:
        assert not r["full_matrix_moved"], r
    if layout == "stacked_layers":  # already one layer per device: nothing to move
        assert sum(r["collectives"].values()) == 0, r


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", ["P()", "P(None, 'fsdp', None)"])
def test_per_device_flops_and_sliced_dots(run, mode, spec):
    r = _row(run, "cost", mode, spec=spec, split="auto")
    assert r["flops_ratio"] <= MAX_FLOPS_RATIO, r
    # One device multiplies all 8 matrices in one batched dot; split, each device's dots
    # carry one matrix (batch 1, which XLA drops from the shape).
    assert any(d[0] == 8 and len(d) == 3 for d in r["single_dots"]), r
    assert all(len(d) == 2 or d[0] == 1 for d in r["dots"]), r


@pytest.mark.parametrize("mode", MODES)
def test_split_override_and_off(run, mode):
    fsdp_only = _row(run, "cost", mode, spec="P()", split="('fsdp',)")
    assert abs(fsdp_only["flops_ratio"] - 0.25) < 0.02, fsdp_only  # 2 of 8 matrices each
    assert all(len(d) == 3 and d[0] == 2 for d in fsdp_only["dots"]), fsdp_only
    off = _row(run, "cost", mode, spec="P(None, 'fsdp', None)", split="None")
    split = _row(run, "cost", mode, spec="P(None, 'fsdp', None)", split="auto")
    # Control: without the split whole matrices travel, so the checks above can fail.
    assert off["full_matrix_moved"] and not split["full_matrix_moved"], (off, split)
    if mode == "explicit":  # every device gathers and orthogonalizes every matrix
        assert off["flops_ratio"] > 0.9, off
    else:  # XLA partitions the matrix products themselves: far more traffic than the split
        assert sum(off["collectives"].values()) > 10 * sum(split["collectives"].values())


def test_no_full_rematerialization(run):
    assert "Involuntary full rematerialization" not in run["stderr"]


def test_single_device_is_the_plain_call():
    x = jax.random.normal(jax.random.key(0), (3, 16, 24))
    fn = functools.partial(newton_schulz, coefficients="polar_express")
    np.testing.assert_array_equal(np.asarray(orthogonalize_stack(x, fn)), np.asarray(fn(x)))
    np.testing.assert_array_equal(
        np.asarray(jax.jit(lambda s: orthogonalize_stack(s, fn))(x)), np.asarray(jax.jit(fn)(x))
    )


def test_one_device_mesh_with_an_explicit_axis_split():
    mesh = jax.make_mesh((1,), ("x",))
    x = jax.device_put(jax.random.normal(jax.random.key(1), (3, 8, 8)), NamedSharding(mesh, P()))
    out = orthogonalize_stack(x, lambda s: 2.0 * s, split=("x",))
    np.testing.assert_allclose(np.asarray(out), 2.0 * np.asarray(x))


def test_bad_arguments():
    mesh = jax.make_mesh((1,), ("x",))
    x = jax.device_put(jnp.ones((2, 4, 4)), NamedSharding(mesh, P()))
    with pytest.raises(ValueError, match="split"):
        orthogonalize_stack(x, newton_schulz, split=("y",))
    with pytest.raises(ValueError, match="split"):
        orthogonalize_stack(x, newton_schulz, split=("x", "x"))
    with pytest.raises(ValueError, match="split"):
        orthogonalize_stack(x, newton_schulz, split="all")
    with pytest.raises(ValueError, match="stack"):
        orthogonalize_stack(jnp.ones((4, 4)), newton_schulz)
    with pytest.raises(TypeError, match="out_sharding"):
        orthogonalize_stack(x, newton_schulz, out_sharding=P())
