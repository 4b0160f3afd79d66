"""Muon: agreement with optax.contrib.muon and Keller's reference, RMS, routing, battery."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from benchmarks.data import read_tinyshakespeare
from filtered_optax import MatrixSpec, WithMomentsState, describe
from filtered_optax._muon import muon, scale_by_muon
from filtered_optax._orthogonal import newton_schulz
from filtered_optax._routing import muon_labels, muon_specs, routing_table
from tests._devices import run_on_devices


def _rand_tree(tree, rng, dtype=jnp.float32):
    return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), dtype), tree)


MATRICES = {
    "wide": jnp.zeros((16, 40)),
    "tall": jnp.zeros((48, 12)),
    "square": jnp.zeros((20, 20)),
    "wide2": jnp.zeros((16, 40)),  # same shape as "wide": batched together
}


def _run(tx, params, grads):
    state = tx.init(params)
    step = jax.jit(tx.update)
    for g in grads:
        u, state = step(g, state, params)
        params = optax.apply_updates(params, u)
    return params, state


# --------------------------------------------------------------------------------------------
# Agreement with optax.contrib.muon (bias_correction=True) and Keller's reference (False)


@pytest.mark.parametrize("nesterov", [True, False])
def test_equals_optax_contrib_muon_with_bias_correction(nesterov):
    rng = np.random.default_rng(0)
    params = _rand_tree(MATRICES, rng)
    grads = [_rand_tree(MATRICES, rng) for _ in range(20)]
    ref = optax.contrib.muon(0.02, beta=0.9, eps=1e-7, nesterov=nesterov)
    ours = muon(
        0.02,
        beta=0.9,
        eps=1e-7,
        weight_decay=0.0,
        nesterov=nesterov,
        bias_correction=True,
        scale="keller",
        coefficients="keller",
    )
    p_ref, _ = _run(ref, params, grads)
    p_ours, _ = _run(ours, params, grads)
    for k in params:
        # float32 round-off only: measured max |diff| ~4e-7 on entries of size ~1.
        np.testing.assert_allclose(p_ours[k], p_ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


def _keller_reference_numpy(params, grads, lr, beta, wd, nesterov, steps=5):
    """Keller Jordan's Muon (github.com/KellerJordan/Muon, muon.py), re-derived in NumPy.

    PyTorch stores weights as (out, in); a Flax (in, out) kernel is its transpose.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    w = {k: np.asarray(v, np.float64).T for k, v in params.items()}  # (out, in)
    mom = {k: np.zeros_like(v) for k, v in w.items()}
    for g_tree in grads:
        for k in w:
            g = np.asarray(g_tree[k], np.float64).T
            mom[k] = mom[k] + (1 - beta) * (g - mom[k])  # momentum.lerp_(grad, 1 - beta)
            u = g + beta * (mom[k] - g) if nesterov else mom[k]  # grad.lerp_(momentum, beta)
            x = u.T if u.shape[0] > u.shape[1] else u
            x = x / (np.linalg.norm(x) + 1e-7)
            for _ in range(steps):
                gram = x @ x.T
                x = a * x + (b * gram + c * gram @ gram) @ x
            x = x.T if u.shape[0] > u.shape[1] else x
            x = x * max(1.0, g.shape[0] / g.shape[1]) ** 0.5  # rows/cols, rows = fan-out
            w[k] = w[k] * (1 - lr * wd) - lr * x
    return {k: v.T for k, v in w.items()}


@pytest.mark.parametrize("nesterov, wd", [(True, 0.0), (False, 0.0), (True, 0.1)])
def test_equals_keller_reference_without_bias_correction(nesterov, wd):
    rng = np.random.default_rng(1)
    params = _rand_tree(MATRICES, rng)
    grads = [_rand_tree(MATRICES, rng) for _ in range(20)]
    ours = muon(
        0.02,
        beta=0.95,
        weight_decay=wd,
        nesterov=nesterov,
        scale="keller",
        coefficients="keller",
    )
    p_ours, _ = _run(ours, params, grads)
    p_ref = _keller_reference_numpy(params, grads, 0.02, 0.95, wd, nesterov)
    for k in params:
        np.testing.assert_allclose(p_ours[k], p_ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_bias_correction_default_and_effect():
    """Default False (the references); it changes the Nesterov mix only in early steps."""
    rng = np.random.default_rng(2)
    params = {"w": jnp.zeros((8, 16))}
    grads = [_rand_tree(params, rng) for _ in range(3)]
    on = scale_by_muon(bias_correction=True)
    off = scale_by_muon()
    s_on, s_off = on.init(params), off.init(params)
    diffs = []
    for g in grads:
        u_on, s_on = on.update(g, s_on)
        u_off, s_off = off.update(g, s_off)
        diffs.append(float(jnp.max(jnp.abs(u_on["w"] - u_off["w"]))))
    assert diffs[0] < 1e-5 and diffs[1] > 1e-3  # step 1: U ∝ G either way
    # Without Nesterov the correction is a scalar, which NS's normalization removes.
    a, b = scale_by_muon(nesterov=False, bias_correction=True), scale_by_muon(nesterov=False)
    sa, sb = a.init(params), b.init(params)
    for g in grads:
        ua, sa = a.update(g, sa)
        ub, sb = b.update(g, sb)
        np.testing.assert_allclose(ua["w"], ub["w"], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Update RMS


RMS_SHAPES = [(64, 128), (128, 64), (32, 256), (256, 32), (48, 192)]


@pytest.mark.parametrize("shape", RMS_SHAPES)
def test_moonshot_rms_is_0p2_with_defaults(shape):
    rng = np.random.default_rng(3)
    tx = scale_by_muon()  # defaults: polar_express, moonshot
    g = {"w": jnp.asarray(rng.standard_normal(shape), jnp.float32)}
    u, _ = tx.update(g, tx.init(g))
    rms = float(jnp.sqrt(jnp.mean(u["w"] ** 2)))
    k = scale_by_muon(coefficients="keller")
    uk, _ = k.update(g, k.init(g))
    rms_k = float(jnp.sqrt(jnp.mean(uk["w"] ** 2)))
    print(f"{shape}: moonshot RMS polar_express {rms:.4f}, keller {rms_k:.4f}")
    assert abs(rms - 0.2) <= 0.01
    exact = scale_by_muon(scale="rms", coefficients="keller")
    ue, _ = exact.update(g, exact.init(g))
    assert abs(float(jnp.sqrt(jnp.mean(ue["w"] ** 2))) - 0.2) < 1e-5


def test_scale_options():
    g = {"w": jnp.asarray(np.random.default_rng(4).standard_normal((8, 32)), jnp.float32)}
    o = newton_schulz(g["w"], coefficients="keller")
    for scale, factor in [("keller", 2.0), ("moonshot", 0.2 * np.sqrt(32)), (0.5, 0.5)]:
        tx = scale_by_muon(nesterov=False, coefficients="keller", scale=scale)
        u, _ = tx.update(g, tx.init(g))
        np.testing.assert_allclose(u["w"], factor * o, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Routing on real Flax NNX models


class Block(nnx.Module):
    def __init__(self, d: int, heads: int, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=d, decode=False, rngs=rngs)
        self.ln2 = nnx.RMSNorm(d, rngs=rngs)
        self.fc1 = nnx.Linear(d, 4 * d, rngs=rngs)
        self.fc2 = nnx.Linear(4 * d, d, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class Transformer(nnx.Module):
    def __init__(self, vocab: int, d: int, heads: int, seq: int, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.pos = nnx.Embed(seq, d, rngs=rngs)
        self.block = Block(d, heads, rngs)
        self.ln_f = nnx.LayerNorm(d, rngs=rngs)
        self.lm_head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, tokens):
        t = tokens.shape[-1]
        x = self.embed(tokens) + self.pos(jnp.arange(t))
        mask = nnx.make_causal_mask(tokens)
        return self.lm_head(self.ln_f(self.block(x, mask)))


class CNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, kernel_size=(3, 3), rngs=rngs)
        self.norm = nnx.LayerNorm(16, rngs=rngs)
        self.fc = nnx.Linear(16, 32, rngs=rngs)
        self.head = nnx.Linear(32, 10, rngs=rngs)


class Scanned(nnx.Module):
    """Layers created with nnx.vmap: every parameter has a leading stack axis."""

    def __init__(self, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return Block(8, 2, rngs)

        self.embed = nnx.Embed(20, 8, rngs=rngs)
        self.layers = make(rngs)
        self.head = nnx.Linear(8, 20, rngs=rngs)


def _is_spec(x):
    return x is None or isinstance(x, MatrixSpec)


def _flat(tree):
    """{"a/b/kernel": leaf}; MatrixSpec and None count as leaves, nnx's `.value` is dropped."""
    out = {}
    for path, v in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_spec)[0]:
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if keys and isinstance(path[-1], jax.tree_util.GetAttrKey) and keys[-1] == "value":
            keys.pop()
        out["/".join(keys)] = v
    return out


def test_routing_transformer():
    model = Transformer(vocab=50, d=16, heads=4, seq=8, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    labels = _flat(muon_labels(params))
    expected_muon = {
        "block/attn/query/kernel",
        "block/attn/key/kernel",
        "block/attn/value/kernel",
        "block/attn/out/kernel",  # attention's own `out` is a hidden matrix, not the head
        "block/fc1/kernel",
        "block/fc2/kernel",
    }
    for path, label in labels.items():
        assert label == ("muon" if path in expected_muon else "adam"), path
    assert set(labels) >= expected_muon | {"embed/embedding", "lm_head/kernel", "ln_f/scale"}
    specs = _flat(muon_specs(params))
    shapes = {k: v.shape for k, v in _flat(params).items()}
    assert shapes["block/attn/query/kernel"] == (16, 4, 4)
    assert specs["block/attn/query/kernel"] == MatrixSpec((0,), (1, 2))  # 16 × 16, one matrix
    assert shapes["block/attn/out/kernel"] == (4, 4, 16)
    assert specs["block/attn/out/kernel"] == MatrixSpec((0, 1), (2,))
    rows = {r.path: r for r in routing_table(params)}
    assert rows["block/attn/query/kernel"].matrix == "16 × 16"
    assert rows["block/fc1/kernel"].scale == f"{0.2 * 8:.4g}"  # 0.2·√max(16, 64)
    assert rows["lm_head/kernel"].route == "adam"
    # Per-head option: (in, heads, head_dim) → 4 matrices 16 × 4.
    assert rows["block/attn/query/kernel"].route == "muon"
    per_head = {r.path: r for r in routing_table(params, per_head=True, print_table=False)}
    assert per_head["block/attn/query/kernel"].matrix == "4 × 16 × 4"
    assert per_head["block/attn/out/kernel"].matrix == "4 × 4 × 16"


def test_routing_cnn_and_user_override():
    params = nnx.state(CNN(nnx.Rngs(0)), nnx.Param)
    labels = _flat(muon_labels(params))
    assert labels["conv1/kernel"] == labels["conv2/kernel"] == labels["fc/kernel"] == "muon"
    for p in ("conv1/bias", "conv2/bias", "norm/scale", "norm/bias", "head/kernel", "fc/bias"):
        assert labels[p] == "adam", p
    rows = {r.path: r for r in routing_table(params, print_table=False)}
    assert rows["conv2/kernel"].matrix == "72 × 16"  # (3, 3, 8, 16) → (3·3·8, 16)

    # A user rule overrides everything; None defers to the presets.
    def rule(names, shape):
        if names[0] == "head" and names[-1] == "kernel":
            return "muon"
        return "adam" if names[0] == "fc" else None

    labels = _flat(muon_labels(params, labels=rule))
    assert labels["head/kernel"] == "muon" and labels["fc/kernel"] == "adam"
    assert labels["conv1/kernel"] == "muon"
    with pytest.raises(ValueError, match="no matrix view"):
        muon_labels(params, labels=lambda n, s: "muon")


def test_declared_stack_is_a_stack_of_matrices():
    model = Scanned(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    labels = _flat(muon_labels(params, stacked=("layers",)))
    shapes = {k: v.shape for k, v in _flat(params).items()}
    assert shapes["layers/fc1/kernel"] == (3, 8, 32)
    assert labels["layers/fc1/kernel"] == "muon"
    assert labels["layers/attn/query/kernel"] == "muon"
    assert labels["layers/ln1/scale"] == labels["layers/fc1/bias"] == "adam"  # (3, d): gains
    assert labels["embed/embedding"] == labels["head/kernel"] == "adam"
    specs = _flat(muon_specs(params, stacked=("layers",)))
    assert specs["layers/fc1/kernel"] == MatrixSpec((1,), (2,))
    assert specs["layers/attn/query/kernel"] == MatrixSpec((1,), (2, 3))
    # The update orthogonalizes each layer's matrix on its own.
    tx = scale_by_muon(stacked=("layers",), nesterov=False)
    g = {
        "layers": {
            "fc1": {
                "kernel": jnp.asarray(
                    np.random.default_rng(5).standard_normal((3, 8, 32)), jnp.float32
                )
            }
        }
    }
    u, _ = tx.update(g, tx.init(g))
    for i in range(3):
        o = newton_schulz(g["layers"]["fc1"]["kernel"][i], coefficients="polar_express")
        np.testing.assert_allclose(
            u["layers"]["fc1"]["kernel"][i], 0.2 * np.sqrt(32) * o, rtol=1e-5, atol=5e-6
        )


def test_batched_same_shape_equals_unbatched():
    rng = np.random.default_rng(6)
    params = _rand_tree(MATRICES, rng)
    grads = [_rand_tree(MATRICES, rng) for _ in range(3)]
    a, _ = _run(muon(0.02, batch_same_shape=True), params, grads)
    b, _ = _run(muon(0.02, batch_same_shape=False), params, grads)
    for k in params:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Sharding (8 simulated CPU devices, own process)


def test_sharded_step_matches_single_device_without_collectives():
    result = run_on_devices("_muon_sharding_check.py", timeout=300)[0][-1]
    print(result)
    assert result["err"] <= 1e-5
    assert result["kept"] and result["mu_kept"]
    assert result["collectives"] == []  # stack sharded on its stack axis: no communication
    assert result["control"]  # the check does see collectives when a matrix axis is sharded
    assert result["explicit_err"] <= 1e-5 and result["explicit_kept"]  # AxisType.Explicit


# --------------------------------------------------------------------------------------------
# Flax NNX training on real text


def test_nnx_transformer_trains_on_tinyshakespeare():
    start = time.perf_counter()
    text = read_tinyshakespeare()[:50_000]
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], np.int32)
    seq, batch = 32, 16
    model = Transformer(vocab=len(chars), d=32, heads=4, seq=seq, rngs=nnx.Rngs(0))
    tx = muon(3e-3)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    def loss_fn(model, x, y):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(0)
    eval_starts = rng.integers(0, len(ids) - seq - 1, 64)
    ex = jnp.asarray(np.stack([ids[s : s + seq] for s in eval_starts]))
    ey = jnp.asarray(np.stack([ids[s + 1 : s + seq + 1] for s in eval_starts]))
    eval_loss = nnx.jit(loss_fn)
    before = float(eval_loss(model, ex, ey))
    for _ in range(80):
        starts = rng.integers(0, len(ids) - seq - 1, batch)
        x = jnp.asarray(np.stack([ids[s : s + seq] for s in starts]))
        y = jnp.asarray(np.stack([ids[s + 1 : s + seq + 1] for s in starts]))
        train_step(model, optimizer, x, y)
    after = float(eval_loss(model, ex, ey))
    print(f"loss {before:.3f} -> {after:.3f} in {time.perf_counter() - start:.1f}s")
    assert after < before - 0.8


# --------------------------------------------------------------------------------------------
# Filtered Muon


def _param_sized_leaves(state, params):
    sizes = {int(np.prod(x.shape)) for x in jax.tree.leaves(params)}
    return [x for x in jax.tree.leaves(state) if x.ndim > 0 and int(np.prod(x.shape)) in sizes]


def test_filtered_muon_memory_is_one_extra_f32_leaf_per_param():
    params = {"a": jnp.zeros((8, 16), jnp.bfloat16), "b": jnp.zeros((16, 4), jnp.bfloat16)}
    plain = scale_by_muon().init(params)
    filt = scale_by_muon(filter_gamma=10.0).init(params)
    assert isinstance(plain, WithMomentsState) and plain.nu is None
    assert len(_param_sized_leaves(plain, params)) == 2  # mu only
    assert len(_param_sized_leaves(filt, params)) == 4  # mu + nu
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(filt.nu))
    extra = sum(v.nbytes for v in jax.tree.leaves(filt.nu))
    assert extra == 4 * (8 * 16 + 16 * 4)
    print(f"filter extra memory: {extra} bytes = 4 bytes x {8 * 16 + 16 * 4} params")


def test_filtered_muon_identity_settings_and_spike():
    rng = np.random.default_rng(7)
    params = {"w": jnp.zeros((8, 16))}
    grads = [_rand_tree(params, rng) for _ in range(30)]
    spike = jax.tree.map(lambda g: g.at[0, 0].set(1e4), grads[25])
    grads_spiked = grads[:25] + [spike] + grads[26:]
    # gamma = inf, eta = 1: the filter is the identity, so Muon is unchanged.
    a, _ = _run(optax.chain(scale_by_muon(), optax.scale(-0.01)), params, grads)
    b, _ = _run(
        optax.chain(scale_by_muon(filter_gamma=float("inf")), optax.scale(-0.01)), params, grads
    )
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6, atol=1e-7)
    # A 1e4 spike in one entry: unfiltered momentum is dominated by it, filtered is not.
    _, s_plain = _run(scale_by_muon(), params, grads_spiked)
    _, s_filt = _run(scale_by_muon(filter_gamma=10.0), params, grads_spiked)
    assert float(jnp.abs(s_plain.mu["w"][0, 0])) > 50.0
    assert float(jnp.abs(s_filt.mu["w"][0, 0])) < 5.0
    assert np.isfinite(np.asarray(s_filt.nu["w"])).all()


# --------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(ns_steps=0), "ns_steps"),
        (dict(coefficients=(3.4, -4.7)), "coefficients"),
        (dict(coefficients=[(3.4, -4.7, 2.0), (1.0, 2.0)]), "coefficients"),
        (dict(coefficients="muon"), "coefficients"),
        (dict(scale="spectral"), "scale"),
        (dict(scale=-1.0), "scale"),
        (dict(beta=1.0), "beta"),
        (dict(beta=-0.1), "beta"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(adam_weight_decay=-0.1), "adam_weight_decay"),
        (dict(adam_b2=1.0), "adam_b2"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(compute_dtype="int8"), "compute_dtype"),
        (dict(filter_gamma=0.0), "filter_gamma"),
        (dict(filter_eta=2.0), "filter_eta"),
        (dict(rms=-0.2), "rms"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, name):
    kwargs = {"learning_rate": 0.01, **kwargs}
    with pytest.raises(ValueError, match=name):
        muon(**kwargs)


# --------------------------------------------------------------------------------------------
# Battery


MIXED = {
    "w": jnp.zeros((8, 16)),
    "v": jnp.zeros((16, 8)),
    "b": jnp.zeros((16,)),
    "embed": {"embedding": jnp.zeros((10, 8))},
}


def _mixed(rng, dtype=jnp.float32):
    return _rand_tree(MIXED, rng, dtype)


def test_converges_on_matrix_least_squares_under_scan():
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
    target = jnp.asarray(rng.standard_normal((16, 24)), jnp.float32)
    y = x @ target

    def loss(p):
        return jnp.mean((x @ p["w"] - y) ** 2)

    tx = muon(optax.cosine_decay_schedule(0.1, 300), weight_decay=0.0)
    p0 = {"w": jnp.zeros((16, 24))}

    def body(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=300))((p0, tx.init(p0)))
    assert float(loss(p)) < 1e-3 * float(loss(p0))


def test_no_recompilation_and_extra_args_under_jit():
    traces = []
    tx = muon(0.01)
    params = _mixed(np.random.default_rng(9))

    @jax.jit
    def step(g, s, p):
        traces.append(1)
        return tx.update(g, s, p, some_unknown_arg=jnp.ones(()))

    s = tx.init(params)
    u, s = step(params, s, params)
    u, s = step(params, s, params)
    assert len(traces) == 1


def test_inject_hyperparams_equality_and_constant_schedule():
    rng = np.random.default_rng(10)
    params = _mixed(rng)
    grads = [_mixed(rng) for _ in range(3)]
    ref, _ = _run(muon(0.01), params, grads)
    inj, _ = _run(optax.inject_hyperparams(muon)(learning_rate=0.01), params, grads)
    inj_steps, _ = _run(optax.inject_hyperparams(muon)(0.01, ns_steps=5), params, grads)
    sched, _ = _run(muon(optax.constant_schedule(0.01)), params, grads)
    for other in (inj, inj_steps, sched):
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(other), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Filter hyperparameters traced by inject_hyperparams.
    f_ref, _ = _run(muon(0.01, filter_gamma=3.0, filter_warmup=1), params, grads)
    f_inj, _ = _run(
        optax.inject_hyperparams(muon)(0.01, filter_gamma=3.0, filter_warmup=1), params, grads
    )
    for a, b in zip(jax.tree.leaves(f_ref), jax.tree.leaves(f_inj), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_defaults_are_documented_choices():
    import inspect

    sig = inspect.signature(muon).parameters
    # Polar Express is what makes moonshot RMS = 0.2; fo.muon spells it None (so that
    # optax's alias ns_coeffs can be told apart), scale_by_muon by name.
    assert sig["coefficients"].default is None
    assert inspect.signature(scale_by_muon).parameters["coefficients"].default == "polar_express"
    assert "coefficients='polar_express'" in str(describe(muon(0.01)))
    assert sig["scale"].default == "moonshot" and sig["bias_correction"].default is False
    assert sig["weight_decay"].default == 0.1 and sig["beta"].default == 0.95


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_update_dtype_equals_grad_dtype(dtype):
    rng = np.random.default_rng(11)
    params = _mixed(rng, dtype)
    tx = muon(0.01)
    u, s = jax.jit(tx.update)(_mixed(rng, dtype), tx.init(params), params)
    for leaf in jax.tree.leaves(u):
        assert leaf.dtype == dtype
    u2, _ = jax.jit(tx.update)(_mixed(rng, dtype), s, params)
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(u2))


def test_multisteps_first_update_zero_and_eval_shape():
    rng = np.random.default_rng(12)
    params = _mixed(rng)
    tx = optax.MultiSteps(muon(0.01), every_k_schedule=2)
    u, _ = tx.update(_mixed(rng), tx.init(params), params)
    assert all(bool(jnp.all(leaf == 0)) for leaf in jax.tree.leaves(u))
    shapes = jax.eval_shape(muon(0.01, filter_gamma=10.0).init, params)
    assert jax.tree.structure(shapes) == jax.tree.structure(
        muon(0.01, filter_gamma=10.0).init(params)
    )
