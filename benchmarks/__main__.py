"""Command line: ``python -m benchmarks {run,report,cost,specs,ladder,perf}``.

Examples (from the repository root)::

    python -m benchmarks run --suite quick
    python -m benchmarks ladder            # the difficulty ladder (benchmarks/results/ladder)
    python -m benchmarks run --suite full
    python -m benchmarks cost
    python -m benchmarks perf              # performance targets (benchmarks/results/perf.md)
    python -m benchmarks report --suite full
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _command_line(argv: list[str]) -> str:
    return "python -m benchmarks " + " ".join(shlex.quote(a) for a in argv)


def run_summary(out: Path, suite: str, info: dict) -> str:
    """What a run rests on: the data of every task (with hashes) and every skipped task."""
    from benchmarks import records, report

    recs = [r for r in records.load(out / "runs.jsonl") if r["suite"] == suite]
    lines = ["", f"Suite `{suite}` ran on this data (shipped files: benchmarks/data/SOURCES.md):"]
    lines += report.data_lines(recs)
    lines += [f"SKIPPED: {s}" for s in info.get("skipped", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a suite (resumes from its JSONL), then report")
    run.add_argument("--suite", default="quick", help="smoke | quick | full")
    run.add_argument("--data", default=None,
                     help="UTF-8 text corpus for the LM (default: the shipped tinyshakespeare)")
    run.add_argument("--mnist1d", default=None,
                     help="MNIST-1D .npz (default: the shipped benchmarks/data/mnist1d_5000.npz)")
    run.add_argument("--fashion", default=None, help="directory with Fashion-MNIST IDX files")
    run.add_argument("--out", default=None, help="output dir (default benchmarks/results/SUITE)")
    run.add_argument("--only", default=None,
                     help="comma-separated subset: lm,mnist1d_mlp,mnist1d_cnn,fashion_mlp,quad,"
                          "cost")
    run.add_argument("--no-cost", action="store_true", help="skip the cost benchmark")
    rep = sub.add_parser("report", help="rewrite REPORT.md and plots from the JSONL")
    rep.add_argument("--suite", default="quick")
    rep.add_argument("--out", default=None)
    rep.add_argument("--command", default="", help="command line to cite in the report")
    cost = sub.add_parser("cost", help="cost benchmark only (suite 'full' sizes by default)")
    cost.add_argument("--suite", default="full")
    cost.add_argument("--out", default=None)
    sub.add_parser("specs", help="list optimizer spec names")
    lad = sub.add_parser("ladder", help="the difficulty ladder: synthetic problems with fixed "
                                        "pass criteria, every optimizer, pass-rate heatmap")
    lad.add_argument("--out", default=None, help="output dir (default benchmarks/results/ladder)")
    lad.add_argument("--seeds", type=int, default=None,
                     help="held-out seeds per cell (default 16; quick: 2)")
    lad.add_argument("--quick", action="store_true",
                     help="plumbing check: few steps, seeds, LRs and optimizers (seconds)")
    lad.add_argument("--problems", default=None, help="comma-separated subset of the problems")
    lad.add_argument("--report", action="store_true",
                     help="only rewrite LADDER.md and the figures from OUT/results.json")
    perf = sub.add_parser("perf", help="the performance targets: filter cost, Muon speed and "
                                       "orthogonality, train-step overhead, peak bytes")
    perf.add_argument("--out", default=None, help="output dir (default benchmarks/results)")
    perf.add_argument("--quick", action="store_true", help="small sizes (plumbing check)")
    perf.add_argument("--report", action="store_true",
                      help="only rewrite perf.md from perf.json and perf_reading.md")
    a = p.parse_args(argv)
    if a.cmd == "perf":
        from benchmarks import perf as perf_lib

        out = Path(a.out) if a.out else RESULTS
        if a.report:
            perf_lib.write_report(out)
        else:
            perf_lib.main(out, _command_line(argv), quick=a.quick)
        print((out / "perf.md").read_text())
        return 0
    if a.cmd == "ladder":
        if a.quick and "jax" not in sys.modules:
            # Quick runs are all compile time: ask XLA for its cheapest code generation.
            os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
        from benchmarks import ladder

        if a.seeds is not None and a.seeds < 1:
            p.error(f"--seeds must be >= 1, got {a.seeds}")
        out = Path(a.out) if a.out else RESULTS / "ladder"
        t0 = time.perf_counter()
        if a.report:
            if not (out / "results.json").exists():
                p.error(f"--report: no results.json in {out}")
            res = ladder.rewrite_report(out)
            print(ladder.summary_text(res))
            print(f"\nrewrote {out / 'LADDER.md'} and the figures")
            return 0
        try:
            res = ladder.main(out, _command_line(argv), quick=a.quick, seeds=a.seeds,
                              problems=a.problems.split(",") if a.problems else None)
        except ValueError as e:
            p.error(str(e))
        print(ladder.summary_text(res))
        print(f"\nwrote {out / 'LADDER.md'}, results.json, heatmap.png, curves.png "
              f"({time.perf_counter() - t0:.0f} s total)")
        return 0
    if getattr(a, "suite", None) == "smoke" and "jax" not in sys.modules:
        # Smoke runs a few steps of everything: compile time is all that matters, so ask XLA
        # for its cheapest code generation (numbers of a smoke run mean nothing anyway).
        os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

    from benchmarks import report, suites

    if a.cmd == "specs":
        from benchmarks.specs import REGISTRY

        for name, e in sorted(REGISTRY.items()):
            print(f"{name:16s} {e.kind:8s} {e.doc}")
        return 0
    try:
        suite = suites.get_suite(a.suite)
    except ValueError as e:
        p.error(str(e))
    out = Path(a.out) if a.out else RESULTS / suite.name
    out.mkdir(parents=True, exist_ok=True)
    command = _command_line(argv)

    if a.cmd == "report":
        last = out / "last_run.json"
        info = json.loads(last.read_text()) if last.exists() else {}
        path, claims = report.write_report(out, suite.name, a.command or info.get("command", ""),
                                           info.get("info"), suite.notes)
        print(report.claims_text(claims))
        print(f"wrote {path}")
        return 0

    from benchmarks.runner import Runner

    t0 = time.perf_counter()
    if a.cmd == "cost":
        runner = Runner(suite, out, only_tasks=("cost",))
    else:
        only = tuple(a.only.split(",")) if a.only else None
        runner = Runner(suite, out, a.data, a.mnist1d, a.fashion, only, run_cost=not a.no_cost)
    info = runner.run()
    last = out / "last_run.json"
    if a.cmd == "cost" and last.exists():  # keep citing the suite's own command, add this one
        meta = json.loads(last.read_text())
        meta.setdefault("info", {}).setdefault("extra_commands", []).append(
            {"command": command, "total_s": info["total_s"]})
    else:
        meta = {"command": command, "info": info}
    last.write_text(json.dumps(meta, indent=1))
    path, claims = report.write_report(out, suite.name, meta["command"], meta["info"],
                                       suite.notes)
    print(run_summary(out, suite.name, meta["info"]))
    print("\nClaims (README, \"Benchmarks: what is true of the claims\"), "
          "computed from the records:\n")
    print(report.claims_text(claims))
    print(f"\nwrote {path} and plots in {out} ({time.perf_counter() - t0:.0f} s total)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
