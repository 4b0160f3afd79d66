"""Real multi-process training: 2 processes x 2 CPU devices equal 1 process x 4 devices.

``tests/_multiprocess_worker.py`` is started as two processes joined by
``jax.distributed.initialize`` (gloo CPU collectives on 127.0.0.1, a free port), each feeding
only its own half of every batch. ``fo.filtered_adam`` and ``fo.muon`` train a small MLP for 5
steps on a 2 x 2 ("data" across processes, "model" within) mesh and must end at the parameters
of one process with 4 devices. The orbax checkpoint the two processes write after 2 steps is
restored by one process, which trains on and must end bitwise where the uninterrupted run
did. A control run in which process 1 feeds process 0's half must end elsewhere.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")

WORKER = Path(__file__).resolve().parents[1] / "_multiprocess_worker.py"
STEPS, SAVE_AT = 5, 2
OPTIMIZERS = ("filtered_adam", "muon")
TIMEOUT_S = 80  # per phase; every process still running then is killed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, *args: str, processes: int = 1, optimizers=OPTIMIZERS):
    """Starts the worker ``processes`` times (one coordinator port); returns the Popen list."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the worker sets its own device count
    port = str(free_port()) if processes > 1 else "0"
    common = [
        "--num-processes",
        str(processes),
        "--port",
        port,
        "--steps",
        str(STEPS),
        "--save-at",
        str(SAVE_AT),
        "--optimizers",
        ",".join(optimizers),
        "--out",
        str(out),
        *args,
    ]
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), "--process-id", str(i), *common],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(processes)
    ]


def wait_all(procs) -> list[str]:
    """Waits for every process (killing all of them on timeout or failure); returns logs."""
    logs, deadline = [], time.monotonic() + TIMEOUT_S
    try:
        for p in procs:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
            assert p.returncode == 0, logs[-1][-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return logs


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multiprocess")
    ckpt = str(root / "ckpt")
    # Phase 1: the two-process run (writes the checkpoint) and the wrong-half control.
    two = launch(root / "two", "--ckpt", ckpt, processes=2)
    wrong = launch(
        root / "wrong",
        "--ckpt",
        str(root / "ckpt_wrong"),
        "--wrong-half",
        processes=2,
        optimizers=("filtered_adam",),
    )
    wait_all(two + wrong)
    # Phase 2: one process with 4 devices: uninterrupted, then resumed from the checkpoint.
    wait_all(launch(root / "one", "--ckpt", ckpt, "--resume"))
    return root


def _params(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "losses"}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_two_processes_equal_one(runs, name):
    two, one = load(runs / "two" / f"{name}.npz"), load(runs / "one" / f"{name}.npz")
    assert len(two["losses"]) == STEPS and set(_params(two)) == set(_params(one))
    for k, v in _params(two).items():
        np.testing.assert_allclose(v, one[k], rtol=0, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-6)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_checkpoint_from_two_processes_resumes_bitwise(runs, name):
    resumed = load(runs / "one" / f"{name}_resumed.npz")
    assert len(resumed["losses"]) == STEPS - SAVE_AT
    for ref in (load(runs / "one" / f"{name}.npz"), load(runs / "two" / f"{name}.npz")):
        for k, v in _params(ref).items():
            np.testing.assert_array_equal(resumed[k], v, err_msg=k)
        np.testing.assert_array_equal(resumed["losses"], ref["losses"][SAVE_AT:])


def test_wrong_half_is_detected(runs):
    """Control: a process feeding the other's rows trains on other data, so it must differ."""
    wrong = load(runs / "wrong" / "filtered_adam.npz")
    one = load(runs / "one" / "filtered_adam.npz")
    diff = max(float(np.max(np.abs(v - one[k]))) for k, v in _params(wrong).items())
    assert diff > 1e-3, diff
