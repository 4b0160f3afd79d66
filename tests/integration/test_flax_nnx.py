"""Flax NNX: ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` with filtered_adam and fo.muon.

Checks numbers, not only that training runs: the nnx.Optimizer trajectory equals the plain
functional optax loop, Muon's routing follows NNX paths, and extra keyword arguments of
``optimizer.update(model, grads, **kwargs)`` reach a custom stage inside ``fo.with_moments``
and a stage chained after the optimizer, under ``nnx.jit``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import filtered_optax as fo
from tests.integration.test_nnx import MLP

muon = fo.muon
muon_labels = fo.muon_labels
WithMomentsState = fo.WithMomentsState


class TinyTransformer(nnx.Module):
    """Embedding, one pre-norm attention + MLP block, final norm, vocabulary head."""

    def __init__(self, vocab: int = 17, d: int = 16, heads: int = 2, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=d, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.fc1 = nnx.Linear(d, 2 * d, rngs=rngs)
        self.fc2 = nnx.Linear(2 * d, d, rngs=rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        x = x + self.attn(self.ln1(x), mask=nnx.make_causal_mask(tokens))
        x = x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))
        return self.head(x)


def _classification_data():
    x = jax.random.normal(jax.random.PRNGKey(0), (128, 8))
    w = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
    return x, jnp.argmax(jnp.tanh(x @ w) + 0.1 * x[:, :3], axis=-1)


def _token_data(vocab: int = 17, batch: int = 4, seq: int = 16):
    # A learnable sequence: next token = (token + 3) mod vocab, from random starts.
    start = jax.random.randint(jax.random.PRNGKey(2), (batch, 1), 0, vocab)
    tokens = (start + 3 * jnp.arange(seq + 1)) % vocab
    return tokens[:, :-1], tokens[:, 1:]


def _xent(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@nnx.jit
def _train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: _xent(m(x), y))(model)
    optimizer.update(model, grads)
    return loss


def _nnx_losses(model, tx_or_optimizer, x, y, steps):
    optimizer = tx_or_optimizer
    if not isinstance(optimizer, nnx.Optimizer):
        optimizer = nnx.Optimizer(model, tx_or_optimizer, wrt=nnx.Param)
    return [float(_train_step(model, optimizer, x, y)) for _ in range(steps)], optimizer


def _functional_losses(model, tx, x, y, steps):
    """The same training as plain optax on pure pytrees under jax.jit: the oracle."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        def loss_fn(p):
            m = nnx.merge(graphdef, p, rest, copy=True)
            return _xent(m(x), y)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(steps):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return losses, params


@pytest.mark.parametrize(
    "name, make",
    [
        ("filtered_adam", lambda: fo.filtered_adam(1e-2, eta=0.9, warmup=3, stats=True)),
        ("filtered_adamw", lambda: fo.filtered_adamw(1e-2, weight_decay=0.1, warmup=3)),
    ],
)
def test_nnx_optimizer_equals_functional_optax_loop(name, make):
    x, y = _classification_data()
    steps = 40
    model = MLP(8, 16, 3, rngs=nnx.Rngs(0))
    losses, _ = _nnx_losses(model, make(), x, y, steps)
    ref_losses, ref_params = _functional_losses(
        MLP(8, 16, 3, rngs=nnx.Rngs(0)), make(), x, y, steps
    )
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, ref_params
    )
    assert losses[-1] < 0.5 * losses[0], (name, losses[0], losses[-1])


def test_nnx_muon_routes_from_nnx_paths_and_trains():
    model = TinyTransformer(rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    labels = nnx.to_pure_dict(muon_labels(params))
    # Hidden matrices (attention q/k/v/out and the MLP) go to Muon, the rest to AdamW. The
    # attention's own output projection "out" is hidden; only "head" is the head.
    assert labels["attn"]["query"]["kernel"] == "muon"
    assert labels["attn"]["out"]["kernel"] == "muon"
    assert labels["fc1"]["kernel"] == labels["fc2"]["kernel"] == "muon"
    assert labels["embed"]["embedding"] == "adam"
    assert labels["head"]["kernel"] == "adam"
    assert labels["fc1"]["bias"] == labels["ln1"]["scale"] == "adam"

    tokens, targets = _token_data()
    lr = 1e-2
    tx = muon(lr, weight_decay=0.0)
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    losses, optimizer = _nnx_losses(model, tx, tokens, targets, 1)
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    delta = jax.tree.map(lambda a, b: np.asarray(a) - b, after, before)

    # AdamW side, first step: |update| = lr * |g| / (|g| + eps) = lr wherever g != 0.
    head = np.abs(delta["head"]["kernel"])
    np.testing.assert_allclose(head[head > 0], lr, rtol=1e-3)
    # Muon side: update = -lr * 0.2 * sqrt(max(A, B)) * NS(U); NS(U) has singular values
    # near 1 (Polar Express), so delta / (lr * scale) is close to orthogonal.
    # fc1's input is LayerNorm output (zero mean over features), so its gradient has rank
    # 15 of 16: one singular value is ~0, the other 15 are orthogonalized.
    fc1 = delta["fc1"]["kernel"]  # (16, 32)
    sv = np.linalg.svd(fc1 / (lr * 0.2 * np.sqrt(32)), compute_uv=False)
    assert sv.max() < 1.25 and np.sum(sv > 0.6) == 15 and sv.min() < 1e-3, sv
    q = delta["attn"]["query"]["kernel"].reshape(16, -1)  # (in, heads*head_dim) = one matrix
    sv = np.linalg.svd(q / (lr * 0.2 * np.sqrt(16)), compute_uv=False)
    assert sv.max() < 1.25 and np.sum(sv > 0.5) >= 8, sv

    # Muon keeps its momentum on exactly the routed leaves, inside the partition state.
    muon_branch = optimizer.opt_state.inner_states["muon"]
    muon_states = [
        s
        for s in jax.tree.leaves(muon_branch, is_leaf=lambda s: isinstance(s, WithMomentsState))
        if isinstance(s, WithMomentsState)
    ]
    assert len(muon_states) == 1
    mu = (
        nnx.to_pure_dict(nnx.State(muon_states[0].mu))
        if isinstance(muon_states[0].mu, nnx.State)
        else muon_states[0].mu
    )
    assert np.asarray(mu["fc1"]["kernel"]).shape == (16, 32)
    assert isinstance(mu["head"]["kernel"], optax.MaskedNode)

    # And it learns the sequence rule.
    more, _ = _nnx_losses(model, optimizer, tokens, targets, 60)
    assert more[-1] < 0.3 * losses[0], (losses[0], more[-1])


# ---------------------------------------------------------------------------------------
# Extra arguments: optimizer.update(model, grads, **kwargs) -> tx.update(..., **kwargs)


class RecorderState(NamedTuple):
    last_scale: jax.Array
    calls: jax.Array


def scaling_filter() -> optax.GradientTransformationExtraArgs:
    """A custom filter stage: multiplies g by the extra arg ``grad_scale`` and records it.

    Reads ``prev_moments`` like every filter; a missing ``grad_scale`` means 1.
    """

    def init_fn(params):
        del params
        return RecorderState(jnp.zeros([], jnp.float32), jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, *, prev_moments, grad_scale=1.0, **extra):
        del params, extra, prev_moments
        scale = jnp.asarray(grad_scale, jnp.float32)
        filtered = jax.tree.map(lambda g: g * scale.astype(g.dtype), updates)
        return filtered, RecorderState(scale, state.calls + 1)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def loss_recorder() -> optax.GradientTransformationExtraArgs:
    """A stage chained after an optimizer: records the extra arg ``loss``, passes updates."""

    def init_fn(params):
        del params
        return jnp.full([], jnp.nan, jnp.float32)

    def update_fn(updates, state, params=None, *, loss=jnp.nan, **extra):
        del params, extra, state
        return updates, jnp.asarray(loss, jnp.float32)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def test_extra_args_reach_a_stage_inside_with_moments():
    model = MLP(8, 16, 3, rngs=nnx.Rngs(0))
    b1 = 0.9
    tx = optax.chain(
        fo.with_moments(
            filter=scaling_filter(), moments=fo.ema(b1, 0.999), scale=fo.normalize(1e-8)
        ),
        optax.scale_by_learning_rate(1e-3),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x, y = _classification_data()

    @nnx.jit
    def train_step(model, optimizer, grad_scale):
        grads = nnx.grad(lambda m: _xent(m(x), y))(model)
        optimizer.update(model, grads, grad_scale=grad_scale)
        return grads

    grads = train_step(model, optimizer, jnp.float32(3.0))
    inner = optimizer.opt_state[0]
    assert isinstance(inner, fo.WithMomentsState)
    np.testing.assert_allclose(float(inner.filter_state.last_scale[...]), 3.0)
    assert int(inner.filter_state.calls[...]) == 1
    # The first moment saw the scaled gradient: mu_1 = (1 - b1) * 3 * g.
    g = nnx.to_pure_dict(nnx.state(grads, nnx.Param))
    mu = nnx.to_pure_dict(nnx.State(inner.mu)) if isinstance(inner.mu, nnx.State) else inner.mu
    np.testing.assert_allclose(
        np.asarray(mu["hidden"]["kernel"]),
        (1 - b1) * 3.0 * np.asarray(g["hidden"]["kernel"]),
        rtol=1e-6,
        atol=1e-9,
    )
    # A second call with another value: no retrace needed, value recorded.
    train_step(model, optimizer, jnp.float32(0.5))
    inner = optimizer.opt_state[0]
    np.testing.assert_allclose(float(inner.filter_state.last_scale[...]), 0.5)
    assert int(inner.filter_state.calls[...]) == 2


@pytest.mark.parametrize(
    "make",
    [lambda: fo.filtered_adam(1e-3, stats=True), lambda: muon(1e-3)],
    ids=["filtered_adam", "muon"],
)
def test_extra_args_reach_a_chained_stage(make):
    model = MLP(8, 16, 3, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.chain(make(), loss_recorder()), wrt=nnx.Param)
    x, y = _classification_data()

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: _xent(m(x), y))(model)
        # The optimizer itself ignores `loss`; the recorder chained after it reads it.
        optimizer.update(model, grads, loss=loss)
        return loss

    for _ in range(3):
        loss = train_step(model, optimizer)
        np.testing.assert_allclose(float(optimizer.opt_state[1][...]), float(loss), rtol=1e-6)
    assert int(optimizer.step[...]) == 3
