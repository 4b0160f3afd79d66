"""Sharded training over a Mesh of 8 (simulated CPU) devices equals the single-device run.

``tests/_sharded_training.py`` runs in a subprocess because
``--xla_force_host_platform_device_count=8`` must be set before jax is imported, and the
rest of the suite has imported jax already. It trains filtered_adam and fo.muon with the
batch sharded over "data" and the weights over "model" (NamedSharding), and once on a
single device, and reports the differences and the optimizer-state shardings.
"""

from __future__ import annotations

import pytest

from tests._devices import run_on_devices

SCRIPT = "_sharded_training.py"  # in tests/, run by tests/_devices.py
STEPS = 25


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    lines = run_on_devices(SCRIPT, "--steps", str(STEPS), timeout=300)[0]
    return {r["optimizer"]: r for r in lines}


@pytest.mark.parametrize("name", ["filtered_adam", "muon"])
def test_sharded_loss_curve_equals_single_device(results, name):
    r = results[name]
    assert r["devices"] == 8 and r["mesh"] == {"data": 4, "model": 2}
    assert r["steps"] == STEPS
    # Only the order of floating-point reductions differs between the two runs.
    assert r["max_rel_loss_diff"] < 1e-5, r["max_rel_loss_diff"]
    assert r["max_abs_param_diff"] < 1e-5, r["max_abs_param_diff"]
    assert r["loss_last_sharded"] < 0.95 * r["loss_first"]  # it is training
    assert r["data_sharding"] == "P('data', None)"
    assert r["params_kept_sharding"]


@pytest.mark.parametrize(
    "name, expected",
    [
        # mu and nu for each of the 6 parameters.
        (
            "filtered_adam",
            {
                f"0/{m}/{p}"
                for m in ("mu", "nu")
                for p in (
                    "fc1/kernel",
                    "fc1/bias",
                    "fc2/kernel",
                    "fc2/bias",
                    "head/kernel",
                    "head/bias",
                )
            },
        ),
        # Muon momentum for the two hidden matrices; AdamW mu, nu for head and biases.
        (
            "muon",
            {f"inner_states/muon/inner_state/0/mu/{p}" for p in ("fc1/kernel", "fc2/kernel")}
            | {
                f"inner_states/adam/inner_state/0/{m}/{p}"
                for m in ("mu", "nu")
                for p in ("fc1/bias", "fc2/bias", "head/kernel", "head/bias")
            },
        ),
    ],
)
def test_optimizer_state_is_sharded_like_the_parameters(results, name, expected):
    r = results[name]
    assert set(r["state_leaves_checked"]) == expected
    assert r["state_sharding_mismatches"] == []
