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


def files_hash(subdir: str) -> str:
    """``files:<sha256>`` of every file under ``ROOT/subdir`` (names and bytes, results and
    caches excluded): the code's identity where git cannot give one (an unpacked archive)."""
    digest = hashlib.sha256()
    base = ROOT / subdir
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(ROOT).as_posix()
        if not path.is_file() or "__pycache__" in path.parts or rel.startswith(_OUTPUTS):
            continue
        digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return "files:" + digest.hexdigest()[:40]


# Outputs, not code: never part of a files hash.
_OUTPUTS = ("benchmarks/results/",)


@cache
def code_state() -> dict[str, Any]:
    """Commits and dirty state of ``filtered_optax/`` and ``benchmarks/`` (cached per process).

    Outside a git checkout (or in one without commits) each tree is identified by
    :func:`files_hash` instead of a commit, so records stay stamped and comparable.
    """
    if not _git("rev-parse", "--verify", "-q", "HEAD"):
        fo_hash, bench_hash = files_hash("filtered_optax"), files_hash("benchmarks")
        return {
            "commit": "no git commit",
            "fo_commit": fo_hash,
            "bench_commit": bench_hash,
            "dirty": False,
            "dirty_hash": "",
        }
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
