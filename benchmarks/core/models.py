"""Small Flax NNX models used by the benchmark tasks.

Layer names are chosen so that path-based routing (e.g. Muon's "hidden matrix" presets) can tell
the input embedding (``embed``), the learned positions (``pos``, a raw ``nnx.Param`` as many small
GPTs write it: traced routing sends it to AdamW), the output head (``head``) and hidden matrices
apart. The attention output projection is called ``proj`` (never ``out``) to avoid being
mistaken for a head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Params = Any


class Block(nnx.Module):
    """Pre-LayerNorm transformer block: causal self-attention and a GELU MLP."""

    def __init__(self, d: int, heads: int, rngs: nnx.Rngs) -> None:
        self.heads = heads
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.qkv = nnx.Linear(d, 3 * d, rngs=rngs)
        self.proj = nnx.Linear(d, d, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.fc1 = nnx.Linear(d, 4 * d, rngs=rngs)
        self.fc2 = nnx.Linear(4 * d, d, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
        shape = (b, t, self.heads, d // self.heads)
        att = jax.nn.dot_product_attention(
            q.reshape(shape), k.reshape(shape), v.reshape(shape), is_causal=True
        )
        x = x + self.proj(att.reshape(b, t, d))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class CharLM(nnx.Module):
    """Character-level decoder-only transformer with learned positions."""

    def __init__(
        self, vocab: int, d: int, layers: int, heads: int, context: int, rngs: nnx.Rngs
    ) -> None:
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (context, d)))
        self.blocks = nnx.List([Block(d, heads, rngs) for _ in range(layers)])
        self.ln_f = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens) + self.pos[: tokens.shape[-1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class MLP(nnx.Module):
    """ReLU multilayer perceptron: ``fc1 … fcN`` hidden layers, then ``head``."""

    def __init__(self, d_in: int, hidden: tuple[int, ...], n_out: int, rngs: nnx.Rngs) -> None:
        dims = (d_in, *hidden)
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        )
        self.head = nnx.Linear(dims[-1], n_out, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.head(x)


class Conv1D(nnx.Module):
    """'SAME'-padded 1-D convolution written as patches @ kernel.

    The kernel has ``nnx.Conv``'s layout ``(window, in, out)`` (so Muon routing treats it like
    any conv kernel), but the forward pass is one matrix product over extracted patches: under
    ``vmap`` over seeds that stays a fast batched matmul, where XLA:CPU's batched convolution
    is an order of magnitude slower.
    """

    def __init__(self, c_in: int, c_out: int, window: int, stride: int, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(
            init(rngs.params(), (window * c_in, c_out)).reshape(window, c_in, c_out)
        )
        self.bias = nnx.Param(jnp.zeros((c_out,)))
        self.window, self.stride = window, stride

    def __call__(self, x: jax.Array) -> jax.Array:
        b, length, c = x.shape
        left = (self.window - 1) // 2
        xp = jnp.pad(x, ((0, 0), (left, self.window - 1 - left), (0, 0)))
        starts = range(0, length, self.stride)
        patches = jnp.stack([xp[:, s : s + self.window, :] for s in starts], axis=1)
        patches = patches.reshape(b, len(starts), self.window * c)
        return patches @ self.kernel.reshape(self.window * c, -1) + self.bias


class CNN1D(nnx.Module):
    """Small 1-D convolutional net: two convs (the second strided), one hidden dense, head."""

    def __init__(self, length: int, channels: int, hidden: int, n_out: int, rngs: nnx.Rngs):
        self.conv1 = Conv1D(1, channels, 5, 1, rngs)
        self.conv2 = Conv1D(channels, channels, 5, 2, rngs)
        flat = channels * ((length + 1) // 2)
        self.fc = nnx.Linear(flat, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, n_out, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.conv1(x[..., None]))
        x = jax.nn.relu(self.conv2(x))
        x = jax.nn.relu(self.fc(x.reshape(x.shape[0], -1)))
        return self.head(x)


def nnx_functional(make: Callable[[nnx.Rngs], nnx.Module]):
    """Turn an NNX module constructor into ``(init(key) -> dict, apply(params, *x))``."""
    abstract = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract, nnx.Param)

    def init(key: jax.Array) -> Params:
        return nnx.to_pure_dict(nnx.state(make(nnx.Rngs(key)), nnx.Param))

    def apply(params: Params, *args: Any) -> jax.Array:
        state = jax.tree.map(lambda x: x, abstract_state)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state)(*args)

    return init, apply


def count_params(init: Callable[[jax.Array], Params]) -> int:
    """Number of scalar parameters produced by ``init`` (no FLOPs spent)."""
    shapes = jax.eval_shape(init, jax.random.key(0))
    return int(sum(np.prod(s.shape) for s in jax.tree.leaves(shapes)))
