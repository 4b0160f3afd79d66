"""Tests of the benchmark suite: spec parsing, LR search, JSONL schema and provenance, the
training loop's schedule and spike injection, resume, and a smoke run of every task × spec
(outputs parse, the report and summary.json are written, tuning and evaluation seeds are
disjoint)."""

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

from benchmarks.core import records, stats
from benchmarks.core.provenance import stamp
from benchmarks.core.specs import REGISTRY, parse_spec, valid_names
from benchmarks.suite import suites
from benchmarks.suite.runner import next_lr_exp

REPO = Path(__file__).resolve().parents[2]


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
    assert next_lr_exp({}, (-9, -7), 2) == -9
    assert next_lr_exp({-9: 1.0}, (-9, -7), 2) == -8
    assert next_lr_exp({-9: 3.0, -8: 2.0, -7: 1.0}, (-9, -7), 2) == -6
    assert next_lr_exp({-9: 1.0, -8: 2.0, -7: 3.0}, (-9, -7), 2) == -10
    assert next_lr_exp({-9: 2.0, -8: 1.0, -7: 3.0}, (-9, -7), 2) is None  # interior
    full = {k: float(-k) for k in range(-9, -4)}  # capped at max_extend points per side
    assert next_lr_exp(full, (-9, -7), 2) is None
    assert next_lr_exp({-9: math.inf, -8: math.inf, -7: math.inf}, (-9, -7), 2) == -10


def test_suites_keep_tuning_and_evaluation_seeds_disjoint() -> None:
    for suite in suites.SUITES.values():
        assert not set(suite.quad_tune_seeds) & set(suite.quad_eval_seeds)
        for plan in suite.nets:
            assert not set(plan.tune_seeds) & set(plan.eval_seeds), (suite.name, plan.task)
            assert len(plan.targets) >= 3
    full = suites.get_suite("full")
    assert all(len(p.eval_seeds) >= 5 for p in full.nets)
    assert len(full.quad_eval_seeds) >= 20
    assert all(len(p.tune_seeds) >= (1 if p.task == "lm" else 2) for p in full.nets)
    lm = next(p for p in full.nets if p.task == "lm").kwargs
    assert lm["d"] >= 128 and lm["layers"] >= 2 and lm["context"] >= 128 and lm["steps"] >= 1000


# ----------------------------------------------------------------------------- records


PROV = {"commit": "c", "fo_commit": "a", "bench_commit": "b", "dirty": False, "dirty_hash": ""}


def _record(**kw) -> dict:
    rec = records.make_record(
        "tune",
        suite="t",
        provenance=PROV,
        config=kw.get("seed", 0),
        key_parts=(kw.get("seed", 0),),
        task="x",
        spec="adam",
        lr=1e-3,
        seed=0,
        metrics={"a": 1.5, "b": None, "c": True},
        curves={"loss": [1.0, 0.5]},
    )
    rec.update(kw)
    return rec


def test_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    recs = [_record(key=f"tune|{i}", lr=2.0**-i, seed=i) for i in range(3)]
    records.append(path, recs[:2])
    records.append(path, recs[2:])
    back = records.load(path)
    assert back == [json.loads(records.dumps(r)) for r in recs]
    assert back == recs  # these values survive cleaning unchanged
    assert set(records.by_key(back)) == {"tune|0", "tune|1", "tune|2"}


def test_jsonl_is_strict_json_and_cleans_numpy() -> None:
    line = records.dumps(
        _record(
            metrics={
                "x": np.float32(np.nan),
                "y": np.inf,
                "z": np.arange(3),
                "w": np.float64(0.1234567891),
            }
        )
    )
    rec = json.loads(line)  # strict: NaN/Inf became null
    assert rec["metrics"] == {"x": None, "y": None, "z": [0, 1, 2], "w": 0.123457}


def test_jsonl_skips_truncated_line_and_rejects_bad_schema(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    records.append(path, [_record()])
    with open(path, "a") as f:
        f.write('{"schema": 2, "kind": "tune", "ke')  # an interrupted write
    with pytest.warns(UserWarning, match="skipping"):
        assert len(records.load(path)) == 1
    with pytest.raises(ValueError, match="schema"):
        records.dumps(_record(schema=99))
    with pytest.raises(ValueError, match="valid"):
        records.dumps(_record(kind="bogus"))
    with pytest.raises(ValueError, match="lacks"):
        records.dumps({k: v for k, v in _record().items() if k != "provenance"})
    with pytest.raises(ValueError, match="injection"):
        records.dumps(_record(kind="spike"))


# ----------------------------------------------------------------------------- statistics


def test_t_interval() -> None:
    assert stats.t_crit(2) == pytest.approx(4.303, abs=1e-3)
    assert stats.t_crit(19) == pytest.approx(2.093, abs=2e-3)
    ci = stats.paired_ci([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert ci.mean == pytest.approx(2.0)
    assert ci.hi - ci.mean == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)
    assert stats.paired_ci([1.0, None], [0.0, 1.0]) is None  # one usable pair only


# ----------------------------------------------------------------------------- execution


def test_schedule_warms_up_then_decays_to_zero() -> None:
    from benchmarks.suite.train import schedule

    fn = schedule(jnp.float32(1.0), jnp.float32(10.0), 100)
    assert float(fn(0)) == pytest.approx(0.1, rel=1e-3)
    assert float(fn(9)) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 100)), rel=1e-4)
    assert float(fn(100)) == pytest.approx(0.0, abs=1e-7)
    assert float(schedule(jnp.float32(1.0), jnp.float32(0.0), 100)(0)) == pytest.approx(1.0)


def test_injected_spike_changes_the_run_only_from_its_step_on() -> None:
    from benchmarks.core import specs
    from benchmarks.suite import tasks, train

    task = tasks.make_mnist1d_mlp(hidden=(8,), batch_size=8, steps=6, eval_every=2)
    fn = train.make_train_fn(task, specs.parse_spec("adam"))
    hps = [
        train.hyper(1e-2, 2),
        train.hyper(1e-2, 2, {"magnitude": 1e3, "pattern": "once", "kind": "row", "step": 3}),
    ]
    out = fn(hps, np.arange(2))
    loss = out["train_loss"]  # [hp, seed, step]: loss at step i is before update i
    np.testing.assert_array_equal(loss[0, :, :4], loss[1, :, :4])
    assert np.all(loss[0, :, 4:] != loss[1, :, 4:])
    on = [
        bool(
            train.injected(
                jnp.int32(i), {"pattern": jnp.int32(train.PATTERNS[p]), "step": jnp.int32(3)}
            )
        )
        for p in ("every50", "burst5")
        for i in (2, 3, 7, 53)
    ]
    assert on == [False, True, False, True, False, True, True, False]


def _run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    proc = _run_cli("run", "--suite", "smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_smoke_covers_every_task_and_spec(smoke_dir: Path) -> None:
    recs = records.load(smoke_dir / "runs.jsonl", strict=True)
    suite = suites.get_suite("smoke")
    seen = {(r["kind"], r.get("task"), r.get("spec")) for r in recs}
    for plan in suite.nets:
        for text in plan.specs:
            spec = parse_spec(text).text
            assert ("tune", plan.task, spec) in seen and ("eval", plan.task, spec) in seen
        swept = {
            r["spec"]
            for r in recs
            if r["kind"] == "spike"
            and r["task"] == plan.task
            and "natural_lr_factor" not in r["injection"]
        }
        assert "filtered_adam" in swept and len(swept) >= 2, swept  # F + strongest baselines
        # The same injections run on the tuning seeds first (they pick the strongest baseline).
        spike_seeds = {
            kind: {r["seed"] for r in recs if r["kind"] == kind and r["task"] == plan.task}
            for kind in ("spike_tune", "spike")
        }
        assert spike_seeds == {"spike_tune": set(plan.tune_seeds), "spike": set(plan.eval_seeds)}
        derived = [
            r["spec"]
            for r in recs
            if r["kind"] == "eval"
            and r["task"] == plan.task
            and r["spec"].split("(")[0] in ("muon", "optax_muon")
        ]
        assert len(set(derived)) == 2, derived  # fo.muon and optax muon, from the tuned AdamW
        tune = {r["seed"] for r in recs if r["kind"] == "tune" and r["task"] == plan.task}
        ev = {r["seed"] for r in recs if r["kind"] == "eval" and r["task"] == plan.task}
        assert tune == set(plan.tune_seeds) and ev == set(plan.eval_seeds)
    for text in suite.quad_specs:
        assert ("quad", "quad/gauss", parse_spec(text).text) in seen
    assert any(r["task"].startswith("quad/sweep/") for r in recs if r["kind"] == "quad")
    assert any("natural_lr_factor" in r["injection"] for r in recs if r["kind"] == "spike")
    assert len({stamp(r["provenance"]) for r in recs}) == 1
    for r in recs:  # every line round-trips through the schema
        assert json.loads(records.dumps(r)) == r
    assert any(r["kind"] == "cost" for r in recs)


def test_smoke_report_summary_and_plots(smoke_dir: Path) -> None:
    report = (smoke_dir / "REPORT.md").read_text()
    assert "## Claims" in report and "Indicative only" in report
    for claim in (
        "robust to injected gradient spikes",
        "robust to heavy-tailed noise",
        "natural instability",
        "converges in fewer steps than tuned AdamW",
        "generalizes better than tuned AdamW",
        "bigram",
    ):
        assert claim in report
    summ = json.loads((smoke_dir / "summary.json").read_text())
    assert {"commit", "wall_s", "tasks", "claims"} <= set(summ)
    for task in ("lm", "mnist1d_mlp"):
        t = summ["tasks"][task]
        assert {"params", "steps", "tuning_seeds", "eval_seeds", "best"} <= set(t)
        assert not set(t["tuning_seeds"]) & set(t["eval_seeds"])
        assert all({"config", "test_mean", "test_ci"} <= set(b) for b in t["best"].values())
    for row in summ["claims"]:
        assert {
            "claim",
            "method",
            "baseline",
            "baseline_config",
            "verdict",
            "delta",
            "ci",
            "p_holm",
        } <= set(row)
        assert row["verdict"] in stats.VERDICTS
    pngs = {p.name for p in smoke_dir.glob("*.png")}
    assert {"curves_mnist1d_mlp.png", "curves_lm.png"} <= pngs
    for p in smoke_dir.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_skips_finished_runs(smoke_dir: Path) -> None:
    path = smoke_dir / "runs.jsonl"
    lines = path.read_text().splitlines()
    # Simulate an interrupt: drop every record of one quadratic spec and one eval unit.
    drop = parse_spec("adam+clip(1.0)").text
    kept = [
        ln
        for ln in lines
        if not (json.loads(ln).get("spec") == drop and json.loads(ln)["kind"] == "quad")
    ]
    kept = [
        ln
        for ln in kept
        if not (
            json.loads(ln).get("spec") == "adam"
            and json.loads(ln)["kind"] == "eval"
            and json.loads(ln)["task"] == "mnist1d_mlp"
        )
    ]
    path.write_text("\n".join(kept) + "\n")
    proc = _run_cli(
        "run",
        "--suite",
        "smoke",
        "--out",
        str(smoke_dir),
        "--no-cost",
        "--only",
        "mnist1d_mlp,quad",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((smoke_dir / "last_run.json").read_text())["info"]
    assert info["units_run"] == 2, info  # only the two dropped units were redone
    after = records.load(path)
    assert len(after) == len(lines)
    assert {r["key"] for r in after} == {json.loads(ln)["key"] for ln in lines}


def test_filtered_adam_peak_memory_is_adams_plus_one_parameter_buffer() -> None:
    """Performance target 4, from XLA's memory analysis of the compiled optimizer step."""
    import optax

    import filtered_optax as fo
    from benchmarks import perf
    from benchmarks.core import cost

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
    specs = {
        r["spec"]
        for r in records.load(smoke_dir / "runs.jsonl")
        if r["kind"] in ("tune", "eval", "spike", "quad")
    }
    for spec in specs:
        assert f"## `{spec}`" in text
    block = text.split("## `filtered_adam`")[1].split("## ")[0]
    assert "fo.kalman_filter(eta=1.0, gamma=10.0, warmup=20" in block
    assert "(OPTIMIZERS.md)" in (smoke_dir / "REPORT.md").read_text()


def test_perf_cli_marks_every_target_and_rewrites_from_json(tmp_path: Path) -> None:
    proc = _run_cli("perf", "--quick", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = [
        line
        for line in (tmp_path / "perf.md").read_text().splitlines()
        if line.startswith("| ") and line.split("|")[1].strip() in ("1", "2", "3", "4")
    ]
    assert [line.split("|")[1].strip() for line in table] == ["1", "2", "3", "4"]
    assert all(line.rstrip(" |").endswith(("**met**", "**not met**")) for line in table)
    res = json.loads((tmp_path / "perf.json").read_text())
    assert {"filter_cost", "muon_cost", "train_step", "command"} <= set(res)
    (tmp_path / "perf_reading.md").write_text("## Reading\n\nhand-written analysis\n")
    assert _run_cli("perf", "--report", "--out", str(tmp_path)).returncode == 0
    assert "hand-written analysis" in (tmp_path / "perf.md").read_text()
