"""fo.trace_routing: routes read off the traced forward pass, checked on a model zoo.

Every model in the zoo has a hand-written expectation (route and reason) for every parameter
leaf; the traced rule must match all of them. Each case also prints where the name presets
(``fo.muon_specs`` without ``labels``) decide differently (run with ``-s`` to see).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import lax

import filtered_optax as fo
import filtered_optax._trace as trace_module
from benchmarks.core.models import CharLM
from filtered_optax import MatrixSpec

IN_OUT = MatrixSpec((0,), (1,))  # nnx.Linear (in, out)
OUT_IN = MatrixSpec((1,), (0,))  # PyTorch (out, in) applied as x @ W.T
QKV = MatrixSpec((0,), (1, 2))  # (in, heads, head_dim)
ATTN_OUT = MatrixSpec((0, 1), (2,))  # (heads, head_dim, out)
CONV = MatrixSpec((0, 1, 2), (3,))  # (kh, kw, in, out)

LIN = (IN_OUT, "dot: reduce (0,) out (1,)")
ELEM = ("adam", "elementwise only")
EMBED = ("adam", "gather → embedding")
HEAD = ("adam", "last projection → head")


def _key(i):
    return jax.random.PRNGKey(i)


# --------------------------------------------------------------------------------------------
# The zoo


class Block(nnx.Module):
    def __init__(self, d: int, heads: int, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=d, decode=False, rngs=rngs)
        self.ln2 = nnx.RMSNorm(d, rngs=rngs)
        self.fc1 = nnx.Linear(d, 2 * d, rngs=rngs)
        self.fc2 = nnx.Linear(2 * d, d, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.attn(self.ln1(x), mask=mask, deterministic=True)
        return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class TiedTransformer(nnx.Module):
    """Raw `pos` Param added to the embeddings, MultiHeadAttention, tied embeddings."""

    def __init__(self, vocab: int = 32, d: int = 16, seq: int = 8, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (seq, d)))
        self.block = Block(d, 2, rngs)
        self.ln_f = nnx.LayerNorm(d, rngs=rngs)

    def __call__(self, tokens):
        t = tokens.shape[-1]
        x = self.embed(tokens) + self.pos[:t]
        x = self.block(x, nnx.make_causal_mask(tokens))
        return self.embed.attend(self.ln_f(x))  # tied head


def tied_transformer():
    model = TiedTransformer(rngs=nnx.Rngs(0))
    qkv = (QKV, "dot: reduce (0,) out (1, 2)")
    expected = {
        "embed/embedding": ("adam", "conflicting uses: gather, dot"),
        "pos": ELEM,
        "block/ln1/scale": ELEM,
        "block/ln1/bias": ELEM,
        "block/attn/query/kernel": qkv,
        "block/attn/key/kernel": qkv,
        "block/attn/value/kernel": qkv,
        "block/attn/query/bias": ELEM,
        "block/attn/key/bias": ELEM,
        "block/attn/value/bias": ELEM,
        "block/attn/out/kernel": (ATTN_OUT, "dot: reduce (0, 1) out (2,)"),
        "block/attn/out/bias": ELEM,
        "block/ln2/scale": ELEM,
        "block/fc1/kernel": LIN,
        "block/fc1/bias": ELEM,
        "block/fc2/kernel": LIN,
        "block/fc2/bias": ELEM,
        "ln_f/scale": ELEM,
        "ln_f/bias": ELEM,
    }
    return model, (jnp.zeros((2, 6), jnp.int32),), expected  # 6 < 8: pos is sliced


def _einsum_forward(p, tokens):
    x = p["embed"][tokens]
    q = jnp.einsum("btd,dhk->bthk", x, p["wq"])
    k = jnp.einsum("btd,dhk->bthk", x, p["wk"])
    v = jnp.einsum("btd,dhk->bthk", x, p["wv"])
    att = jax.nn.softmax(jnp.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1]), axis=-1)
    o = jnp.einsum("bhts,bshk->bthk", att, v)
    x = x + jnp.einsum("bthk,hkd->btd", o, p["wo"])
    x = x * lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * p["norm"]["scale"]
    return x @ p["head"]


def einsum_attention():
    v, d, h, k = 24, 16, 2, 8
    shapes = {
        "embed": (v, d),
        "wq": (d, h, k),
        "wk": (d, h, k),
        "wv": (d, h, k),
        "wo": (h, k, d),
        "norm": {"scale": (d,)},
        "head": (d, v),
    }
    params = jax.tree.map(lambda s: jnp.zeros(s), shapes, is_leaf=lambda s: isinstance(s, tuple))
    qkv = (QKV, "dot: reduce (0,) out (1, 2)")
    expected = {
        "embed": EMBED,
        "wq": qkv,
        "wk": qkv,
        "wv": qkv,
        "wo": (ATTN_OUT, "dot: reduce (0, 1) out (2,)"),
        "norm/scale": ELEM,
        "head": HEAD,
    }
    return _einsum_forward, params, (jnp.zeros((2, 6), jnp.int32),), expected


def _torch_forward(p, x):
    x = jax.nn.relu(x @ p["fc1"]["weight"].T + p["fc1"]["bias"])
    w2 = p["fc2"]["weight"].astype(jnp.bfloat16)  # a cast on the way is followed
    x = jax.nn.relu(x.astype(jnp.bfloat16) @ w2.T + p["fc2"]["bias"]).astype(jnp.float32)
    return x @ p["out"]["weight"].T + p["out"]["bias"]


def torch_layout():
    rng = np.random.default_rng(0)
    params = {
        name: {
            "weight": jnp.asarray(rng.standard_normal((o, i)), jnp.float32),
            "bias": jnp.zeros(o),
        }
        for name, (o, i) in {"fc1": (32, 12), "fc2": (32, 32), "out": (5, 32)}.items()
    }
    torch = (OUT_IN, "dot: reduce (1,) out (0,)")
    expected = {
        "fc1/weight": torch,
        "fc1/bias": ELEM,
        "fc2/weight": torch,
        "fc2/bias": ELEM,
        "out/weight": HEAD,
        "out/bias": ELEM,
    }
    return _torch_forward, params, (jnp.zeros((4, 12)),), expected


class DecoderHead(nnx.Module):
    """An autoencoder whose last projection is called `decoder`."""

    def __init__(self, rngs: nnx.Rngs):
        self.encoder = nnx.Linear(16, 8, rngs=rngs)
        self.hidden = nnx.Linear(8, 8, rngs=rngs)
        self.decoder = nnx.Linear(8, 16, rngs=rngs)

    def __call__(self, x):
        return self.decoder(nnx.tanh(self.hidden(nnx.tanh(self.encoder(x)))))


def decoder_head():
    expected = {
        "encoder/kernel": LIN,
        "encoder/bias": ELEM,
        "hidden/kernel": LIN,
        "hidden/bias": ELEM,
        "decoder/kernel": HEAD,
        "decoder/bias": ELEM,
    }
    return DecoderHead(nnx.Rngs(0)), (jnp.zeros((4, 16)),), expected


class ScanBlock(nnx.Module):
    def __init__(self, d: int, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.lin = nnx.Linear(d, d, rngs=rngs)

    def __call__(self, x):
        return x + jax.nn.relu(self.lin(self.norm(x)))


class Scanned(nnx.Module):
    """Three blocks created by nnx.vmap (leading stack axis) and run by nnx.scan."""

    def __init__(self, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return ScanBlock(16, rngs)

        self.embed = nnx.Embed(20, 16, rngs=rngs)
        self.blocks = make(rngs)
        self.head = nnx.Linear(16, 20, rngs=rngs)

    def __call__(self, tokens):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def body(x, block):
            return block(x)

        return self.head(body(self.embed(tokens), self.blocks))


def scanned_blocks():
    expected = {
        "embed/embedding": EMBED,
        "blocks/lin/kernel": (
            MatrixSpec((1,), (2,)),
            "dot: reduce (1,) out (2,); scan → stack axis 0",
        ),
        "blocks/lin/bias": ELEM,
        "blocks/norm/scale": ELEM,
        "blocks/norm/bias": ELEM,
        "head/kernel": HEAD,
        "head/bias": ELEM,
    }
    return Scanned(nnx.Rngs(0)), (jnp.zeros((2, 5), jnp.int32),), expected


class ConvNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 8, kernel_size=(3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, kernel_size=(3, 3), rngs=rngs)
        self.head = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x, train: bool = True):
        x = nnx.relu(self.bn(self.conv1(x), use_running_average=not train))
        x = nnx.relu(self.conv2(x))
        return self.head(x.mean(axis=(1, 2)))


def conv_net():
    conv = (CONV, "conv: reduce (0, 1, 2) out (3,)")
    expected = {
        "conv1/kernel": conv,
        "conv1/bias": ELEM,
        "bn/scale": ELEM,
        "bn/bias": ELEM,
        "conv2/kernel": conv,
        "conv2/bias": ELEM,
        "head/kernel": HEAD,
        "head/bias": ELEM,
    }
    return ConvNet(nnx.Rngs(0)), (jnp.zeros((2, 8, 8, 3)),), expected


class Mixer(nnx.Module):
    """MLP-Mixer: token mixing contracts a (seq_out, seq_in) weight over the sequence axis."""

    def __init__(self, seq: int = 8, patch: int = 12, c: int = 16, *, rngs: nnx.Rngs):
        self.stem = nnx.Linear(patch, c, rngs=rngs)
        self.ln1 = nnx.LayerNorm(c, rngs=rngs)
        self.token_mix = nnx.Param(jax.random.normal(rngs.params(), (seq, seq)) / seq**0.5)
        self.ln2 = nnx.LayerNorm(c, rngs=rngs)
        self.channel1 = nnx.Linear(c, 2 * c, rngs=rngs)
        self.channel2 = nnx.Linear(2 * c, c, rngs=rngs)
        self.head = nnx.Linear(c, 10, rngs=rngs)

    def __call__(self, patches):
        x = self.stem(patches)
        x = x + jnp.einsum("ts,bsc->btc", self.token_mix[...], self.ln1(x))
        x = x + self.channel2(nnx.gelu(self.channel1(self.ln2(x))))
        return self.head(x.mean(axis=1))


def mlp_mixer():
    expected = {
        "stem/kernel": LIN,
        "stem/bias": ELEM,
        "ln1/scale": ELEM,
        "ln1/bias": ELEM,
        "token_mix": (OUT_IN, "dot: reduce (1,) out (0,)"),
        "ln2/scale": ELEM,
        "ln2/bias": ELEM,
        "channel1/kernel": LIN,
        "channel1/bias": ELEM,
        "channel2/kernel": LIN,
        "channel2/bias": ELEM,
        "head/kernel": HEAD,
        "head/bias": ELEM,
    }
    return Mixer(rngs=nnx.Rngs(0)), (jnp.zeros((2, 8, 12)),), expected


class LoRALinear(nnx.Module):
    """y = base(x) + (alpha / r) · x A B, the scale applied to B (elementwise, a constant)."""

    def __init__(self, din: int, dout: int, rank: int, alpha: float, *, rngs: nnx.Rngs):
        self.base = nnx.Linear(din, dout, rngs=rngs)
        self.lora_a = nnx.Param(jax.random.normal(rngs.params(), (din, rank)) / din**0.5)
        self.lora_b = nnx.Param(jnp.zeros((rank, dout)))
        self.scaling = alpha / rank

    def __call__(self, x):
        return self.base(x) + (x @ self.lora_a[...]) @ (self.lora_b[...] * self.scaling)


class LoRAModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.adapted = LoRALinear(16, 16, 4, alpha=8.0, rngs=rngs)
        self.head = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.adapted(x)))


def lora():
    expected = {
        "adapted/base/kernel": LIN,
        "adapted/base/bias": ELEM,
        "adapted/lora_a": LIN,
        "adapted/lora_b": LIN,
        "head/kernel": HEAD,
        "head/bias": ELEM,
    }
    return LoRAModel(nnx.Rngs(0)), (jnp.zeros((4, 16)),), expected


@jax.custom_vjp
def _torch_matmul(x, w):
    return x @ w.T


_torch_matmul.defvjp(lambda x, w: (x @ w.T, (x, w)), lambda res, g: (g @ res[1], g.T @ res[0]))


def _control_flow_forward(p, x, flag, steps):
    def stem(x):
        return jax.nn.relu(x @ p["stem"])

    h = jax.checkpoint(stem)(x)
    h = lax.cond(flag, lambda h: jnp.tanh(h @ p["branch"]), lambda h: h @ p["branch"], h)
    h = _torch_matmul(h, p["torch"])
    h = lax.fori_loop(0, steps, lambda i, h: jnp.tanh(h @ p["loop"]), h)  # traced bound: while
    return jax.jit(lambda h: (h * p["gain"]) @ p["head"])(h)


def control_flow():
    shapes = {
        "stem": (8, 16),
        "branch": (16, 16),
        "torch": (12, 16),
        "loop": (12, 12),
        "gain": (12,),
        "head": (12, 3),
    }
    params = {k: jnp.zeros(s) for k, s in shapes.items()}
    expected = {
        "stem": LIN,
        "branch": LIN,
        "torch": (OUT_IN, "dot: reduce (1,) out (0,)"),
        "loop": LIN,
        "gain": ELEM,
        "head": HEAD,
    }
    args = (jnp.zeros((4, 8)), jnp.array(True), jnp.array(2))
    return _control_flow_forward, params, args, expected


ZOO = [
    tied_transformer,
    einsum_attention,
    torch_layout,
    decoder_head,
    scanned_blocks,
    conv_net,
    mlp_mixer,
    lora,
    control_flow,
]


# --------------------------------------------------------------------------------------------
# Helpers


def _build(case):
    """(rule, params tree as the optimizer sees it, expected) for one zoo entry."""
    built = case()
    if isinstance(built[0], nnx.Module):
        model, args, expected = built
        return fo.trace_routing(model, *args), nnx.state(model, nnx.Param), expected
    fn, params, args, expected = built
    return fo.trace_routing(fn, params, *args), params, expected


def _leaves(params):
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {fo.path_names(p): tuple(x.shape) for p, x in flat}


def _preset_differences(params, rule):
    """Lines where the name presets (no labels) and the traced rule disagree."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        specs = fo.muon_specs(params)
    presets = jax.tree.leaves(specs, is_leaf=lambda s: s is None or isinstance(s, MatrixSpec))
    lines = [f"  presets warn: {w.message}" for w in caught]
    for (names, shape), preset in zip(_leaves(params).items(), presets, strict=True):
        traced = rule(names, shape)
        traced = None if traced == "adam" else traced
        if traced != preset:
            lines.append(
                f"  {'/'.join(names)} {shape}: presets {preset}, traced {traced} "
                f"({rule.reason(names)})"
            )
    return lines


# --------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("case", ZOO, ids=lambda c: c.__name__)
def test_zoo_matches_hand_written_routes(case):
    rule, params, expected = _build(case)
    leaves = _leaves(params)
    assert {"/".join(n) for n in leaves} == set(expected)  # every leaf has an expectation
    assert set(rule.decisions) == set(leaves)
    for names, shape in leaves.items():
        route, reason = expected["/".join(names)]
        assert rule(names, shape) == route, ("/".join(names), rule.reason(names))
        assert rule.reason(names) == reason, "/".join(names)
    # The traced rule plugs into every routing entry point.
    specs = jax.tree.leaves(
        fo.muon_specs(params, labels=rule), is_leaf=lambda s: s is None or isinstance(s, MatrixSpec)
    )
    for (names, _), spec in zip(leaves.items(), specs, strict=True):
        want = expected["/".join(names)][0]
        assert spec == (None if want == "adam" else want), "/".join(names)
    rows = fo.routing_table(params, labels=rule, print_table=False)
    assert [r.route for r in rows] == [
        "adam" if expected["/".join(n)][0] == "adam" else "muon" for n in leaves
    ]
    diffs = _preset_differences(params, rule)
    print(f"\n{case.__name__}: name presets differ on {len(diffs)} leaves", *diffs, sep="\n")


def test_nnx_paths_match_what_nnx_optimizer_passes():
    model = TiedTransformer(rngs=nnx.Rngs(1))
    rule = fo.trace_routing(model, jnp.zeros((1, 8), jnp.int32))
    for tree in (nnx.state(model, nnx.Param), nnx.as_pure(nnx.state(model, nnx.Param))):
        assert set(_leaves(tree)) == set(rule.decisions)


def test_presets_differ_where_names_mislead():
    """The cases the traced rule exists for: the name presets get these wrong today."""
    rule, params, _ = _build(torch_layout)
    assert _leaves(params)[("fc2", "weight")] == (32, 32)
    assert fo.muon_specs(params)["fc2"]["weight"] == IN_OUT  # presets: rows are fan-in
    assert rule(("fc2", "weight"), (32, 32)) == OUT_IN
    model, args, _ = decoder_head()
    assert fo.muon_labels(nnx.state(model, nnx.Param))["decoder"]["kernel"] == "muon"
    assert fo.trace_routing(model, *args)(("decoder", "kernel"), (8, 16)) == "adam"


def _matmul(p, x):
    return x @ p["w"]


def test_conflicting_axes_unreached_leaves_and_stacks():
    d = 8
    params = {
        "both": jnp.zeros((d, d)),
        "unused": jnp.zeros((d, d)),
        "emb": jnp.zeros((5, d)),
        "experts": jnp.zeros((3, d, d)),
        "fanout": jnp.zeros((3, d, d)),
        "layers": jnp.zeros((2, d, d)),
        "fused": jnp.zeros((d, 3 * d)),
        "gate": jnp.zeros((d, 1)),
        "head": jnp.zeros((d, 2)),
    }

    def fn(p, x, start):
        x = x + lax.dynamic_slice_in_dim(p["emb"], start, x.shape[0])  # data position
        x = jnp.tanh(x @ p["both"]) @ p["both"].T  # contracted over both axes
        q, k, v = (x @ w for w in jnp.split(p["fused"], 3, axis=1))  # a fused weight, split
        x = x + jnp.tanh(q * k) * v
        x = x * jax.nn.sigmoid(x @ p["gate"])  # a d × 1 "matrix"
        xe = jnp.stack([x, 2 * x, -x])
        x = jnp.einsum("ebd,edf->ebf", xe, p["experts"]).sum(0)  # batched over experts
        x = jnp.einsum("bd,edf->bef", x, p["fanout"]).mean(1)  # one matrix d × (e·f)

        def body(i, x):
            return jnp.tanh(x @ p["layers"][i])  # indexed at the loop counter

        return lax.fori_loop(0, 2, body, x) @ p["head"]

    rule = fo.trace_routing(fn, params, jnp.zeros((4, d)), jnp.array(0))
    assert rule(("both",), (d, d)) == "adam"
    assert rule.reason(("both",)) == (
        "conflicting uses: dot reduce (0,) out (1,) vs dot reduce (1,) out (0,)"
    )
    assert rule(("unused",), (d, d)) is None
    assert rule.reason(("unused",)) == "not reached → name preset"
    assert rule(("elsewhere",), (d, d)) is None  # not in the traced tree: presets decide
    assert rule.reason(("emb",)) == "dynamic slice → embedding"
    assert rule(("experts",), (3, d, d)) == MatrixSpec((1,), (2,))
    assert rule.reason(("experts",)) == "dot: reduce (1,) out (2,); dot batch → stack axis 0"
    assert rule(("fanout",), (3, d, d)) == MatrixSpec((1,), (0, 2))
    assert rule(("fused",), (d, 3 * d)) == IN_OUT  # one d × 3d matrix, as the presets say
    assert rule(("gate",), (d, 1)) == "adam"
    assert rule.reason(("gate",)) == "dot: reduce (0,) out (1,) → a side of 1, not a matrix"
    assert rule(("layers",), (2, d, d)) == MatrixSpec((1,), (2,))
    assert rule.reason(("layers",)) == "dot: reduce (1,) out (2,); indexed → stack axis 0"
    assert "unused" in rule.table() and "conflicting uses" in str(rule)
    # The routes reach fo.muon_specs: unreached leaves fall back to the presets.
    specs = fo.muon_specs(params, labels=rule)
    assert specs["unused"] == IN_OUT and specs["both"] is None


def test_abstract_inputs_and_static_flags():
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), torch_layout()[1])
    x = jax.ShapeDtypeStruct((4, 12), jnp.float32)
    rule = fo.trace_routing(_torch_forward, params, x)
    assert rule(("fc1", "weight"), (32, 12)) == OUT_IN
    model, (x,), _ = conv_net()
    rule = fo.trace_routing(model, x, train=False)  # a Python flag stays static
    assert rule(("conv1", "kernel"), (3, 3, 3, 8)) == CONV
    assert rule.reason(("bn", "scale")) == "elementwise only"


def test_errors_name_the_input_or_leaf():
    params = {"w1": jnp.zeros((8, 16)), "w2": jnp.zeros((12, 4))}

    def fn(p, x):
        return jnp.tanh(x @ p["w1"]) @ p["w2"]

    with pytest.raises(ValueError, match=r"params leaf 'w2' float32\[12, 4\]"):
        fo.trace_routing(fn, params, jnp.zeros((2, 8)))
    params["w2"] = jnp.zeros((16, 4))
    with pytest.raises(ValueError, match=r"input x float32\[2, 5\]"):
        fo.trace_routing(fn, params, jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"input x float32\[2, 5\]"):
        fo.trace_routing(fn, params, x=jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"input batch\['x'\] float32\[2, 5\]"):
        fo.trace_routing(lambda p, batch: fn(p, batch["x"]), params, {"x": jnp.zeros((2, 5))})
    with pytest.raises(ValueError, match=r"params leaf 'w2' float32\[16, 4\] \(by shape\)"):
        # Inside a nested jit the operands are new tracers: named by shape and dtype.
        fo.trace_routing(
            lambda p, x: jax.jit(lambda h, w: h @ w.T)(x @ p["w1"], p["w2"]),
            params,
            jnp.zeros((2, 8)),
        )
    with pytest.raises(ValueError, match=r"could not trace <lambda>.*carry input and carry"):
        fo.trace_routing(
            lambda p, x: lax.scan(lambda c, w: (c @ w, None), x, p["s"])[0],
            {"s": jnp.zeros((3, 8, 5))},
            jnp.zeros((2, 8)),
        )

    def fails(p, x):
        raise RuntimeError("unsupported layer")

    with pytest.raises(ValueError, match=r"inputs were params \(2 leaves\); input x float32"):
        fo.trace_routing(fails, params, jnp.zeros((2, 8)))
    with pytest.raises(ValueError, match="'w2', which its inputs do not have"):
        fo.trace_routing(fn, {"w1": params["w1"]}, jnp.zeros((2, 8)))
    with pytest.raises(ValueError, match="params leaf w2 .* is str"):
        fo.trace_routing(fn, {"w1": params["w1"], "w2": "oops"}, jnp.zeros((2, 8)))
    model = DecoderHead(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"input x float32\[4, 5\]"):
        fo.trace_routing(model, jnp.zeros((4, 5)))
    with pytest.raises(TypeError, match="params is missing"):
        fo.trace_routing(fn)
    with pytest.raises(TypeError, match="nnx.Module"):
        fo.trace_routing(3, params)
    rule = fo.trace_routing(fn, params, jnp.zeros((2, 8)))
    with pytest.raises(ValueError, match="traced parameter w1 with shape"):
        rule(("w1",), (8, 8))


def test_tracing_computes_nothing():
    """Only abstract values flow: a forward that would allocate ~64 GiB traces at once."""
    big = jax.ShapeDtypeStruct((1 << 17, 1 << 17), jnp.float32)  # 64 GiB if materialised
    rule = fo.trace_routing(
        lambda p, x: jnp.tanh(x @ p["w"]) @ p["out"],
        {"w": big, "out": big},
        jax.ShapeDtypeStruct((4, 1 << 17), jnp.float32),
    )
    assert rule(("w",), big.shape) == IN_OUT


def test_transformer_trains_with_traced_routing():
    model = TiedTransformer(rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    # A learnable next-token rule: token t+1 = (3 · token t + 1) mod 32.
    start = rng.integers(0, 32, size=(16, 1))
    seq = (start * np.power(3, np.arange(9)) + (np.power(3, np.arange(9)) - 1) // 2) % 32
    x, y = jnp.asarray(seq[:, :8], jnp.int32), jnp.asarray(seq[:, 1:], jnp.int32)
    rule = fo.trace_routing(model, x)
    tx = fo.muon(0.02, labels=rule)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, x, y)) for _ in range(60)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
    labels = fo.muon_labels(nnx.state(model, nnx.Param), labels=rule)
    assert labels["block"]["fc1"]["kernel"] == "muon"
    assert labels["embed"]["embedding"] == labels["pos"] == "adam"


def test_loop_carries_settle_and_size_one_axes_join_fan_in():
    d = 8
    params = {
        "w_xh": jnp.zeros((4, d)),
        "w_hh": jnp.zeros((d, d)),
        "carried": jnp.zeros((d, d)),
        "kernel": jnp.zeros((5, 1, d)),
        "head": jnp.zeros((d, 3)),
    }

    def fn(p, xs, n):
        def cell(h, x):  # an RNN: h starts as a constant and becomes data after one step
            h = jnp.tanh(h @ p["w_hh"] + x @ p["w_xh"])
            return h, h

        _, hs = lax.scan(cell, jnp.zeros((xs.shape[1], d)), xs)
        h, _ = lax.fori_loop(
            0, n, lambda i, c: (jnp.tanh(c[0] @ c[1]), c[1]), (hs[-1], p["carried"])
        )  # a weight passed as a loop carry
        window = jnp.stack([xs[-1, :, 0]] * 5, axis=-1)  # (batch, 5)
        h = h + window @ p["kernel"].reshape(5, d)  # (5, 1, d) read as a 5 × d matrix
        return h @ p["head"]

    rule = fo.trace_routing(fn, params, jnp.zeros((6, 2, 4)), jnp.array(3))
    for name in ("w_xh", "w_hh", "carried"):
        assert rule((name,), params[name].shape) == IN_OUT, rule.reason((name,))
        assert rule.reason((name,)) == "dot: reduce (0,) out (1,)"
    assert rule(("kernel",), (5, 1, d)) == MatrixSpec((0, 1), (2,))
    assert rule.reason(("head",)) == "last projection → head"


def test_tracing_a_loss_routes_like_tracing_the_forward():
    """The head is found through a loss too: labels and log-softmax are not contractions."""
    fn, params, (tokens,), _ = einsum_attention()

    def loss(p, tokens, targets):
        logits = fn(p, tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    forward = fo.trace_routing(fn, params, tokens)
    through_loss = fo.trace_routing(loss, params, tokens, tokens)
    assert dict(through_loss.decisions) == dict(forward.decisions)


# --------------------------------------------------------------------------------------------
# The routing table's "why" column, cost, and the benchmark LM


def test_routing_table_why_column_reads_the_traced_reasons():
    for case in (einsum_attention, scanned_blocks, tied_transformer):
        rule, params, expected = _build(case)
        rows = {r.path: r for r in fo.routing_table(params, labels=rule)}
        assert {p: r.why for p, r in rows.items()} == {p: e[1] for p, e in expected.items()}
    rows = {
        r.path: r
        for r in fo.routing_table(_build(scanned_blocks)[1], labels=_build(scanned_blocks)[0])
    }
    assert rows["blocks/lin/kernel"].why == "dot: reduce (1,) out (2,); scan → stack axis 0"
    assert rows["blocks/lin/kernel"].matrix == "3 × 16 × 16"
    # A leaf the trace never reached: the preset decides and says so, with the rule's note.
    params = {"w": jnp.zeros((4, 8)), "spare": jnp.zeros((8, 8))}
    rule = fo.trace_routing(_matmul, params, jnp.zeros((2, 4)))
    rows = {r.path: r for r in fo.routing_table(params, labels=rule)}
    assert rows["w"].why == "last projection → head"
    assert rows["spare"].why == "name preset: matrix (in, out) (rule: not reached → name preset)"


class BigLM(nnx.Module):
    """Far larger than this machine's memory: 2 × 16 GiB of matrices, 8 GiB activations."""

    def __init__(self, vocab: int, d: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.fc1 = nnx.Linear(d, 4 * d, rngs=rngs)
        self.fc2 = nnx.Linear(4 * d, d, rngs=rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        return self.head(x + self.fc2(nnx.gelu(self.fc1(x))))


def test_tracing_an_abstract_model_compiles_and_runs_nothing():
    d = 1 << 15  # fc1: 32768 × 131072 float32 = 16 GiB; activations (8, 2048, 131072) 8 GiB
    model = nnx.eval_shape(lambda: BigLM(256, d, rngs=nnx.Rngs(0)))
    tokens = jax.ShapeDtypeStruct((8, 2048), jnp.int32)
    events = []

    def listen(event, *args, **kwargs):
        events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        rule = fo.trace_routing(model, tokens)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert not [e for e in events if "backend_compile" in e], events  # nothing compiled
    assert rule(("fc1", "kernel"), (d, 4 * d)) == IN_OUT
    assert rule(("head", "kernel"), (d, 256)) == "adam"


def test_traced_rule_is_built_once_outside_the_step(monkeypatch):
    """The rule is traced once, before the optimizer exists; the jitted step only looks
    routes up while it is being compiled, never again per step."""
    analyses = []
    analyse = trace_module._analyse
    monkeypatch.setattr(trace_module, "_analyse", lambda *a: analyses.append(1) or analyse(*a))
    model = TiedTransformer(rngs=nnx.Rngs(0))
    x = jnp.zeros((4, 8), jnp.int32)
    rule = fo.trace_routing(model, x)
    lookups = []

    def counted(names, shape):
        lookups.append(names)
        return rule(names, shape)

    optimizer = nnx.Optimizer(model, fo.muon(0.02, labels=counted), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x):
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)

    step(model, optimizer, x)  # compiles: routes are looked up while tracing
    compiled = len(lookups)
    for _ in range(3):
        step(model, optimizer, x)
    assert len(analyses) == 1  # one trace of the forward pass, outside the step
    assert compiled > 0 and len(lookups) == compiled  # no routing work in later steps


def test_benchmark_char_lm_pos_goes_to_adamw_traced_and_by_presets():
    model = CharLM(65, 32, 2, 4, 16, nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    rule = fo.trace_routing(model, jnp.zeros((2, 16), jnp.int32))
    traced = fo.routing_table(params, labels=rule)
    presets = fo.routing_table(params)
    print("\nCharLM, traced routing:", traced, "CharLM, name presets:", presets, sep="\n")
    t, p = {r.path: r for r in traced}, {r.path: r for r in presets}
    assert (t["pos"].route, t["pos"].why) == ("adam", "elementwise only")
    assert (p["pos"].route, p["pos"].why) == ("adam", "name preset: position table name 'pos'")
    assert t["head/kernel"].why == "last projection → head"
    assert t["blocks/0/qkv/kernel"].matrix == "32 × 96"
    # On this model the presets now agree with the trace on every leaf.
    assert [(r.path, r.route, r.matrix) for r in traced] == [
        (r.path, r.route, r.matrix) for r in presets
    ]
