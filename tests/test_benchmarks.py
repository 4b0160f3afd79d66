"""Tests of the benchmark runner: spec parsing, LR search, JSONL schema, statistics, resume, and
a smoke run of every task × every optimizer spec (outputs parse, plots are written)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import records, stats, suites
from benchmarks.runner import next_lr_exp
from benchmarks.specs import REGISTRY, parse_spec, valid_names

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- spec parsing


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("adam", "adam"),
        ("adam(b1=0.9)", "adam"),  # defaults are dropped
        ("adam(b1=0.8)", "adam(b1=0.8)"),
        ("adam(0.8)", "adam(b1=0.8)"),  # positional binds in declared order
        ("adam+clip(1.0)", "adam+clip(max_norm=1.0)"),
        ("adam + clip(max_norm=0.5)", "adam+clip(max_norm=0.5)"),
        ("filtered_adam(gamma=inf)", "filtered_adam(gamma=inf)"),
        ("filtered_adam(gamma=inf, eta=0.5)", "filtered_adam(eta=0.5, gamma=inf)"),
        ("filtered_adam(eta=0.9)", "filtered_adam(eta=0.9)"),
        ("sgd(momentum=0.9)", "sgd"),
        ("staged(filter='spam', threshold=5000.0)", "staged(filter='spam', threshold=5000.0)"),
        ("adam(eps=1e+3)", "adam(eps=1000.0)"),  # '+' inside a number is not a chain
    ],
)
def test_parse_spec_canonical(text: str, canonical: str) -> None:
    assert parse_spec(text).text == canonical
    assert parse_spec(canonical).text == canonical  # canonical text is a fixed point


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("adamm", "valid bases"),
        ("adam(foo=1)", "valid arguments"),
        ("adam(", "valid names"),
        ("", "valid names"),
        ("clip(1.0)", "valid bases"),
        ("adam+sgd", "valid modifiers"),
        ("adam(b1=x)", "literals"),
        ("adam(1, 2, 3, 4)", "too many positional"),
        ("adam(b1=0.8, b1=0.9)", "given twice"),
        ("adam.b1", "valid names"),
    ],
)
def test_bad_specs_give_clear_errors(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="(?i)" + fragment.replace("(", r"\(")):
        parse_spec(text)


def test_unknown_name_error_lists_every_valid_name() -> None:
    with pytest.raises(ValueError) as e:
        parse_spec("lion")
    for name in valid_names("base"):
        assert repr(name) in str(e.value)


def test_suite_specs_all_parse() -> None:
    for suite in suites.SUITES.values():
        for text in suite.net_specs + suite.quad_specs:
            assert parse_spec(text).base.name in REGISTRY
    with pytest.raises(ValueError, match="valid suites"):
        suites.get_suite("huge")


# ----------------------------------------------------------------------------- LR search


def test_lr_search_fills_window_then_extends_past_best_edge() -> None:
    assert next_lr_exp({}, (-9, -7), 2, False) == -9
    assert next_lr_exp({-9: 1.0}, (-9, -7), 2, False) == -8
    assert next_lr_exp({-9: 3.0, -8: 2.0, -7: 1.0}, (-9, -7), 2, False) == -6
    assert next_lr_exp({-9: 1.0, -8: 2.0, -7: 3.0}, (-9, -7), 2, False) == -10
    assert next_lr_exp({-9: 2.0, -8: 1.0, -7: 3.0}, (-9, -7), 2, False) is None  # interior
    # capped at max_extend points per side
    full = {k: float(-k) for k in range(-9, -4)}
    assert next_lr_exp(full, (-9, -7), 2, False) is None
    # probe upward while the top rate stays within the 10 % band
    assert next_lr_exp({-9: 2.0, -8: 1.0, -7: 1.05}, (-9, -7), 2, True) == -6
    assert next_lr_exp({-9: 2.0, -8: 1.0, -7: math.inf}, (-9, -7), 2, True) is None


# ----------------------------------------------------------------------------- records


def _record(**kw) -> dict:
    rec = {"schema": records.SCHEMA, "kind": "net", "key": "net|x", "suite": "t",
           "metrics": {"a": 1.5, "b": None, "c": True}, "curves": {"loss": [1.0, 0.5]}}
    rec.update(kw)
    return rec


def test_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    recs = [_record(key=f"net|{i}", lr=2.0**-i, seed=i) for i in range(3)]
    records.append(path, recs[:2])
    records.append(path, recs[2:])
    back = records.load(path)
    assert back == [json.loads(records.dumps(r)) for r in recs]
    assert back == recs  # these values survive cleaning unchanged
    assert set(records.by_key(back)) == {"net|0", "net|1", "net|2"}


def test_jsonl_is_strict_json_and_cleans_numpy() -> None:
    line = records.dumps(_record(metrics={"x": np.float32(np.nan), "y": np.inf,
                                          "z": np.arange(3), "w": np.float64(0.1234567891)}))
    rec = json.loads(line)  # strict: NaN/Inf became null
    assert rec["metrics"] == {"x": None, "y": None, "z": [0, 1, 2], "w": 0.123457}


def test_jsonl_skips_truncated_line_and_rejects_bad_schema(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    records.append(path, [_record()])
    with open(path, "a") as f:
        f.write('{"schema": 1, "kind": "net", "ke')  # an interrupted write
    with pytest.warns(UserWarning, match="skipping"):
        assert len(records.load(path)) == 1
    with pytest.raises(ValueError, match="schema"):
        records.dumps(_record(schema=99))
    with pytest.raises(ValueError, match="valid"):
        records.dumps(_record(kind="bogus"))


# ----------------------------------------------------------------------------- statistics


def test_t_interval_and_verdicts() -> None:
    assert stats.t_crit(2) == pytest.approx(4.303)
    assert stats.t_crit(19) == pytest.approx(2.093, abs=2e-3)
    assert stats.t_crit(10_000) == pytest.approx(1.96, abs=1e-2)
    ci = stats.paired_ci([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert ci.mean == pytest.approx(2.0)
    assert ci.hi - ci.mean == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-4)
    assert stats.paired_ci([1.0, None], [0.0, 1.0]) is None  # one usable pair only
    assert stats.outcome(stats.PairedCI(-1, -2, -0.5, 3)) == "win"
    assert stats.outcome(stats.PairedCI(1, 0.5, 2, 3)) == "loss"
    assert stats.outcome(stats.PairedCI(0, -1, 1, 3)) == "tie"
    assert stats.verdict(["win", "tie"]) == "supported"
    assert stats.verdict(["tie", "tie"]) == "not supported"
    assert stats.verdict(["win", "loss"]) == "mixed"
    assert stats.verdict(["win", "tie", "tie"]) == "mixed"
    assert stats.verdict(["n/a"]) == "no data"


# ----------------------------------------------------------------------------- execution


def test_fused_and_stepwise_runs_agree() -> None:
    from benchmarks import specs, tasks, train

    task = tasks.make_mnist1d_mlp(hidden=(8,), batch_size=8, steps=4, eval_every=2)
    spec = specs.parse_spec("adam+clip(1.0)")
    a = train.make_train_fn(task, spec, stepwise=False)(1e-2, np.arange(2), 1)
    b = train.make_train_fn(task, spec, stepwise=True)(1e-2, np.arange(2), 1)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-6, err_msg=k)
    again = train.make_train_fn(task, spec)(1e-2, np.arange(2), 1)  # reproducible from seed
    np.testing.assert_array_equal(a["train_loss"], again["train_loss"])


def _run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    proc = _run_cli("run", "--suite", "smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_smoke_covers_every_task_and_spec(smoke_dir: Path) -> None:
    from benchmarks.specs import check_available

    recs = records.load(smoke_dir / "runs.jsonl")
    suite = suites.get_suite("smoke")
    seen = {(r["kind"], r.get("task"), r.get("spec")) for r in recs}
    available = [parse_spec(t).text for t in suite.net_specs if check_available(t) is None]
    assert "adam" in available and "filtered_adam" in available
    for plan in suite.nets:
        task_recs = [r for r in recs if r.get("task") == plan.task]
        if not task_recs:  # data absent on this machine: the runner must have said so
            assert f"task {plan.task}" in (smoke_dir / "REPORT.md").read_text()
            continue
        for spec in available:
            assert ("net", plan.task, spec) in seen, (plan.task, spec)
            if plan.spike_step is not None:
                assert ("spike", plan.task, spec) in seen, (plan.task, spec)
    for text in suite.quad_specs:
        if check_available(text) is None:
            assert ("quad", "quad/gauss", parse_spec(text).text) in seen
    for r in recs:  # every line round-trips through the schema
        assert json.loads(records.dumps(r)) == r
    assert any(r["kind"] == "cost" for r in recs)


def test_smoke_report_and_plots(smoke_dir: Path) -> None:
    report = (smoke_dir / "REPORT.md").read_text()
    assert "## Claims (README, \"Benchmarks: what is true of the claims\")" in report
    for claim in ("converges in fewer steps", "generalizes better", "robust to noise",
                  "smooths noise", "stable at larger learning rates", "early-step bias",
                  "cost similar to Adam"):
        assert claim in report
    pngs = {p.name for p in smoke_dir.glob("*.png")}
    assert {"quad_curves.png", "lr_quad_gauss.png", "curves_mnist1d_mlp.png",
            "lr_mnist1d_mlp.png", "spike_mnist1d_mlp.png", "curves_lm.png"} <= pngs
    for p in smoke_dir.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_skips_finished_runs(smoke_dir: Path) -> None:
    path = smoke_dir / "runs.jsonl"
    lines = path.read_text().splitlines()
    # Simulate an interrupt: drop every record of one quadratic spec and one network unit.
    drop_spec = parse_spec("adam(b1=0.8)").text
    kept = [ln for ln in lines
            if not (json.loads(ln).get("spec") == drop_spec
                    and json.loads(ln)["kind"] in ("quad", "quad_curve"))]
    kept = [ln for ln in kept
            if not (json.loads(ln).get("spec") == "sgd" and json.loads(ln)["kind"] == "net"
                    and json.loads(ln)["task"] == "mnist1d_mlp")]
    path.write_text("\n".join(kept) + "\n")
    proc = _run_cli("run", "--suite", "smoke", "--out", str(smoke_dir), "--no-cost",
                    "--only", "mnist1d_mlp,quad")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = (smoke_dir / "REPORT.md").read_text()
    assert "2 units run" in info, info[:1500]  # only the two dropped units were redone
    after = records.load(path)
    assert len(after) == len(lines)
    assert {r["key"] for r in after} == {json.loads(ln)["key"] for ln in lines}


def test_filtered_adam_peak_memory_is_adams_plus_one_parameter_buffer() -> None:
    """Performance target 4, from XLA's memory analysis of the compiled optimizer step."""
    import optax

    import filtered_optax as fo
    from benchmarks import cost, perf

    params = cost.make_params(40_000)
    grads = jax.tree.map(jnp.ones_like, params)
    n_bytes = 4 * sum(x.size for x in jax.tree.leaves(params))
    adam = perf._opt_runner(optax.adam(1e-3), params, grads)["peak_bytes"]
    filtered = perf._opt_runner(fo.filtered_adam(1e-3), params, grads)["peak_bytes"]
    assert n_bytes <= filtered - adam <= n_bytes + perf.SCALAR_SLACK


def test_orthogonality_error_of_exact_polar_factor_is_zero() -> None:
    from benchmarks import perf

    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(32, 16)))
    assert perf.orthogonality_error([q])["max"] < 1e-6
    assert abs(perf.orthogonality_error([2 * q])["max"] - 1.0) < 1e-6


def test_report_lists_the_resolved_configuration_of_every_spec(smoke_dir: Path) -> None:
    text = (smoke_dir / "OPTIMIZERS.md").read_text()
    specs = {r["spec"] for r in records.load(smoke_dir / "runs.jsonl")
             if r["kind"] in ("net", "spike", "quad")}
    for spec in specs:
        assert f"## `{spec}`" in text
    block = text.split("## `filtered_adam`")[1].split("## ")[0]
    assert "fo.kalman_filter(eta=1.0, gamma=10.0, warmup=20" in block
    if "sgd" in specs:  # heavy-ball SGD: the registry's momentum 0.9 reaches optax
        assert "optax.trace(decay=0.9" in text.split("## `sgd`")[1].split("## ")[0]
    assert "(OPTIMIZERS.md)" in (smoke_dir / "REPORT.md").read_text()


def test_perf_cli_marks_every_target_and_rewrites_from_json(tmp_path: Path) -> None:
    proc = _run_cli("perf", "--quick", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = [line for line in (tmp_path / "perf.md").read_text().splitlines()
             if line.startswith("| ") and line.split("|")[1].strip() in ("1", "2", "3", "4")]
    assert [line.split("|")[1].strip() for line in table] == ["1", "2", "3", "4"]
    assert all(line.rstrip(" |").endswith(("**met**", "**not met**")) for line in table)
    res = json.loads((tmp_path / "perf.json").read_text())
    assert {"filter_cost", "muon_cost", "train_step", "command"} <= set(res)
    (tmp_path / "perf_reading.md").write_text("## Reading\n\nhand-written analysis\n")
    assert _run_cli("perf", "--report", "--out", str(tmp_path)).returncode == 0
    assert "hand-written analysis" in (tmp_path / "perf.md").read_text()
