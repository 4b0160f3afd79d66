"""benchmarks/ns_scaling.py: the HLO readers on known text, and a small measurement."""

from __future__ import annotations

import math

from benchmarks import ns_scaling

HLO = """
ENTRY %main {
  %p0 = f32[8,128,512]{2,1,0} parameter(0)
  %all-gather = f32[32,128,512]{2,1,0} all-gather(%p0), channel_id=1, dimensions={0}
  %a2a = (f32[1,32,512]{2,1,0}, /*index=1*/f32[1,32,512]{2,1,0}) all-to-all(%x.1, %x.2)
  %x.1 = f32[1,32,512]{2,1,0} slice(%p0)
  %x.2 = f32[1,32,512]{2,1,0} slice(%p0)
  %ar-start = bf16[16]{0} all-reduce-start(bf16[16]{0} %y), to_apply=%add
  %ar-done = bf16[16]{0} all-reduce-done(%ar-start)
  %d = f32[256,256]{1,0} dot(%u, %v), lhs_contracting_dims={1}
  %e = f32[8,512,512]{2,1,0} dot(%u, %v), lhs_batch_dims={0}
}
"""


def test_collective_bytes_reads_operands():
    got = ns_scaling.collective_bytes(HLO)
    assert got["all-gather"] == 8 * 128 * 512 * 4  # the operand, not the gathered result
    assert got["all-to-all"] == 2 * 32 * 512 * 4
    assert got["all-reduce"] == 16 * 2  # counted once for the start/done pair
    assert got["collective-permute"] == got["reduce-scatter"] == 0


def test_dot_shapes_and_groups():
    assert ns_scaling.dot_shapes(HLO) == [(256, 256), (8, 512, 512)]
    shapes = ns_scaling.lm_shapes(d=128, layers=2)
    assert len(shapes) == 12
    # q, k, v, o are one 128² stack; fc1 and the transposed fc2 share a (128, 512) stack.
    assert ns_scaling.group_stacks(shapes) == {(128, 128): 8, (128, 512): 4}


def test_measure_quick_meets_the_targets():
    rows = ns_scaling.measure(quick=True, device_counts=(1, 8))
    assert {(r["case"], r["layout"], r["devices"]) for r in rows} == {
        (c, lay, n) for c in ("8 x 256²", "lm d=128") for lay in ns_scaling.LAYOUTS for n in (1, 8)
    }
    # Both the bare stacks and the whole fo.muon update are measured.
    assert {r["via"] for r in rows} == {"stack", "fo.muon update"}
    assert len(rows) == 2 * 2 * 2 * 2  # cases x layouts x N x measured
    for r in rows:
        assert r["max_abs_diff"] <= ns_scaling.MAX_DIFF, r
        assert r["sharding_kept"], r
        if r["devices"] == 1:
            assert r["flops_ratio"] == 1.0 and r["collective_bytes"] == 0, r
        elif r["case"].startswith("8 x"):
            assert r["flops_ratio"] <= ns_scaling.MAX_FLOPS_RATIO_AT_8, r
            assert r["collective_bytes"] > 0, r  # the results travel back to the params
    table = ns_scaling.to_markdown(rows)
    assert table.count("\n| ") == len(rows) and "NOT met" not in table  # one line a row
    assert not math.isnan(rows[0]["flops_ratio"])
