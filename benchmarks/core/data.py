"""Offline data loaders for the benchmark tasks. Nothing here downloads anything.

tinyshakespeare and MNIST-1D ship in ``benchmarks/data/`` (sources, licenses and hashes in
``benchmarks/data/SOURCES.md``) and are checked against their sha256 on every load.
Fashion-MNIST is optional: it is read from the Debian package ``dataset-fashion-mnist`` or a
directory given on the command line, and its task is skipped out loud when it is missing.

Every loader returns plain NumPy arrays plus a short ``data_id`` string (name + content hash)
that is written into every result line, so results from different data never mix on resume
and a report can say when a task ran on other data than the shipped default.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
TINYSHAKESPEARE = DATA_DIR / "tinyshakespeare.txt.xz"
MNIST1D = DATA_DIR / "mnist1d_5000.npz"
# sha256 of the uncompressed text / of the .npz file, as listed in benchmarks/data/SOURCES.md.
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
MNIST1D_SHA256 = "1d09005a748f9e244f467fe3ca912d5a177413743e631dd26caeaf00bf8ca08e"
FASHION_DIRS = (
    Path("/usr/share/datasets/fashion-mnist"),
    Path("/usr/share/fashion-mnist"),
    Path("/usr/share/dataset-fashion-mnist"),
)
FASHION_HINT = (
    "install the Debian package `dataset-fashion-mnist` "
    "(apt-get install dataset-fashion-mnist), or pass --fashion DIR"
)


class DataUnavailable(RuntimeError):
    """Raised when a task's data cannot be found offline; the task is then skipped."""


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


def _checked(raw: bytes, expected_sha256: str, what: Path) -> bytes:
    """``raw`` if its sha256 is ``expected_sha256``; a shipped file that changed is an error."""
    got = hashlib.sha256(raw).hexdigest()
    if got != expected_sha256:
        raise ValueError(
            f"{what}: sha256 {got} differs from the expected {expected_sha256} "
            "(see benchmarks/data/SOURCES.md); the shipped file is damaged or was replaced"
        )
    return raw


# The ids the shipped files produce; a record with another data_id ran on other data.
SHIPPED_DATA_IDS = {
    "lm": f"tinyshakespeare.txt-{TINYSHAKESPEARE_SHA256[:12]}",
    "mnist1d": f"mnist1d-{MNIST1D_SHA256[:12]}",
}


def shipped_data_id(task: str) -> str | None:
    """The data_id a task has on the shipped data (None for a task whose data is optional)."""
    if task == "lm":
        return SHIPPED_DATA_IDS["lm"]
    if task.startswith("mnist1d"):
        return SHIPPED_DATA_IDS["mnist1d"]
    return None


def split_text(text: str, vocab: tuple[str, ...] | None = None) -> tuple[np.ndarray, ...]:
    """Encode ``text`` with a sorted character vocabulary; split 90 / 5 / 5 %."""
    vocab = vocab or tuple(sorted(set(text)))
    lut = {c: i for i, c in enumerate(vocab)}
    ids = np.fromiter((lut[c] for c in text), dtype=np.int32, count=len(text))
    a, b = int(0.9 * len(ids)), int(0.95 * len(ids))
    return ids[:a], ids[a:b], ids[b:], vocab


def read_tinyshakespeare() -> str:
    """The shipped tinyshakespeare text, checked against its sha256."""
    raw = _checked(
        lzma.decompress(TINYSHAKESPEARE.read_bytes()), TINYSHAKESPEARE_SHA256, TINYSHAKESPEARE
    )
    return raw.decode("utf-8")


def load_text(path: str | os.PathLike | None = None) -> TextData:
    """Load a character corpus: the shipped tinyshakespeare, or the UTF-8 text at ``path``."""
    if path is None:
        text = read_tinyshakespeare()
        data_id = SHIPPED_DATA_IDS["lm"]
    else:
        p = Path(path)
        if not p.is_file():
            raise DataUnavailable(f"text corpus {p} not found")
        raw = p.read_bytes()
        text = raw.decode("utf-8")
        data_id = f"{p.name}-{_sha(raw)}"
    train, val, test, vocab = split_text(text)
    return TextData(train, val, test, vocab, data_id)


def read_mnist1d(path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Arrays ``x, y, x_test, y_test`` of frozen MNIST-1D (shipped file checked by sha256)."""
    p = Path(path) if path is not None else MNIST1D
    if not p.is_file():
        raise DataUnavailable(f"MNIST-1D file {p} not found")
    raw = p.read_bytes()
    if path is None:
        _checked(raw, MNIST1D_SHA256, p)
    with np.load(io.BytesIO(raw)) as z:
        arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
    arrays["data_id"] = np.asarray(f"mnist1d-{_sha(raw)}")
    return arrays


def load_mnist1d(path: str | os.PathLike | None = None, n_val: int = 500) -> ClassData:
    """Load frozen MNIST-1D (4000 train / 1000 test); the last ``n_val`` train rows are val."""
    arrays = read_mnist1d(path)
    x = arrays["x"].astype(np.float32)
    y = arrays["y"].astype(np.int32)
    return ClassData(
        x[:-n_val],
        y[:-n_val],
        x[-n_val:],
        y[-n_val:],
        arrays["x_test"].astype(np.float32),
        arrays["y_test"].astype(np.int32),
        10,
        str(arrays["data_id"]),
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
    raise DataUnavailable(f"Fashion-MNIST not found — {FASHION_HINT}")


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
        prep(xtr[:-n_val]),
        ytr[:-n_val].astype(np.int32),
        prep(xtr[-n_val:]),
        ytr[-n_val:].astype(np.int32),
        prep(xte),
        yte.astype(np.int32),
        10,
        data_id,
    )
