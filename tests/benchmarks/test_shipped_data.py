"""The repository is self-sufficient: its data ship inside it and are checked by hash."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmarks import data as data_lib

REPO = Path(__file__).resolve().parents[2]
# Built from pieces so that this file does not match its own pattern.
SIBLING = "sha" + "red"
SIBLING_PATH = re.compile(rf"\.\./{SIBLING}|[\"']{SIBLING}[\"']|{SIBLING}/data")


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:  # not a git checkout (e.g. an unpacked archive): walk the tree
        return [p for pat in patterns for p in REPO.rglob(pat) if ".venv" not in p.parts]
    return [REPO / line for line in out.stdout.splitlines()]


def test_no_code_or_notebook_reads_a_folder_beside_the_repository():
    files = _tracked("*.py", "*.ipynb")
    assert len(files) > 20
    hits = [
        f"{f.relative_to(REPO)}:{i}: {line.strip()}"
        for f in files
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if SIBLING_PATH.search(line)
    ]
    assert not hits, "paths outside the repository:\n" + "\n".join(hits)


def test_shipped_text_is_tinyshakespeare_with_its_hash():
    text = data_lib.read_tinyshakespeare()
    assert len(text) == 1_115_394 and len(set(text)) == 65
    assert text.startswith("First Citizen:")
    d = data_lib.load_text()
    assert d.data_id == "tinyshakespeare.txt-86c4e6aa9db7" == data_lib.shipped_data_id("lm")
    assert len(d.train) + len(d.val) + len(d.test) == len(text)


def test_shipped_mnist1d_has_the_frozen_shapes_and_hash():
    d = data_lib.load_mnist1d()
    assert d.data_id == "mnist1d-1d09005a748f" == data_lib.shipped_data_id("mnist1d_cnn")
    assert d.x_train.shape == (3500, 40) and d.x_val.shape == (500, 40)
    assert d.x_test.shape == (1000, 40)
    assert set(np.unique(d.y_test)) == set(range(10))


def test_a_changed_shipped_file_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "mnist1d_5000.npz"
    raw = bytearray(data_lib.MNIST1D.read_bytes())
    raw[-100] ^= 0xFF
    bad.write_bytes(bytes(raw))
    monkeypatch.setattr(data_lib, "MNIST1D", bad)
    with pytest.raises(ValueError, match="sha256"):
        data_lib.read_mnist1d()


def test_other_data_is_named_in_the_report():
    from benchmarks import report

    assert report.data_note("lm", data_lib.shipped_data_id("lm")) == ""
    assert "not the shipped data" in report.data_note("lm", "my_corpus.txt-0123456789ab")
    assert report.data_note("fashion_mlp", "fashion-mnist-anything") == ""


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data_lib, "FASHION_DIRS", ())
    with pytest.raises(data_lib.DataUnavailable, match="dataset-fashion-mnist.*--fashion DIR"):
        data_lib.load_fashion(tmp_path)
