"""Run a check script on 8 simulated CPU devices, in its own process.

``--xla_force_host_platform_device_count`` must be set before jax is imported, so every
multi-device check runs as a script in a subprocess and prints one JSON object per line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
# XLA:CPU aborts a process whose simulated devices do not all reach a collective within 40 s.
# On a loaded 2-core machine 8 device threads can lag that long without anything being wrong,
# so the checks wait up to 10 minutes (the subprocess timeout) before XLA gives up.
COLLECTIVE_FLAGS = (
    "--xla_cpu_collective_call_terminate_timeout_seconds=600",
    "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120",
)


def run_on_devices(script: str, *args: str, devices: int = 8, timeout: int = 600) -> tuple:
    """``(rows, stderr)``: the JSON lines ``tests/<script>`` printed on ``devices`` CPU
    devices; fails the calling test with the script's stderr if it exits non-zero."""
    env = dict(os.environ)
    flags = [env.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={devices}"]
    env["XLA_FLAGS"] = " ".join([*flags, *COLLECTIVE_FLAGS]).strip()
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONPATH"] = str(TESTS.parent) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(TESTS / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows: list[dict[str, Any]] = [
        json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")
    ]
    return rows, proc.stderr


def one(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    """The single row whose fields equal ``match``."""
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, match
    return found[0]
