"""A two-minute side-by-side: filtered_adam vs optax.adam on a Flax NNX MLP (MNIST-1D).

Usage: python -m benchmarks.demo [--data PATH] [--steps N] [--seeds K]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import filtered_optax as fo

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist1d_5000.npz"


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(40, 256, rngs=rngs)
        self.l2 = nnx.Linear(256, 256, rngs=rngs)
        self.head = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.l2(nnx.relu(self.l1(x)))))


def train(tx: optax.GradientTransformation, data, seed: int, steps: int, batch: int = 128):
    x, y, x_test, y_test = data
    model = MLP(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xb, yb):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(xb), yb).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(x), batch)
        loss = step(model, optimizer, x[idx], y[idx])
    accuracy = float(jnp.mean(jnp.argmax(model(x_test), -1) == y_test))
    return float(loss), accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    z = np.load(args.data)
    data = tuple(jnp.asarray(z[k]) for k in ("x", "y", "x_test", "y_test"))
    optimizers = {
        "optax.adam": optax.adam(3e-3),
        "fo.filtered_adam (defaults)": fo.filtered_adam(3e-3),
        "fo.filtered_adam (eta=0.9)": fo.filtered_adam(3e-3, eta=0.9),
    }
    print(f"MNIST-1D MLP, {args.steps} steps, lr 3e-3, {args.seeds} seeds, jax {jax.__version__}")
    print("| optimizer | final train loss | test accuracy | seconds |\n|---|---|---|---|")
    for name, tx in optimizers.items():
        start = time.perf_counter()
        runs = [train(tx, data, seed, args.steps) for seed in range(args.seeds)]
        losses, accs = zip(*runs)
        print(f"| {name} | {statistics.mean(losses):.4f} | {statistics.mean(accs):.3f} "
              f"± {statistics.stdev(accs) if len(accs) > 1 else 0:.3f} | "
              f"{time.perf_counter() - start:.1f} |")


if __name__ == "__main__":
    main()
