"""How distributed Newton–Schulz scales with the device count: FLOPs, collective bytes, error.

``python -m benchmarks.ns_scaling [--quick]`` prints a Markdown table. For N = 1, 2, 4, 8
simulated CPU devices (each N in its own subprocess, since the device count must be set before
jax is imported) and for replicated (data parallel) and FSDP-sharded parameters (the first
matrix axis over all devices), it orthogonalizes

* ``8 x 1024²`` — eight equal square matrices (``8 x 256²`` with ``--quick``), and
* ``lm d=128`` — the hidden matrices of a 2-layer transformer LM of width 128 (q, k, v, o and
  the two MLP matrices per layer; tall matrices transposed to wide so that same-shape ones
  share one stack),

in two ways: ``stack`` — the same-shape stacks built by hand and passed to
:func:`filtered_optax._ns_split.orthogonalize_stack`; ``fo.muon update`` — the whole jitted
``fo.muon(1e-3).update`` on the parameter tree (momentum, Newton–Schulz split by its default
``ns_split_axes="auto"``, scaling, AdamW side), on ``jax.make_mesh``'s Explicit mesh. It
reports from the compiled program: the per-device FLOPs of XLA's cost analysis (and their
ratio to N = 1), the bytes moved by collectives (the sum of operand sizes of all-gather /
all-reduce / all-to-all / collective-permute / reduce-scatter in the compiled HLO, per
device), and the largest absolute difference to the single-device result. Target: per-device
FLOPs at most ``1/N`` of one device's plus padding (<= 0.30 at N = 8 for eight equal
matrices), differences <= 1e-5.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

DEVICE_COUNTS = (1, 2, 4, 8)
LAYOUTS = ("replicated", "fsdp")
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")
# Targets of the scaling issue: NS FLOPs per device at N = 8 for 8 equal matrices, and the
# largest difference to the single-device result.
MAX_FLOPS_RATIO_AT_8 = 0.30
MAX_DIFF = 1e-5
# Worker timeout: the full-size 8 x 1024² case takes about a minute per N on two CPU cores.
WORKER_TIMEOUT_S = 900

_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "bf16": 2,
    "f16": 2,
    "s16": 2,
    "u16": 2,
    "f32": 4,
    "s32": 4,
    "u32": 4,
    "f64": 8,
    "s64": 8,
    "u64": 8,
    "c64": 8,
    "c128": 16,
}
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_DEF = re.compile(r"^\s*(?:ROOT\s+)?(%[\w.\-]+)\s*=\s*(\([^()]*\)|\S+)\s+([\w\-]+)\((.*)$")
_COMMENT = re.compile(r"/\*.*?\*/")


def lm_shapes(d: int = 128, layers: int = 2) -> dict[str, tuple[int, int]]:
    """The hidden matrices of a small transformer LM (width ``d``, MLP width ``4d``)."""
    shapes = {}
    for i in range(layers):
        for name in ("q", "k", "v", "o"):
            shapes[f"layer{i}/attn/{name}"] = (d, d)
        shapes[f"layer{i}/mlp/fc1"] = (d, 4 * d)
        shapes[f"layer{i}/mlp/fc2"] = (4 * d, d)
    return shapes


def square_shapes(n: int, size: int) -> dict[str, tuple[int, int]]:
    return {f"w{i}": (size, size) for i in range(n)}


def shape_bytes(shape_text: str) -> int:
    """Bytes of an HLO shape (an array or a tuple of arrays), e.g. ``f32[8,128]{1,0}``."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape_text):
        size = 1
        for d in filter(None, dims.split(",")):
            size *= int(d)
        total += size * _DTYPE_BYTES.get(dtype, 4)
    return total


def _operands(args: str) -> list[str]:
    """The operand texts of an HLO call: everything up to the closing parenthesis."""
    depth, out, cur = 0, [], ""
    for ch in args:
        if ch == ")" and depth == 0:
            break
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [o for o in [*out, cur.strip()] if o]


def collective_bytes(hlo: str) -> dict[str, int]:
    """Per-device bytes sent into each kind of collective: the sum of its operands' sizes.

    Reads the compiled (per-device, SPMD-partitioned) HLO text; an operand's shape is taken
    inline when printed, else from the instruction that defines it. Async pairs count once
    (at ``-start``).
    """
    shapes, calls = {}, []
    for line in hlo.splitlines():
        m = _DEF.match(_COMMENT.sub("", line))
        if not m:
            continue
        name, shape, op, rest = m.groups()
        shapes[name] = shape
        base = op[: -len("-start")] if op.endswith("-start") else op
        if base in COLLECTIVES:
            calls.append((base, _operands(rest)))
    out = dict.fromkeys(COLLECTIVES, 0)
    for kind, operands in calls:
        for o in operands:
            ref = o.split()[-1]
            out[kind] += shape_bytes(o) if _ARRAY.search(o) else shape_bytes(shapes.get(ref, ""))
    return out


def dot_shapes(hlo: str) -> list[tuple[int, ...]]:
    """Result shapes of every ``dot`` in an HLO text."""
    found = re.findall(r"=\s*[a-z]+\d*\[([\d,]*)\]\S*\s+dot\(", hlo)
    return [tuple(int(d) for d in s.split(",") if d) for s in found]


def compiled_flops(compiled: Any) -> float:
    """FLOPs of a compiled program (per device) from XLA's cost analysis."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0]
    return float(cost.get("flops", 0.0))


def group_stacks(shapes: dict[str, tuple[int, int]]) -> dict[tuple[int, int], int]:
    """How many matrices of each (short, long) shape there are (tall ones are transposed)."""
    groups: dict[tuple[int, int], int] = {}
    for a, b in shapes.values():
        key = (min(a, b), max(a, b))
        groups[key] = groups.get(key, 0) + 1
    return groups


def _worker_case(name: str, shapes: dict, layout: str) -> dict[str, Any]:
    """Orthogonalizes one case on all visible devices; returns its row (worker side)."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from filtered_optax._ns_split import orthogonalize_stack
    from filtered_optax._orthogonal import newton_schulz

    n_dev = jax.device_count()
    mesh = jax.make_mesh((n_dev,), ("fsdp" if layout == "fsdp" else "data",))
    spec = P(None, "fsdp", None) if layout == "fsdp" else P()
    rng = np.random.default_rng(0)
    host = [
        rng.standard_normal((k, a, b)).astype(np.float32)
        for (a, b), k in sorted(group_stacks(shapes).items())
    ]
    stacks = [jax.device_put(h, NamedSharding(mesh, spec)) for h in host]
    fn = jax.jit(lambda ss: [orthogonalize_stack(s, newton_schulz) for s in ss])
    compiled = fn.lower(stacks).compile()
    out = compiled(stacks)
    ref = [np.asarray(jax.jit(newton_schulz)(jax.device_put(h, jax.devices()[0]))) for h in host]
    diff = max(float(np.max(np.abs(np.asarray(o) - r))) for o, r in zip(out, ref))
    kept = all(o.sharding.is_equivalent_to(s.sharding, 3) for o, s in zip(out, stacks))
    hlo = compiled.as_text()
    return {
        "case": name,
        "layout": layout,
        "via": "stack",
        "devices": n_dev,
        "flops_per_device": compiled_flops(compiled),
        "collective_bytes": sum(collective_bytes(hlo).values()),
        "max_abs_diff": diff,
        "sharding_kept": kept,
    }


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"a/b": x}`` -> ``{"a": {"b": x}}`` (Muon routes by path names)."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def _worker_muon_case(name: str, shapes: dict, layout: str) -> dict[str, Any]:
    """The whole jitted ``fo.muon(...).update`` on all visible devices (worker side).

    Parameters and gradients are replicated or FSDP-sharded (first matrix axis over all
    devices); Newton-Schulz is split over the mesh by ``ns_split_axes="auto"``.
    """
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import filtered_optax as fo

    n_dev = jax.device_count()
    mesh = jax.make_mesh((n_dev,), ("fsdp" if layout == "fsdp" else "data",))
    sharding = NamedSharding(mesh, P("fsdp", None) if layout == "fsdp" else P())
    rng = np.random.default_rng(0)
    params, grads = (
        _nested({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()})
        for _ in range(2)
    )
    tx = fo.muon(1e-3)
    ref = jax.jit(tx.update)(grads, tx.init(params), params)[0]
    p, g = jax.device_put((params, grads), sharding)
    state = jax.jit(tx.init, out_shardings=fo.state_shardings(tx, p))(p)
    compiled = jax.jit(tx.update).lower(g, state, p).compile()
    out = compiled(g, state, p)[0]
    diff = max(
        float(np.max(np.abs(np.asarray(o) - np.asarray(r))))
        for o, r in zip(jax.tree.leaves(out), jax.tree.leaves(ref), strict=True)
    )
    kept = all(o.sharding.is_equivalent_to(sharding, 2) for o in jax.tree.leaves(out))
    hlo = compiled.as_text()
    return {
        "case": name,
        "layout": layout,
        "via": "fo.muon update",
        "devices": n_dev,
        "flops_per_device": compiled_flops(compiled),
        "collective_bytes": sum(collective_bytes(hlo).values()),
        "max_abs_diff": diff,
        "sharding_kept": kept,
    }


def _cases(quick: bool) -> dict[str, dict[str, tuple[int, int]]]:
    size = 256 if quick else 1024  # quick: the same 8 matrices at 1/64 of the cost
    return {f"8 x {size}²": square_shapes(8, size), "lm d=128": lm_shapes()}


def _run_worker(n_dev: int, quick: bool) -> list[dict[str, Any]]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n_dev}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "benchmarks.ns_scaling", "--worker"] + ["--quick"] * quick
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=WORKER_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ns_scaling worker with {n_dev} devices failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def measure(quick: bool = True, device_counts: tuple[int, ...] = DEVICE_COUNTS) -> list[dict]:
    """One row per (case, layout, N): FLOPs per device and their ratio to N = 1, collective
    bytes per device, the largest difference to one device, and whether the result kept the
    parameters' sharding."""
    rows = [r for n in device_counts for r in _run_worker(n, quick)]
    base = {
        (r["case"], r["layout"], r["via"]): r["flops_per_device"] for r in rows if r["devices"] == 1
    }
    for r in rows:
        one = base.get((r["case"], r["layout"], r["via"]))
        r["flops_ratio"] = r["flops_per_device"] / one if one else float("nan")
    return rows


def to_markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table, with the N = 8 target verdict for eight equal matrices."""
    lines = [
        "| case | layout | measured | N | GFLOP / device | ratio to N=1 | 1/N "
        "| collective MiB / device | max abs diff | sharding kept |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["case"], r["layout"], r["via"], r["devices"])):
        lines.append(
            f"| {r['case']} | {r['layout']} | {r['via']} | {r['devices']}"
            f" | {r['flops_per_device'] / 1e9:.3f}"
            f" | {r['flops_ratio']:.3f} | {1 / r['devices']:.3f}"
            f" | {r['collective_bytes'] / 2**20:.2f} | {r['max_abs_diff']:.1e}"
            f" | {'yes' if r['sharding_kept'] else 'no'} |"
        )
    at8 = [r for r in rows if r["devices"] == 8 and r["case"].startswith("8 x")]
    if at8:
        ok = all(r["flops_ratio"] <= MAX_FLOPS_RATIO_AT_8 for r in at8)
        ok_diff = all(r["max_abs_diff"] <= MAX_DIFF for r in rows)
        lines.append("")
        lines.append(
            f"Target FLOPs ratio <= {MAX_FLOPS_RATIO_AT_8} at N = 8 (8 equal "
            f"matrices): {'met' if ok else 'NOT met'}; differences <= {MAX_DIFF:g}: "
            f"{'met' if ok_diff else 'NOT met'}."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 x 256² instead of 8 x 1024²")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        for name, shapes in _cases(args.quick).items():
            for layout in LAYOUTS:
                print(json.dumps(_worker_case(name, shapes, layout)), flush=True)
                print(json.dumps(_worker_muon_case(name, shapes, layout)), flush=True)
        return
    rows = measure(args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
