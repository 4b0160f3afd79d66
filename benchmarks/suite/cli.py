"""Command line of the suite: ``run``, ``report`` and ``specs`` (dispatched by __main__)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The suite's subcommands."""
    run = sub.add_parser("run", help="run a suite (resumes from its JSONL), then report")
    run.add_argument("--suite", default="quick", help="smoke | quick | full")
    run.add_argument(
        "--data",
        default=None,
        help="UTF-8 text corpus for the LM (default: the shipped tinyshakespeare)",
    )
    run.add_argument("--mnist1d", default=None, help="MNIST-1D .npz (default: shipped)")
    run.add_argument("--fashion", default=None, help="directory with Fashion-MNIST IDX files")
    run.add_argument("--out", default=None, help="output dir (default benchmarks/results/SUITE)")
    run.add_argument(
        "--only",
        default=None,
        help="comma-separated subset: lm,mnist1d_mlp,mnist1d_cnn,fashion_mlp,quad,cost",
    )
    run.add_argument("--no-cost", action="store_true", help="skip the cost benchmark")
    rep = sub.add_parser("report", help="rewrite REPORT.md, summary.json and plots")
    rep.add_argument("--suite", default="quick")
    rep.add_argument("--out", default=None)
    sub.add_parser("specs", help="list optimizer spec names")


def run_summary(out: Path, suite: str, info: dict) -> str:
    """What a run rests on: the data of every task (name + sha256 prefix) and what was skipped."""
    from benchmarks.core import records
    from benchmarks.suite import report

    recs = [r for r in records.load(out / "runs.jsonl") if r.get("suite") == suite]
    lines = ["", f"Suite `{suite}` ran on this data (shipped files: benchmarks/data/SOURCES.md):"]
    lines += report.data_lines(recs)
    lines += [f"SKIPPED: {s}" for s in info.get("skipped", [])]
    return "\n".join(lines)


def main(a: argparse.Namespace, command: str) -> int:
    """Run the parsed suite subcommand; returns the exit code."""
    if getattr(a, "suite", None) == "smoke" and "jax" not in sys.modules:
        # Smoke runs a few steps of everything: compile time is all that matters.
        os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
    from benchmarks.core.records import ProvenanceError
    from benchmarks.core.specs import REGISTRY
    from benchmarks.suite import report, suites

    if a.cmd == "specs":
        for name, e in sorted(REGISTRY.items()):
            print(f"{name:16s} {e.kind:8s} {e.doc}")
        return 0
    suite = suites.get_suite(a.suite)
    out = Path(a.out) if a.out else RESULTS / suite.name
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last_run.json"
    if a.cmd == "run":
        from benchmarks.suite.runner import Runner

        paths = {
            "lm": a.data,
            "mnist1d_mlp": a.mnist1d,
            "mnist1d_cnn": a.mnist1d,
            "fashion_mlp": a.fashion,
        }
        only = tuple(a.only.split(",")) if a.only else None
        t0 = time.perf_counter()
        info = Runner(suite, out, paths, only, run_cost=not a.no_cost).run()
        info["total_s"] = time.perf_counter() - t0
        last.write_text(json.dumps({"command": command, "info": info}, indent=1))
    meta = json.loads(last.read_text()) if last.exists() else {}
    try:
        path, claims = report.write_report(
            out,
            suite.name,
            meta.get("command", ""),
            meta.get("info"),
            suite.notes,
            suite.indicative,
            suite.parts,
        )
    except ProvenanceError as e:
        print(f"refusing to report on {out / 'runs.jsonl'}: {e}", file=sys.stderr)
        return 2
    print(run_summary(out, suite.name, meta.get("info") or {}))
    label = " (INDICATIVE ONLY: small size, not evidence)" if suite.indicative else ""
    print(f"\nClaims{label}, computed from the records:\n")
    print(report.claims_text(claims))
    print(f"\nwrote {path}, summary.json and plots in {out}")
    return 0
