"""Provenance of a result: which code produced it, on which versions, from which configuration.

Every record carries :func:`provenance`: the last commit that touched ``filtered_optax/`` and
the last that touched ``benchmarks/``, whether either tree had uncommitted edits (and a hash of
those edits, so two different dirty trees never look alike), the library, JAX, Optax and Flax
versions and the machine. :func:`stamp` is the part that must agree for records to be combined.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# The trees whose code decides a result; benchmarks/results holds outputs, not code.
CODE_PATHS = ("filtered_optax", "benchmarks", ":(exclude)benchmarks/results")
STAMP_FIELDS = ("fo_commit", "bench_commit", "dirty", "dirty_hash")


def config_hash(obj: Any) -> str:
    """Stable short sha256 of a JSON-able object (task + optimizer configuration)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _git(*args: str) -> str:
    """Output of ``git args`` in the repository root ('' when git or the repository is absent)."""
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@cache
def code_state() -> dict[str, Any]:
    """Commits and dirty state of ``filtered_optax/`` and ``benchmarks/`` (cached per process)."""
    dirty_files = _git("status", "--porcelain", "--", *CODE_PATHS)
    diff = _git("diff", "HEAD", "--", *CODE_PATHS)
    return {
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "fo_commit": _git("log", "-1", "--format=%H", "--", "filtered_optax") or "unknown",
        "bench_commit": _git("log", "-1", "--format=%H", "--", "benchmarks") or "unknown",
        "dirty": bool(dirty_files),
        # Hash of the edits and the untracked file names: equal only for the same dirty tree.
        "dirty_hash": config_hash([diff, dirty_files]) if dirty_files else "",
    }


def provenance() -> dict[str, Any]:
    """The provenance dict stored in every record (see module docstring)."""
    import flax
    import jax
    import optax

    import filtered_optax as fo

    return {
        **code_state(),
        "filtered_optax": getattr(fo, "__version__", "unknown"),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "flax": flax.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def stamp(prov: dict[str, Any]) -> tuple[Any, ...]:
    """The fields of ``prov`` that must agree for two records to be combined."""
    return tuple(prov.get(k) for k in STAMP_FIELDS)


def describe_stamp(prov: dict[str, Any]) -> str:
    """``filtered_optax@abc123456789, benchmarks@def…`` plus the dirty state, for reports."""
    text = (
        f"filtered_optax@{str(prov.get('fo_commit'))[:12]}, "
        f"benchmarks@{str(prov.get('bench_commit'))[:12]}"
    )
    if prov.get("dirty"):
        text += f", **uncommitted edits** (hash {prov.get('dirty_hash')})"
    return text
