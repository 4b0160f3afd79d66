"""The difficulty ladder: each problem's criterion is meaningful (its witness passes, a zero
learning rate fails), criteria are deterministic, the protocol helpers do what they say, and the
quick CLI writes the table, the JSON and the figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import ladder
from benchmarks.ladder_problems import PROBLEMS, Problem

REPO = Path(__file__).resolve().parents[2]


def test_problem_table_is_consistent() -> None:
    names = [p.name for p in PROBLEMS]
    assert len(set(names)) == len(names)
    assert [p.level for p in PROBLEMS] == list(range(1, len(PROBLEMS) + 1))
    for p in PROBLEMS:
        assert f"T = {p.steps}" in p.criterion, p.name  # the words state the real step count
        assert 0.0 <= p.window < 1.0 and p.threshold > 0
        assert set(p.witness.knobs) <= set(p.knobs), p.name  # a witness only turns knobs


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_witness_passes_and_zero_lr_fails(problem: Problem) -> None:
    """The criterion is reachable (the witness passes on every seed), not free (learning rate
    0 fails on every seed, also with the rung's own knobs), and deterministic."""
    seeds = list(range(3))
    w = problem.witness
    fn = ladder.make_run_fn(problem, w.spec, problem.steps)
    traj = fn([w.lr, 0.0], seeds, w.knobs)
    vals = ladder.criterion_values(problem, traj)
    assert ladder.passes(problem, vals[0]).all(), (problem.name, vals[0])
    assert not ladder.passes(problem, vals[1]).any(), (problem.name, vals[1])
    # Same shapes as above (knobs are traced): no second compile.
    zero_default = ladder.criterion_values(problem, fn([0.0, 0.0], seeds))
    assert not ladder.passes(problem, zero_default).any()
    again = ladder.criterion_values(problem, fn([w.lr, 0.0], seeds, w.knobs))
    np.testing.assert_array_equal(vals, again)


def test_criterion_values_window_and_nonfinite() -> None:
    p = next(p for p in PROBLEMS if p.window > 0)
    traj = np.ones((2, 100), np.float32)
    traj[0, -1] = np.nan  # a NaN inside the window fails the run
    traj[1, :90] = 1e9  # only the last 10 % count
    vals = ladder.criterion_values(p, traj)
    assert np.isnan(vals[0]) and vals[1] == pytest.approx(1.0)
    assert not ladder.passes(p, vals).any()
    q = next(p for p in PROBLEMS if p.window == 0)
    assert ladder.criterion_values(q, np.array([[5.0, 0.0]]))[0] == 0.0  # final iterate only


def test_wilson_interval() -> None:
    lo, hi = ladder.wilson(0, 16)
    assert lo == 0.0 and hi == pytest.approx(0.194, abs=1e-3)
    lo, hi = ladder.wilson(16, 16)
    assert lo == pytest.approx(0.806, abs=1e-3) and hi == 1.0
    lo, hi = ladder.wilson(8, 16)
    assert lo == pytest.approx(0.280, abs=1e-3) and hi == pytest.approx(0.720, abs=1e-3)
    assert all(np.isnan(ladder.wilson(0, 0)))


def test_choose_lr_most_passes_then_median_then_smaller() -> None:
    p = PROBLEMS[0]
    t = p.threshold
    vals = np.array(
        [
            [t / 2, t * 2, np.nan],  # 1 pass
            [t / 2, t / 3, t * 5],  # 2 passes, median t/2
            [t / 10, t / 10, np.inf],  # 2 passes, median t/10  <- chosen
            [t / 10, t / 10, t * 9],  # 2 passes, same median: larger LR loses the tie
        ]
    )
    assert ladder.choose_lr(p, vals) == 2


def test_lr_grids_are_equal_in_size_and_shifted_per_family() -> None:
    grids = {s: ladder.lr_grid(s) for s in ladder.SPECS}
    assert {len(g) for g in grids.values()} == {ladder.N_LR}
    assert all(np.all(np.diff(g) == 1) for g in grids.values())
    centre = {s: g[len(g) // 2] for s, g in grids.items()}
    assert centre["adam"] == ladder.LR_CENTRES["adam"]
    assert centre[ladder.SPECS[0]] == ladder.LR_CENTRES["sgd"]


def test_muon_only_on_matrix_problems() -> None:
    muon = next(iter(ladder.MATRIX_ONLY))
    assert {p.name for p in PROBLEMS if ladder.applies(p, muon)} == {
        p.name for p in PROBLEMS if p.matrix
    }
    assert all(ladder.applies(p, "adam") for p in PROBLEMS)


def test_quick_cli_writes_table_json_and_plots(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "ladder"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "ladder", "--quick", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["quick"] is True
    assert {p["name"] for p in res["problems"]} == {p.name for p in PROBLEMS}
    n_matrix = sum(p.matrix for p in PROBLEMS)
    assert len(res["cells"]) == len(PROBLEMS) + n_matrix  # filtered_adam everywhere + muon
    assert len(res["not_run"]) == len(PROBLEMS) - n_matrix
    for c in res["cells"]:
        assert 0 <= c["heldout_pass"] <= c["heldout_n"]
        lo, hi = c["wilson95"]
        assert lo <= c["pass_rate"] <= hi
    md = (out / "LADDER.md").read_text()
    assert "python -m benchmarks ladder --quick" in md and "wall time" in md
    assert "| optimizer |" in md and "n/a" in md
    for name in ("heatmap.png", "curves.png"):
        assert (out / name).stat().st_size > 1000
    assert "filtered_adam" in proc.stdout  # the summary table is printed
    # --report rebuilds the same LADDER.md from results.json, keeping a hand-written reading.
    marked = md.replace("_No hand-written reading yet", "A reading")
    (out / "LADDER.md").write_text(marked)
    ladder.rewrite_report(out)
    assert (out / "LADDER.md").read_text() == marked
