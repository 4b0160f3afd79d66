"""Command line: ``python -m benchmarks {run,report,specs,ladder,perf}``.

Examples (from the repository root)::

    python -m benchmarks run --suite quick   # indicative, ≤ 10 min on 2 cores
    python -m benchmarks run --suite full    # the committed report (resumable)
    python -m benchmarks report --suite full
    python -m benchmarks ladder              # the difficulty ladder (benchmarks/results/ladder)
    python -m benchmarks perf                # performance targets (benchmarks/results/perf.md)

This module only parses the command line and dispatches to the applications.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from benchmarks.suite import cli as suite_cli


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    suite_cli.add_parsers(sub)
    if "jax" not in sys.modules and (
        ("ladder" in argv and "--quick" in argv)
        or argv[:1] in (["run"], ["report"])
        and "smoke" in argv
    ):
        # Plumbing runs are all compile time: ask XLA for its cheapest code generation.
        os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
    from benchmarks import ladder, perf

    ladder.add_parsers(sub)
    perf.add_parsers(sub)
    a = p.parse_args(argv)
    command = "python -m benchmarks " + " ".join(shlex.quote(x) for x in argv)
    app = {"ladder": ladder.cli, "perf": perf.cli}.get(a.cmd, suite_cli.main)
    try:
        return app(a, command)
    except ValueError as e:
        p.error(str(e))
        return 2


if __name__ == "__main__":
    sys.exit(main())
