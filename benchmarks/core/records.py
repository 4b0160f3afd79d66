"""JSONL result records: one strict-JSON object per line (no NaN/Inf), typed by ``kind``.

Every record is built by :func:`make_record`, which stamps it with the provenance of the code
that produced it (:mod:`benchmarks.core.provenance`) and a hash of its task + optimizer
configuration. A report combines records only when their stamps agree
(:func:`check_provenance`); a record without a stamp is refused.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.core.provenance import STAMP_FIELDS, config_hash, describe_stamp, stamp

SCHEMA = 2
# Required fields per kind, beyond the common ones. "tune": a run on a tuning seed (validation
# split decides); "eval": a run of the chosen configuration on an evaluation seed (test split
# reported); "spike": an evaluation run with a gradient spike injected; "spike_tune": the same
# injection on a tuning seed (it picks the strongest baseline under that injection); "quad": a
# quadratic run.
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "tune": ("task", "spec", "lr", "seed", "metrics"),
    "eval": ("task", "spec", "lr", "seed", "metrics"),
    "spike": ("task", "spec", "lr", "seed", "metrics", "injection"),
    "spike_tune": ("task", "spec", "lr", "seed", "metrics", "injection"),
    "quad": ("task", "spec", "lr", "seed", "metrics"),
    "quad_curve": ("task", "spec"),
    "cost": ("what", "spec"),
}
KINDS = tuple(KIND_FIELDS)
COMMON = ("schema", "kind", "key", "suite", "provenance", "config_hash")


class ProvenanceError(ValueError):
    """Records lack a provenance stamp, or come from different code."""


def make_key(kind: str, *parts: Any) -> str:
    """``kind|part|part|…`` – equal inputs give equal keys."""
    return "|".join([kind, *map(str, parts)])


def make_record(
    kind: str,
    *,
    suite: str,
    provenance: dict[str, Any],
    config: Any,
    key_parts: tuple[Any, ...],
    **fields: Any,
) -> dict[str, Any]:
    """A validated record of ``kind`` (see :data:`KIND_FIELDS` for the fields it needs).

    ``config`` is everything that defines the run (task configuration, optimizer spec,
    learning rate, seed, injection); its hash goes into the record and into its key, so a
    resumed run never mistakes a record of another configuration for its own.
    """
    h = config_hash(config)
    rec = {
        "schema": SCHEMA,
        "kind": kind,
        "key": make_key(kind, suite, h, *key_parts),
        "suite": suite,
        "provenance": provenance,
        "config_hash": h,
        **fields,
    }
    return validate(rec)


def clean(obj: Any, digits: int = 6) -> Any:
    """Make ``obj`` strict-JSON: NumPy → Python, NaN/Inf → None, floats rounded."""
    if isinstance(obj, dict):
        return {str(k): clean(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v, digits) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return clean(obj.tolist(), digits)
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return float(f"{obj:.{digits}g}")
    return obj


def validate(rec: dict[str, Any]) -> dict[str, Any]:
    """Check the common and per-kind fields of a record (raises ``ValueError``)."""
    for f in COMMON:
        if f not in rec:
            raise ValueError(f"record lacks field {f!r}: {str(rec)[:200]}")
    if rec["schema"] != SCHEMA:
        raise ValueError(f"unknown schema {rec['schema']!r} (expected {SCHEMA})")
    if rec["kind"] not in KIND_FIELDS:
        raise ValueError(f"unknown record kind {rec['kind']!r}; valid: {list(KINDS)}")
    missing = [f for f in KIND_FIELDS[rec["kind"]] if f not in rec]
    if missing:
        raise ValueError(f"{rec['kind']} record lacks {missing}: {str(rec)[:200]}")
    return rec


def dumps(rec: dict[str, Any]) -> str:
    """One strict-JSON line for ``rec``."""
    return json.dumps(clean(validate(rec)), allow_nan=False, separators=(",", ":"))


def append(path: Path, recs: Iterable[dict[str, Any]]) -> None:
    """Append records to ``path`` (one line each) and flush, so an interrupt loses ≤ 1 unit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(dumps(r) + "\n" for r in recs)
    with open(path, "a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()


def load(path: Path, strict: bool = False) -> list[dict[str, Any]]:
    """Read the records of ``path``; a truncated last line (interrupted write) is skipped.

    Unreadable lines (bad JSON, old schema, missing fields) are skipped with a warning, or
    raise ``ValueError`` when ``strict``.
    """
    if not Path(path).exists():
        return []
    out, bad = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(validate(json.loads(line)))
            except (json.JSONDecodeError, ValueError) as e:
                if strict:
                    raise ValueError(f"{path}:{n}: unreadable record ({e})") from e
                bad.append(f"{path}:{n}: {e}")
    if bad:
        warnings.warn(
            f"skipping {len(bad)} unreadable record(s); first: {bad[0][:300]}", stacklevel=2
        )
    return out


def by_key(recs: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Index records by ``key`` (a later duplicate wins)."""
    return {r["key"]: r for r in recs}


def check_provenance(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """The one provenance all ``recs`` share; :class:`ProvenanceError` otherwise.

    A record without a stamp (no ``provenance``, or one missing a commit) is refused, and so
    are records from different commits or different uncommitted edits: a report is built from
    one run of one version of the code, or not at all (rerun the suite).
    """
    if not recs:
        raise ProvenanceError(
            "no stamped records to report on (records of an older schema "
            "carry no commit stamp and are skipped): rerun the suite"
        )
    stamps: dict[tuple, dict[str, Any]] = {}
    for r in recs:
        prov = r.get("provenance")
        if not isinstance(prov, dict) or any(
            prov.get(k) in (None, "unknown") for k in ("fo_commit", "bench_commit")
        ):
            raise ProvenanceError(
                f"record {r.get('key', '?')!r} has no commit stamp; "
                f"rerun the suite to produce stamped records"
            )
        if any(k not in prov for k in STAMP_FIELDS):
            raise ProvenanceError(f"record {r.get('key', '?')!r} has an incomplete stamp")
        stamps.setdefault(stamp(prov), prov)
    if len(stamps) > 1:
        seen = "; ".join(describe_stamp(p) for p in stamps.values())
        raise ProvenanceError(
            f"records come from {len(stamps)} versions of the code ({seen}); "
            f"a report combines one version only: rerun the suite"
        )
    return next(iter(stamps.values()))
