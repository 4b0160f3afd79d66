"""filtered_adam drives a real Flax NNX model through nnx.Optimizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import filtered_optax as fo


class MLP(nnx.Module):
    def __init__(self, din: int, hidden: int, dout: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(din, hidden, rngs=rngs)
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, dout, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.gelu(self.norm(self.hidden(x))))


def _data():
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (256, 8))
    w = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
    labels = jnp.argmax(jnp.tanh(x @ w) + 0.1 * x[:, :3], axis=-1)
    return x, labels


def test_nnx_optimizer_trains_mlp_with_filtered_adam():
    model = MLP(8, 32, 3, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, fo.filtered_adam(3e-3, eta=0.9, stats=True), wrt=nnx.Param)
    x, labels = _data()

    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), labels).mean()

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer)) for _ in range(300)]
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    assert np.isfinite(losses).all()
    stats = fo.filter_stats(optimizer.opt_state)
    assert stats is not None and 0.0 <= float(stats["spike_fraction"]) <= 1.0
    assert 0.0 < float(stats["mean_gain"]) <= 1.0 + 1e-6
