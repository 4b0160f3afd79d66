"""Tests of the verdict statistics (Holm, TOST, censoring, zero variance), of the claims built
from records, and of the report's refusal of unstamped or mixed-commit records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.core import records, stats
from benchmarks.suite import analysis as an
from benchmarks.suite import report
from benchmarks.suite.suites import F

PROV = {
    "commit": "c" * 40,
    "fo_commit": "a" * 40,
    "bench_commit": "b" * 40,
    "dirty": False,
    "dirty_hash": "",
    "filtered_optax": "0",
    "jax": "0",
    "optax": "0",
    "flax": "0",
    "python": "3",
    "backend": "cpu",
    "machine": "x",
    "cpus": 2,
}
BASE = "adamw(weight_decay=0.1)"


def test_holm_adjusts_step_down_and_stays_monotone() -> None:
    adj = stats.holm([0.01, 0.04, 0.03, 0.5])
    assert adj == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert stats.holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])


def test_pure_noise_is_never_better() -> None:
    """Method = baseline + zero-mean noise: over many simulated claims the Holm-corrected
    "better" rate stays within the family-wise level, and a fixed draw is inconclusive."""
    rng = np.random.default_rng(0)
    false_better = 0
    for _ in range(300):
        comps = []
        for j in range(4):
            base = rng.normal(2.0, 0.1, 5)
            comps.append(
                stats.compare(
                    f"c{j}",
                    "m",
                    "b",
                    "b",
                    dict(enumerate(base + rng.normal(0, 0.05, 5))),
                    dict(enumerate(base)),
                )
            )
        stats.decide(comps)
        false_better += any(c.verdict == "better" for c in comps)
    assert false_better / 300 <= stats.ALPHA + 0.02
    base = np.linspace(2.0, 2.4, 6)
    noise = np.array([0.04, -0.05, 0.01, 0.03, -0.02, -0.01])
    c = stats.decide(
        [stats.compare("x", "m", "b", "b", dict(enumerate(base + noise)), dict(enumerate(base)))]
    )[0]
    assert c.verdict == "inconclusive"


def test_a_directional_verdict_never_stands_beside_an_interval_covering_zero() -> None:
    """Better/worse is a two-sided test at ALPHA: for one comparison it agrees exactly with the
    printed 95 % interval (two one-sided tests at ALPHA would call some of these "worse")."""
    rng = np.random.default_rng(1)
    directional = 0
    for _ in range(400):
        n = int(rng.integers(2, 7))
        base = rng.normal(2.0, 0.1, n)
        method = base + rng.normal(0.02, 0.02, n)
        c = stats.decide(
            [stats.compare("x", "m", "b", "b", dict(enumerate(method)), dict(enumerate(base)))]
        )[0]
        covers_zero = c.delta.lo <= 0.0 <= c.delta.hi
        assert (c.verdict in ("better", "worse")) == (not covers_zero), (c.verdict, c.delta)
        directional += c.verdict == "worse"
    assert directional > 0  # the draws do reach a verdict sometimes


def test_equivalent_within_the_margin_and_better_when_clearly_lower() -> None:
    base = np.linspace(2.0, 2.4, 8)
    tiny = np.array([1, -1, 2, -2, 1, -1, 0.5, -0.5]) * 1e-4  # ≪ 1 % of 2.2
    eq = stats.decide(
        [stats.compare("x", "m", "b", "b", dict(enumerate(base + tiny)), dict(enumerate(base)))]
    )[0]
    assert eq.verdict == "equivalent" and eq.margin == pytest.approx(0.01 * base.mean())
    better = stats.decide(
        [
            stats.compare(
                "x", "m", "b", "b", dict(enumerate(base - 0.2 + tiny)), dict(enumerate(base))
            )
        ]
    )[0]
    assert better.verdict == "better" and better.delta.hi < 0


def test_zero_variance_difference_is_not_evidence() -> None:
    c = stats.decide(
        [
            stats.compare(
                "steps",
                "m",
                "b",
                "b",
                {0: 100, 1: 150, 2: 200},
                {0: 150, 1: 200, 2: 250},
                resolution=50,
            )
        ]
    )[0]
    assert c.zero_variance and c.verdict == "inconclusive"
    assert "zero variance" in c.delta_text()


def test_censored_outcomes_use_the_sign_test_and_print_as_censored() -> None:
    method = {s: 100.0 for s in range(6)}
    base = {s: math.inf for s in range(6)}  # never reached the target
    c = stats.decide([stats.compare("steps", "m", "b", "b", method, base, resolution=50)])[0]
    assert c.delta is None and c.censored == (0, 6) and c.wins == (6, 0)
    assert c.verdict == "better" and c.p_better == pytest.approx(0.5**6)
    assert "censored" in c.delta_text()
    few = stats.decide(
        [stats.compare("s", "m", "b", "b", {0: 1.0, 1: 2.0}, {0: math.inf, 1: math.inf})]
    )[0]
    assert few.verdict == "inconclusive"  # 2 pairs cannot reach 0.05


def _net(kind: str, spec: str, seed: int, test: float, lr: float = 1e-3, **extra) -> dict:
    metrics = {
        "final_val_metric": test,
        "test_metric": test,
        "diverged": False,
        "steps_to_target": [100, 200, None],
    }
    return records.make_record(
        kind,
        suite="tiny",
        provenance=PROV,
        config=[spec, seed, lr],
        key_parts=(spec, seed),
        task="t",
        data_id="d",
        task_config={},
        spec=spec,
        lr=lr,
        warmup=5,
        seed=seed,
        steps=300,
        eval_every=50,
        metric="val_loss",
        higher_better=False,
        targets=[3, 2, 1],
        n_params=10,
        metrics=metrics,
        time_s=1.0,
        step_time_s=0.01,
        curves={"val_metric": [test], "val_loss": [test]},
        **extra,
    )


def _tiny_suite(method_offsets: np.ndarray) -> list[dict]:
    base = np.linspace(2.0, 2.4, len(method_offsets))
    recs = [_net("tune", s, k, 2.2) for s in (F, BASE) for k in (0, 1)]
    recs += [_net("eval", BASE, 1000 + i, float(b)) for i, b in enumerate(base)]
    recs += [
        _net("eval", F, 1000 + i, float(b + d))
        for i, (b, d) in enumerate(zip(base, method_offsets, strict=True))
    ]
    return recs


def test_tiny_suite_pure_noise_is_inconclusive() -> None:
    noise = np.array([0.04, -0.05, 0.01, 0.03, -0.02, -0.01])
    c = an.versus_adamw(_tiny_suite(noise), F, "generalizes", "test", "test")
    assert [k.verdict for k in c.comparisons] == ["inconclusive"]
    assert c.comparisons[0].baseline == BASE and "lr=0.001" in c.comparisons[0].baseline_config
    assert c.verdict == "inconclusive"


def test_tiny_suite_equivalent_within_margin() -> None:
    tiny = np.array([1, -1, 2, -2, 1, -1]) * 1e-4
    c = an.versus_adamw(_tiny_suite(tiny), F, "generalizes", "test", "test")
    assert c.verdict == "equivalent"
    steps = an.versus_adamw(_tiny_suite(tiny), F, "faster", "steps", "steps")
    assert len(steps.comparisons) == 3  # one per target, the last censored on both sides
    assert all(k.verdict == "inconclusive" for k in steps.comparisons)  # identical steps


def _write(path: Path, recs: list[dict]) -> None:
    path.write_text("".join(records.dumps(r) + "\n" for r in recs))


def test_report_refuses_unstamped_and_mixed_commit_records(tmp_path: Path) -> None:
    recs = _tiny_suite(np.zeros(6))
    bare = dict(recs[0], provenance={"commit": "x"})
    _write(tmp_path / "runs.jsonl", [*recs, bare])
    with pytest.raises(records.ProvenanceError, match="no commit stamp"):
        report.write_report(tmp_path, "tiny")
    other = dict(recs[1], key="other", provenance=dict(PROV, fo_commit="f" * 40))
    _write(tmp_path / "runs.jsonl", [*recs, other])
    with pytest.raises(records.ProvenanceError, match="2 versions"):
        report.write_report(tmp_path, "tiny")
    dirty = dict(recs[1], key="dirty", provenance=dict(PROV, dirty=True, dirty_hash="abc"))
    with pytest.raises(records.ProvenanceError):
        records.check_provenance([*recs, dirty])
    assert records.check_provenance(recs) == PROV


def test_report_of_one_commit_prints_it_and_writes_summary(tmp_path: Path) -> None:
    _write(tmp_path / "runs.jsonl", _tiny_suite(np.linspace(-0.3, -0.2, 6)))
    path, _ = report.write_report(tmp_path, "tiny", indicative=True)
    text = path.read_text()
    assert "a" * 12 in text and "b" * 12 in text and "Indicative only" in text
    summ = json.loads((tmp_path / "summary.json").read_text())
    assert summ["commit"] == PROV["commit"]
    assert summ["tasks"]["t"]["tuning_seeds"] == [0, 1]
    assert summ["tasks"]["t"]["eval_seeds"] == list(range(1000, 1006))
    row = next(r for r in summ["claims"] if r["claim"].startswith("generalizes"))
    assert row["baseline"] == BASE and row["verdict"] == "better" and row["p_holm"] < 0.05


def _spiked(kind: str, spec: str, seed: int, val: float) -> dict:
    inj = {"kind": "batch", "magnitude": 1000.0, "pattern": "once", "step": 150}
    return _net(kind, spec, seed, val, injection=inj)


def test_spike_verdicts_face_the_baseline_that_was_best_under_that_spike() -> None:
    """Clean tuning prefers `adam(b2=0.95)`; under the injection, on the tuning seeds, the
    clip is better, so the verdict (on the evaluation seeds) is against the clip."""
    adam, clip = "adam(b2=0.95)", "adam+clip(max_norm=1.0)"
    recs = [
        _net("tune", spec, k, v) for spec, v in ((F, 2.2), (adam, 2.0), (clip, 2.1)) for k in (0, 1)
    ]
    recs += [
        _spiked("spike_tune", spec, k, v)
        for spec, v in ((F, 2.3), (adam, 3.0), (clip, 2.2))
        for k in (0, 1)
    ]
    ev = np.linspace(2.0, 2.4, 6)
    recs += [_spiked("spike", clip, 1000 + i, float(x)) for i, x in enumerate(ev)]
    recs += [_spiked("spike", adam, 1000 + i, float(x) + 1.0) for i, x in enumerate(ev)]
    recs += [_spiked("spike", F, 1000 + i, float(x) + 0.3 + 0.01 * i) for i, x in enumerate(ev)]
    claim = an.spike_claim(recs, natural=False)
    (c,) = claim.comparisons
    assert c.baseline == clip and c.verdict == "worse"  # against plain Adam it would be "better"
    assert c.n == 6  # evaluation seeds only


def test_report_lists_the_parts_a_restricted_run_left_out(tmp_path: Path) -> None:
    _write(tmp_path / "runs.jsonl", _tiny_suite(np.linspace(-0.3, -0.2, 6)))
    path, _ = report.write_report(tmp_path, "tiny", planned=("lm", "t", "quad"))
    assert "**Not in this run**: lm, quad." in path.read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["not_run"] == ["lm", "quad"]
    path, _ = report.write_report(tmp_path, "tiny", planned=("t",))
    assert "Not in this run" not in path.read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["not_run"] == []


def test_suite_parts_are_what_run_only_accepts() -> None:
    from benchmarks.suite import suites

    full = suites.get_suite("full")
    assert full.parts == ("lm", "mnist1d_mlp", "mnist1d_cnn", "fashion_mlp", "quad", "cost")


def test_censored_and_lr_formatting() -> None:
    from benchmarks.core.tables import censored, lr_text

    assert censored(math.inf, 400) == "> 400" and censored(None, 400) == "> 400"
    assert censored(150.0, 400) == "150"
    assert lr_text(0.00195312) == "0.00195 (2^-9)" and lr_text(0.003) == "0.003"


def test_provenance_stamps_commits_dirty_state_and_versions() -> None:
    import jax

    from benchmarks.core import provenance

    prov = provenance.provenance()
    assert set(provenance.STAMP_FIELDS) <= set(prov) and prov["jax"] == jax.__version__
    assert len(prov["fo_commit"]) == 40 and len(prov["bench_commit"]) == 40
    assert prov["dirty"] == bool(prov["dirty_hash"])
    assert provenance.config_hash({"a": 1, "b": [2]}) == provenance.config_hash({"b": [2], "a": 1})
    assert provenance.config_hash({"a": 1}) != provenance.config_hash({"a": 2})


def test_outside_git_the_code_is_stamped_by_a_hash_of_its_files(tmp_path, monkeypatch) -> None:
    """An unpacked archive has no commits: records are still stamped, by the files' content,
    so the report can combine them and still refuses records made by other code."""
    from benchmarks.core import provenance

    for sub in ("filtered_optax", "benchmarks", "benchmarks/results"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    (tmp_path / "filtered_optax" / "a.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "b.py").write_text("y = 2\n")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    monkeypatch.setattr(provenance, "_git", lambda *args: "")
    provenance.code_state.cache_clear()
    try:
        first = provenance.code_state()
        assert first["fo_commit"].startswith("files:") and not first["dirty"]
        (tmp_path / "benchmarks" / "results" / "runs.jsonl").write_text("{}\n")  # outputs
        provenance.code_state.cache_clear()
        assert provenance.code_state() == first
        (tmp_path / "filtered_optax" / "a.py").write_text("x = 3\n")  # other code
        provenance.code_state.cache_clear()
        second = provenance.code_state()
        assert second["fo_commit"] != first["fo_commit"]
        assert second["bench_commit"] == first["bench_commit"]
    finally:
        provenance.code_state.cache_clear()


def test_runner_moves_records_of_other_code_aside(tmp_path: Path) -> None:
    from benchmarks.suite import suites
    from benchmarks.suite.runner import Runner

    recs = _tiny_suite(np.zeros(6))  # stamped with a commit that is not this tree's
    _write(tmp_path / "runs.jsonl", recs)
    runner = Runner(suites.get_suite("smoke"), tmp_path)
    assert runner.done == {} and not (tmp_path / "runs.jsonl").exists()
    assert len(list(tmp_path.glob("runs.stale-*.jsonl"))) == 1
    mine = [dict(r, provenance=runner.prov) for r in recs]
    _write(tmp_path / "runs.jsonl", mine)
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write('{"schema": 2, "kind": "tu')  # an interrupted write is not "other code"
    with pytest.warns(UserWarning, match="skipping"):
        again = Runner(suites.get_suite("smoke"), tmp_path)
    assert len(again.done) == len(mine)
