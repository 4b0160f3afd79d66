"""Network benchmark tasks: data + model + loss + metric, as pure functions.

A task never closes over its dataset: arrays travel as an explicit ``arrays`` argument so the
jitted training loop receives them as buffers instead of baking them into the compiled program.
Parameters are plain nested dicts (``nnx.State.to_pure_dict()``) so any optax transformation and
path-based routing (Muon) sees ordinary ``DictKey`` paths such as ``blocks/0/qkv/kernel``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import filtered_optax as fo
from benchmarks.core import data as data_lib
from benchmarks.core.models import CNN1D, MLP, CharLM, count_params, nnx_functional

Params = Any
Batch = dict[str, jax.Array]
Arrays = dict[str, jax.Array]


@dataclass(frozen=True)
class NetTask:
    """A network benchmark task (see module docstring).

    ``metric`` is the validation metric used for LR tuning and steps-to-target; ``target`` is
    fixed in code before any run (reached when ``metric`` ≥ target if ``higher_better`` else ≤).
    """

    name: str
    data_id: str
    config: dict[str, Any]
    arrays: Arrays
    init: Callable[[jax.Array], Params]
    loss: Callable[[Params, Batch], jax.Array]
    sample: Callable[[Arrays, jax.Array], Batch]
    evaluate: Callable[[Params, Arrays, str], tuple[jax.Array, jax.Array]]
    metric: str
    higher_better: bool
    target: float
    steps: int
    eval_every: int
    n_params: int = 0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    routing: Any = None  # fo.trace_routing of the loss: which parameters Muon takes


def traced_routing(task: NetTask) -> fo.TracedRouting:
    """Muon's routing read off the task's loss (abstract trace: shapes only, no FLOPs).

    Embeddings (gathered), position tables (added), the head (the last projection before the
    loss) and vectors go to AdamW; every other contracted weight to Muon with the axes the model
    contracts it over. Computed once per task, outside the training step.
    """
    params = jax.eval_shape(task.init, jax.random.key(0))
    batch = jax.eval_shape(task.sample, task.arrays, jax.random.key(0))
    return fo.trace_routing(task.loss, params, batch)


def with_traced_routing(task: NetTask) -> NetTask:
    """``task`` with :func:`traced_routing` attached (what the Muon specs then use)."""
    return dataclasses.replace(task, routing=traced_routing(task))


# --------------------------------------------------------------------------- language model


def _windows(tokens: np.ndarray, n: int, length: int) -> np.ndarray:
    """``n`` evenly spaced windows of ``length`` tokens (fewer if the split is short)."""
    n = max(1, min(n, (len(tokens) - 1) // length))
    starts = np.linspace(0, len(tokens) - length - 1, n).astype(np.int64)
    return np.stack([tokens[s : s + length] for s in starts])


def make_lm_task(
    text_path: str | None,
    *,
    d: int = 128,
    layers: int = 2,
    heads: int = 4,
    context: int = 128,
    batch_size: int = 16,
    steps: int = 400,
    eval_every: int = 50,
    n_val: int = 64,
    n_test: int = 128,
    target: float = 2.2,
) -> NetTask:
    """Character-level transformer LM; metric = validation cross-entropy (nats/char)."""
    text = data_lib.load_text(text_path)
    vocab = len(text.vocab)
    init, apply = nnx_functional(lambda r: CharLM(vocab, d, layers, heads, context, r))
    arrays = {
        "train": jnp.asarray(text.train),
        "val": jnp.asarray(_windows(text.val, n_val, context + 1)),
        "test": jnp.asarray(_windows(text.test, n_test, context + 1)),
    }
    arrays["probe"] = arrays["val"][:8]  # small fixed batch evaluated every step near spikes

    def loss(params: Params, batch: Batch) -> jax.Array:
        logits = apply(params, batch["x"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
        return ce.mean()

    def sample(arr: Arrays, key: jax.Array) -> Batch:
        starts = jax.random.randint(key, (batch_size,), 0, arr["train"].shape[0] - context - 1)
        win = jax.vmap(lambda s: jax.lax.dynamic_slice(arr["train"], (s,), (context + 1,)))(starts)
        return {"x": win[:, :-1], "y": win[:, 1:]}

    def evaluate(params: Params, arr: Arrays, split: str) -> tuple[jax.Array, jax.Array]:
        win = arr[split]
        ce = optax.softmax_cross_entropy_with_integer_labels(apply(params, win[:, :-1]), win[:, 1:])
        value = ce.mean()
        return value, value

    config = dict(
        d=d,
        layers=layers,
        heads=heads,
        context=context,
        batch_size=batch_size,
        vocab=vocab,
        n_val_windows=int(arrays["val"].shape[0]),
        n_test_windows=int(arrays["test"].shape[0]),
    )
    return NetTask(
        name="lm",
        data_id=text.data_id,
        config=config,
        arrays=arrays,
        init=init,
        loss=loss,
        sample=sample,
        evaluate=evaluate,
        metric="val_loss",
        higher_better=False,
        target=target,
        steps=steps,
        eval_every=eval_every,
        n_params=count_params(init),
    )


# --------------------------------------------------------------------------- classifiers


def _classifier_task(
    name: str,
    ds: data_lib.ClassData,
    make: Callable[[nnx.Rngs], nnx.Module],
    *,
    batch_size: int,
    steps: int,
    eval_every: int,
    target: float,
    n_val: int,
    config: dict[str, Any],
) -> NetTask:
    """Shared construction for softmax classifiers; metric = validation accuracy."""
    init, apply = nnx_functional(make)
    arrays = {
        "x_train": jnp.asarray(ds.x_train),
        "y_train": jnp.asarray(ds.y_train),
        "x_val": jnp.asarray(ds.x_val[:n_val]),
        "y_val": jnp.asarray(ds.y_val[:n_val]),
        "x_test": jnp.asarray(ds.x_test),
        "y_test": jnp.asarray(ds.y_test),
    }
    # small fixed batch evaluated every step in spike runs
    arrays["x_probe"], arrays["y_probe"] = arrays["x_val"][:256], arrays["y_val"][:256]

    def loss(params: Params, batch: Batch) -> jax.Array:
        logits = apply(params, batch["x"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
        return ce.mean()

    def sample(arr: Arrays, key: jax.Array) -> Batch:
        idx = jax.random.randint(key, (batch_size,), 0, arr["x_train"].shape[0])
        return {"x": arr["x_train"][idx], "y": arr["y_train"][idx]}

    def evaluate(params: Params, arr: Arrays, split: str) -> tuple[jax.Array, jax.Array]:
        x, y = arr[f"x_{split}"], arr[f"y_{split}"]
        logits = apply(params, x)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce, (jnp.argmax(logits, -1) == y).mean()

    config = dict(
        config,
        batch_size=batch_size,
        n_train=int(ds.x_train.shape[0]),
        n_val=int(arrays["x_val"].shape[0]),
        n_test=int(ds.x_test.shape[0]),
    )
    return NetTask(
        name=name,
        data_id=ds.data_id,
        config=config,
        arrays=arrays,
        init=init,
        loss=loss,
        sample=sample,
        evaluate=evaluate,
        metric="val_acc",
        higher_better=True,
        target=target,
        steps=steps,
        eval_every=eval_every,
        n_params=count_params(init),
    )


def make_mnist1d_mlp(
    path: str | None = None,
    *,
    hidden: tuple[int, ...] = (256, 256),
    batch_size: int = 128,
    steps: int = 1000,
    eval_every: int = 50,
    target: float = 0.6,
) -> NetTask:
    """MLP on MNIST-1D (40 inputs, 10 classes)."""
    ds = data_lib.load_mnist1d(path)
    return _classifier_task(
        "mnist1d_mlp",
        ds,
        lambda r: MLP(40, hidden, 10, r),
        batch_size=batch_size,
        steps=steps,
        eval_every=eval_every,
        target=target,
        n_val=10**9,
        config={"hidden": list(hidden)},
    )


def make_mnist1d_cnn(
    path: str | None = None,
    *,
    channels: int = 32,
    hidden: int = 128,
    batch_size: int = 128,
    steps: int = 1000,
    eval_every: int = 50,
    target: float = 0.7,
) -> NetTask:
    """Small 1-D CNN on MNIST-1D."""
    ds = data_lib.load_mnist1d(path)
    return _classifier_task(
        "mnist1d_cnn",
        ds,
        lambda r: CNN1D(40, channels, hidden, 10, r),
        batch_size=batch_size,
        steps=steps,
        eval_every=eval_every,
        target=target,
        n_val=10**9,
        config={"channels": channels, "hidden": hidden},
    )


def make_fashion_mlp(
    directory: str | None = None,
    *,
    hidden: tuple[int, ...] = (256, 256),
    batch_size: int = 128,
    steps: int = 600,
    eval_every: int = 50,
    target: float = 0.82,
    n_val: int = 2000,
) -> NetTask:
    """MLP on Fashion-MNIST (784 inputs, 10 classes)."""
    ds = data_lib.load_fashion(directory)
    return _classifier_task(
        "fashion_mlp",
        ds,
        lambda r: MLP(784, hidden, 10, r),
        batch_size=batch_size,
        steps=steps,
        eval_every=eval_every,
        target=target,
        n_val=n_val,
        config={"hidden": list(hidden)},
    )


TASK_BUILDERS: dict[str, Callable[..., NetTask]] = {
    "lm": make_lm_task,
    "mnist1d_mlp": make_mnist1d_mlp,
    "mnist1d_cnn": make_mnist1d_cnn,
    "fashion_mlp": make_fashion_mlp,
}


def ngram_loss(train: np.ndarray, test: np.ndarray, vocab: int, n: int, k: float = 0.1) -> float:
    """Cross-entropy (nats/char) on ``test`` of an order-``n`` character model fit on ``train``.

    Lidstone (add-``k``) smoothing: ``p(c | ctx) = (N(ctx, c) + k) / (N(ctx) + k·V)`` — the
    reference loss a network must beat (Jurafsky & Martin, "Speech and Language Processing",
    ch. 3). ``n = 2`` is the bigram model, ``n = 3`` the trigram model.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")

    def index(tokens: np.ndarray) -> np.ndarray:
        idx = np.zeros(len(tokens) - n + 1, np.int64)
        for j in range(n):
            idx = idx * vocab + tokens[j : len(tokens) - n + 1 + j].astype(np.int64)
        return idx

    counts = np.bincount(index(train), minlength=vocab**n).reshape(-1, vocab) + k
    logp = np.log(counts) - np.log(counts.sum(1, keepdims=True))
    return float(-logp.reshape(-1)[index(test)].mean())
