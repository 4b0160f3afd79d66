"""JSONL result records: one JSON object per line, strict JSON (no NaN/Inf), with a schema
version and a unique ``key`` that the runner uses to resume without redoing finished runs."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA = 1
KINDS = ("net", "spike", "quad", "quad_curve", "cost")
REQUIRED = ("schema", "kind", "key", "suite")


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able object (used in keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def make_key(kind: str, *parts: Any) -> str:
    """``kind|part|part|…`` – equal inputs give equal keys."""
    return "|".join([kind, *map(str, parts)])


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
    """Check the common fields of a record (raises ``ValueError``)."""
    for f in REQUIRED:
        if f not in rec:
            raise ValueError(f"record lacks field {f!r}: {str(rec)[:200]}")
    if rec["schema"] != SCHEMA:
        raise ValueError(f"unknown schema {rec['schema']!r} (expected {SCHEMA})")
    if rec["kind"] not in KINDS:
        raise ValueError(f"unknown record kind {rec['kind']!r}; valid: {list(KINDS)}")
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


def load(path: Path) -> list[dict[str, Any]]:
    """Read every valid record; a truncated last line (interrupted write) is skipped."""
    if not Path(path).exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(validate(json.loads(line)))
            except (json.JSONDecodeError, ValueError) as e:
                warnings.warn(f"{path}:{n}: skipping unreadable record ({e})", stacklevel=2)
    return out


def by_key(recs: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Index records by ``key`` (a later duplicate wins)."""
    return {r["key"]: r for r in recs}
