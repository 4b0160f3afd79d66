"""Offline data loaders for the benchmark tasks. Nothing here downloads anything.

Every loader returns plain NumPy arrays plus a short ``data_id`` string (name + content hash)
that is written into every result line, so results from different data never mix on resume.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_MNIST1D = SHARED_DATA / "mnist1d_5000.npz"
FASHION_DIRS = (
    Path("/usr/share/datasets/fashion-mnist"),
    Path("/usr/share/fashion-mnist"),
    Path("/usr/share/dataset-fashion-mnist"),
)


class DataUnavailable(RuntimeError):
    """Raised when a task's data cannot be found or built offline; the task is then skipped."""


@dataclass(frozen=True)
class TextData:
    """A character corpus split into train / validation / test token arrays."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    vocab: tuple[str, ...]
    data_id: str


@dataclass(frozen=True)
class ClassData:
    """A classification set split into train / validation / test arrays."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    data_id: str


def _sha(data: bytes, n: int = 12) -> str:
    """Short hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()[:n]


def split_text(text: str, vocab: tuple[str, ...] | None = None) -> tuple[np.ndarray, ...]:
    """Encode ``text`` with a sorted character vocabulary; split 90 / 5 / 5 %."""
    vocab = vocab or tuple(sorted(set(text)))
    lut = {c: i for i, c in enumerate(vocab)}
    ids = np.fromiter((lut[c] for c in text), dtype=np.int32, count=len(text))
    a, b = int(0.9 * len(ids)), int(0.95 * len(ids))
    return ids[:a], ids[a:b], ids[b:], vocab


def stdlib_corpus(max_chars: int = 1_200_000) -> tuple[str, str]:
    """Build a text corpus from the Python standard library's own ``.py`` files.

    Files are taken from the top level of the stdlib directory in sorted order (deterministic
    for a given Python build), non-ASCII characters are replaced by ``?``. Returns the text and
    an id hashing the Python version, the file list and the text.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise DataUnavailable(f"no .py files found under {root}")
    parts, names, total = [], [], 0
    for path in files:
        raw = path.read_text(encoding="utf-8", errors="replace")
        text = "".join(c if (32 <= ord(c) < 127 or c == "\n") else "?" for c in raw)
        parts.append(text)
        names.append(path.name)
        total += len(text)
        if total >= max_chars:
            break
    text = "".join(parts)[:max_chars]
    file_hash = _sha("\n".join(names).encode())
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return text, f"stdlib-py{version}-{len(names)}files-{file_hash}-{_sha(text.encode(), 8)}"


def load_text(path: str | os.PathLike | None) -> TextData:
    """Load a character corpus from ``path``, or build the standard-library corpus."""
    if path is None:
        text, data_id = stdlib_corpus()
    else:
        p = Path(path)
        if not p.is_file():
            raise DataUnavailable(f"text corpus {p} not found")
        raw = p.read_bytes()
        text = raw.decode("utf-8")
        data_id = f"{p.name}-{_sha(raw)}"
    train, val, test, vocab = split_text(text)
    return TextData(train, val, test, vocab, data_id)


def _make_mnist1d() -> dict[str, np.ndarray]:
    """Generate MNIST-1D offline with the ``mnist1d`` package (if installed)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset  # type: ignore
    except ImportError as e:
        raise DataUnavailable(
            "MNIST-1D file not found and the `mnist1d` package is not installed"
        ) from e
    d = make_dataset(get_dataset_args())
    return {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}


def load_mnist1d(path: str | os.PathLike | None = None, n_val: int = 500) -> ClassData:
    """Load frozen MNIST-1D (4000 train / 1000 test); the last ``n_val`` train rows are val."""
    p = Path(path) if path is not None else DEFAULT_MNIST1D
    if p.is_file():
        z = np.load(p)
        arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
        data_id = f"mnist1d-{_sha(p.read_bytes())}"
    elif path is not None:
        raise DataUnavailable(f"MNIST-1D file {p} not found")
    else:
        arrays = _make_mnist1d()
        data_id = "mnist1d-generated-" + _sha(arrays["x"].tobytes())
    x = arrays["x"].astype(np.float32)
    y = arrays["y"].astype(np.int32)
    return ClassData(
        x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:],
        arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int32), 10, data_id,
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a NumPy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    _, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if dtype_code != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files are supported")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_fashion_dir(extra: str | os.PathLike | None = None) -> Path:
    """Locate the Fashion-MNIST IDX files (Debian package ``dataset-fashion-mnist``)."""
    candidates = ([Path(extra)] if extra else []) + list(FASHION_DIRS)
    for d in candidates:
        if any(d.glob("train-images-idx3-ubyte*")):
            return d
    raise DataUnavailable(
        "Fashion-MNIST IDX files not found (install the Debian package `dataset-fashion-mnist`)"
    )


def load_fashion(directory: str | os.PathLike | None = None, n_val: int = 5000) -> ClassData:
    """Load Fashion-MNIST (60k train / 10k test), scaled to [0, 1] and flattened."""
    d = find_fashion_dir(directory)

    def one(stem: str) -> np.ndarray:
        return read_idx(sorted(d.glob(stem + "*"))[0])

    xtr, ytr = one("train-images-idx3-ubyte"), one("train-labels-idx1-ubyte")
    xte, yte = one("t10k-images-idx3-ubyte"), one("t10k-labels-idx1-ubyte")
    data_id = f"fashion-mnist-{_sha(xtr.tobytes()[:1_000_000] + yte.tobytes())}"

    def prep(x: np.ndarray) -> np.ndarray:
        return (x.reshape(len(x), -1).astype(np.float32) / 255.0 - 0.286) / 0.353

    return ClassData(
        prep(xtr[:-n_val]), ytr[:-n_val].astype(np.int32),
        prep(xtr[-n_val:]), ytr[-n_val:].astype(np.int32),
        prep(xte), yte.astype(np.int32), 10, data_id,
    )
