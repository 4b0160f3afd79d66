"""Executes every notebook in notebooks/ at a small size and checks what it prints.

The notebooks read ``NOTEBOOK_SMALL`` (``1`` here); the committed copies carry the outputs of
a full run (``NOTEBOOK_SMALL=0``), which is checked too. Needs the ``notebooks`` extra
(nbclient, nbformat, ipykernel, matplotlib); skipped without it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

# What each notebook must print when it runs (whatever its size).
EXPECTED = {
    "quickstart.ipynb": [
        r"alias == stages, bitwise: True",
        r"filter off == optax\.adam, bitwise: True",
        r"fo\.filtered_adam\s+test accuracy 0\.\d+",
        r"fc2/kernel\s+\(128, 128\)\s+muon",
        r"head/kernel\s+\(128, 10\)\s+adam",
    ],
    "ablation.ipynb": [
        r"default \(kalman γ=10\)\s+test acc 0\.\d+",
        r"filter: identity = Adam\s+test acc 0\.\d+",
        r"Δ acc vs default",
    ],
    "muon_transformer.ipynb": [
        r"attn/out/kernel\s+\(\d+, \d+, \d+\)\s+muon",
        r"attn/query/kernel\s+\(\d+, \d+, \d+\)\s+muon",
        r"lm_head/kernel\s+\(\d+, \d+\)\s+adam",
        r"embed/embedding\s+\(\d+, \d+\)\s+adam",
        r"fo\.muon \(Muon \+ AdamW\)\s+val loss \d\.\d+",
    ],
}


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


def _images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))


def test_every_notebook_is_covered():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_at_small_size(name, monkeypatch):
    monkeypatch.setenv("NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in nb.cells:  # run from a clean slate
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        nb,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError on any failing cell
    text = _text(nb)
    assert "SMALL=True" in text
    for pattern in EXPECTED[name]:
        assert re.search(pattern, text), (name, pattern)
    assert _images(nb) >= 1  # the plots were drawn


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_committed_notebook_has_full_run_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "not executed"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "out of order"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
    text = _text(nb)
    assert "SMALL=False" in text, "committed outputs must come from a full run"
    for pattern in EXPECTED[name]:
        assert re.search(pattern, text), (name, pattern)
    assert _images(nb) >= 1
