"""The name presets on the cases a new-user pass over Flax NNX models found, and the "why"
column of fo.routing_table for presets and user rules.

Each case builds a small NNX model as a user would write it and checks the route and the
reason the presets give (position tables, class tokens, head spellings, a top-level ``out``,
layers stacked by ``nnx.vmap`` without ``stacked=``).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import filtered_optax as fo
from filtered_optax import MatrixSpec
from filtered_optax._routing import resolve


def _rows(model_or_params, **kw):
    """{path: RouteRow} of a model (its nnx.Param state) or a params tree."""
    if isinstance(model_or_params, nnx.Module):
        model_or_params = nnx.state(model_or_params, nnx.Param)
    return {r.path: r for r in fo.routing_table(model_or_params, **kw)}


def _no_warnings(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kw)


# --------------------------------------------------------------------------------------------
# Position tables


class PosModel(nnx.Module):
    """Token embedding + a learned position table stored under ``name`` + one block."""

    def __init__(self, name: str, *, rngs: nnx.Rngs, t: int = 8, d: int = 16):
        self.embed = nnx.Embed(32, d, rngs=rngs)
        setattr(self, name, nnx.Param(0.02 * jax.random.normal(rngs.params(), (t, d))))
        self.fc = nnx.Linear(d, d, rngs=rngs)
        self.head = nnx.Linear(d, 32, rngs=rngs)


@pytest.mark.parametrize(
    "name",
    [
        "pos_emb",
        "pos_embed",
        "positional_embedding",
        "position_embeddings",
        "pos",
        "pos_embedding",
        "position_embedding",
        "pos_encoding",
        "Pos_Emb",
    ],
)
def test_position_tables_go_to_adamw(name):
    rows = _no_warnings(_rows, PosModel(name, rngs=nnx.Rngs(0)))
    assert rows[name].route == "adam"
    assert rows[name].why == f"name preset: position table name {name.lower()!r}"
    assert rows["fc/kernel"].route == "muon"  # the hidden matrix still goes to Muon


def test_wpe_and_position_words_that_are_not_tables():
    p = {
        "wpe": jnp.zeros((8, 16)),
        "pos_proj": {"kernel": jnp.zeros((16, 16))},
        "time_embed": {"kernel": jnp.zeros((16, 16))},
    }
    rows = _rows(p)
    assert (rows["wpe"].route, rows["wpe"].why) == ("adam", "name preset: embedding name 'wpe'")
    # A projection of positions and a timestep MLP are hidden matrices, not tables.
    assert rows["pos_proj/kernel"].route == rows["time_embed/kernel"].route == "muon"


def test_raw_pos_param_of_the_tied_transformer_goes_to_adamw():
    class Raw(nnx.Module):
        def __init__(self, rngs):
            self.pos = nnx.Param(jnp.zeros((8, 16)))
            self.mlp = nnx.Linear(16, 16, rngs=rngs)

    labels = fo.muon_labels(nnx.state(Raw(nnx.Rngs(0)), nnx.Param))
    assert labels["pos"] == "adam" and labels["mlp"]["kernel"] == "muon"


# --------------------------------------------------------------------------------------------
# Vectors seen as matrices


class ViTStub(nnx.Module):
    def __init__(self, d: int = 16, *, rngs: nnx.Rngs):
        self.patch = nnx.Linear(12, d, rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, d)))
        self.gate = nnx.Param(jnp.zeros((d, 1)))
        self.row = nnx.Param(jnp.zeros((1, d)))
        self.fc = nnx.Linear(d, d, rngs=rngs)
        self.head = nnx.Linear(d, 10, rngs=rngs)


def test_a_side_of_one_goes_to_adamw():
    rows = _no_warnings(_rows, ViTStub(rngs=nnx.Rngs(0)))
    assert rows["cls_token"].route == "adam"
    assert rows["cls_token"].why == "name preset: matrix 1 × 16 has a side of 1"
    assert rows["gate"].why == "name preset: matrix 16 × 1 has a side of 1"
    assert rows["row"].route == "adam"
    assert rows["fc/kernel"].route == rows["patch/kernel"].route == "muon"
    # A user rule may still send a vector to Muon: the presets do not override rules.
    specs = fo.muon_specs(
        nnx.state(ViTStub(rngs=nnx.Rngs(0)), nnx.Param),
        labels=lambda n, s: "muon" if n == ("gate",) else None,
    )
    assert specs["gate"] == MatrixSpec((0,), (1,))


# --------------------------------------------------------------------------------------------
# Heads


class NamedHead(nnx.Module):
    def __init__(self, name: str, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(8, 16, rngs=rngs)
        self.fc2 = nnx.Linear(16, 16, rngs=rngs)
        setattr(self, name, nnx.Linear(16, 10, rngs=rngs))


@pytest.mark.parametrize(
    "name, why",
    [
        ("logits_proj", "name preset: head name 'logits_proj'"),
        ("to_logits", "name preset: head name 'to_logits'"),
        ("lm_head", "name preset: head name 'lm_head'"),
        ("cls_head", "name preset: head name 'cls_head'"),
        ("classifier", "name preset: head name 'classifier'"),
        ("out", "name preset: 'out' with no attention siblings → head"),
        ("fc_out", "name preset: 'fc_out' with no attention siblings → head"),
    ],
)
def test_head_spellings_go_to_adamw(name, why):
    rows = _no_warnings(_rows, NamedHead(name, rngs=nnx.Rngs(0)))
    assert (rows[f"{name}/kernel"].route, rows[f"{name}/kernel"].why) == ("adam", why)
    assert rows["fc1/kernel"].route == rows["fc2/kernel"].route == "muon"


class AttnModel(nnx.Module):
    """nnx.MultiHeadAttention (its own `out`), an MLP, and a top-level classifier `out`."""

    def __init__(self, *, rngs: nnx.Rngs, d: int = 16):
        self.multi_head_attention = nnx.MultiHeadAttention(
            num_heads=2, in_features=d, decode=False, rngs=rngs
        )
        self.fc = nnx.Linear(d, d, rngs=rngs)
        self.out = nnx.Linear(d, 10, rngs=rngs)


def test_attention_out_is_hidden_and_top_level_out_is_the_head():
    rows = _no_warnings(_rows, AttnModel(rngs=nnx.Rngs(0)))
    # `multi_head_attention` contains the word "head" in the middle: not a head name.
    assert rows["multi_head_attention/query/kernel"].route == "muon"
    assert rows["multi_head_attention/out/kernel"].route == "muon"
    assert rows["multi_head_attention/out/kernel"].why == "name preset: matrix (*in, out)"
    assert rows["out/kernel"].route == "adam"
    assert rows["fc/kernel"].route == "muon"


class MLPBlock(nnx.Module):
    def __init__(self, d: int, rngs: nnx.Rngs):
        self.fc = nnx.Linear(d, 2 * d, rngs=rngs)
        self.out = nnx.Linear(2 * d, d, rngs=rngs)


class BlockList(nnx.Module):
    def __init__(self, head: str | None, *, rngs: nnx.Rngs, d: int = 8):
        self.blocks = nnx.List([MLPBlock(d, rngs) for _ in range(2)])
        if head is not None:
            setattr(self, head, nnx.Linear(d, 3, rngs=rngs))


@pytest.mark.parametrize("head", [None, "out", "head"])
def test_out_inside_blocks_is_hidden(head):
    rows = _no_warnings(_rows, BlockList(head, rngs=nnx.Rngs(0)))
    for i in range(2):  # one `out` per block: none of them is the head
        assert rows[f"blocks/{i}/out/kernel"].route == "muon", head
    if head is not None:
        assert rows[f"{head}/kernel"].route == "adam"


def test_fc_out_of_a_gptj_mlp_is_hidden_when_a_head_exists():
    p = {
        "h": {
            "0": {
                "mlp": {
                    "fc_in": {"kernel": jnp.zeros((8, 32))},
                    "fc_out": {"kernel": jnp.zeros((32, 8))},
                }
            }
        },
        "lm_head": {"kernel": jnp.zeros((8, 50))},
    }
    labels = fo.muon_labels(p)
    assert labels["h"]["0"]["mlp"]["fc_out"]["kernel"] == "muon"
    assert labels["lm_head"]["kernel"] == "adam"
    # Per parameter, without the tree, `out` is never a head (what a Muon stage sees).
    assert fo.muon_specs({"out": jnp.zeros((8, 3))})["out"] is None  # tree of one: head
    routing = fo.Routing().normalized()
    assert resolve(("out",), (8, 3), routing) == MatrixSpec((0,), (1,))


# --------------------------------------------------------------------------------------------
# Layers stacked by nnx.vmap without stacked=


class Stacked(nnx.Module):
    """Three Linear layers and three attention layers made by nnx.vmap (leading axis 3)."""

    def __init__(self, *, rngs: nnx.Rngs, d: int = 16):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def linears(rngs):
            return nnx.Linear(d, d, rngs=rngs)

        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def attentions(rngs):
            return nnx.MultiHeadAttention(num_heads=2, in_features=d, decode=False, rngs=rngs)

        self.layers = linears(rngs)
        self.attn = attentions(rngs)
        self.head = nnx.Linear(d, 4, rngs=rngs)


def test_undeclared_stacks_warn_naming_the_parameter_and_the_fix():
    params = nnx.state(Stacked(rngs=nnx.Rngs(0)), nnx.Param)
    with pytest.warns(UserWarning, match="look like layers stacked") as record:
        rows = _rows(params)
    (message,) = [str(w.message) for w in record]
    assert "layers/kernel (3, 16, 16) → one 48 × 16 matrix" in message
    assert "attn/out/kernel (3, 2, 8, 16)" in message
    assert "stacked=('attn', 'layers')" in message and "fo.trace_routing" in message
    assert rows["layers/kernel"].why.endswith("looks stacked: declare stacked= (warned)")
    # A 4-D query/key/value kernel only makes sense stacked: treated as a stack, no warning.
    assert rows["attn/query/kernel"].matrix == "3 × 16 × 16"
    assert rows["attn/query/kernel"].why == (
        "name preset: matrix (in, heads, head_dim); 4-D 'query' kernel → stack axis 0"
    )
    assert "attn/query" not in message
    # Declared: one matrix per layer, no warning, the why column says so.
    rows = _no_warnings(_rows, params, stacked=("layers", "attn"))
    assert rows["layers/kernel"].matrix == "3 × 16 × 16"
    assert rows["layers/kernel"].why == (
        "name preset: matrix (in, out); stacked 'layers' → stack axis 0"
    )
    assert rows["attn/out/kernel"].matrix == "3 × 16 × 16"
    with pytest.warns(UserWarning, match="look like layers stacked"):
        fo.muon_labels(params)  # what fo.muon calls: the warning reaches its users too


def test_convolutions_and_linear_general_do_not_warn_when_recognisable():
    class Convs(nnx.Module):
        def __init__(self, rngs):
            self.stem = nnx.Conv(3, 8, kernel_size=(3,), rngs=rngs)  # 1-D bias of size out
            self.conv = nnx.Conv(8, 8, kernel_size=(3,), use_bias=False, rngs=rngs)
            self.head = nnx.Linear(8, 2, rngs=rngs)

    rows = _no_warnings(_rows, Convs(nnx.Rngs(0)))
    assert rows["stem/kernel"].matrix == "9 × 8" and rows["conv/kernel"].matrix == "24 × 8"
    with pytest.warns(UserWarning, match=r"proj/kernel \(3, 8, 8\)"):
        _rows({"proj": {"kernel": jnp.zeros((3, 8, 8))}})  # no bias, no conv name: ambiguous
    rule = lambda n, s: MatrixSpec((1,), (2,)) if n[0] == "proj" else None  # noqa: E731
    _no_warnings(_rows, {"proj": {"kernel": jnp.zeros((3, 8, 8))}}, labels=rule)


def test_flattening_a_stack_mis_scales_layers_and_declaring_it_fixes_it():
    """Per-layer update RMS: ≈ 0.2 each when stacked, far apart when flattened."""
    rng = np.random.default_rng(0)
    g = jnp.asarray(
        rng.standard_normal((3, 16, 16)) * np.array([0.1, 1.0, 10.0])[:, None, None], jnp.float32
    )
    params, grads = {"layers": {"kernel": jnp.zeros_like(g)}}, {"layers": {"kernel": g}}

    def layer_rms(**kw):
        tx = fo.muon(1.0, weight_decay=0.0, **kw)
        updates, _ = tx.update(grads, tx.init(params), params)
        return np.sqrt(np.mean(np.square(updates["layers"]["kernel"]), axis=(1, 2)))

    with pytest.warns(UserWarning, match="look like layers stacked"):
        flat = layer_rms()
    stacked = _no_warnings(layer_rms, stacked=("layers",))
    np.testing.assert_allclose(stacked, 0.2, rtol=0.1)
    assert flat.max() / flat.min() > 10, flat


# --------------------------------------------------------------------------------------------
# The why column


def test_why_column_of_presets_and_user_rules():
    p = {
        "embed": {"embedding": jnp.zeros((10, 4))},
        "wte": jnp.zeros((10, 4)),
        "mlp": {"kernel": jnp.zeros((4, 8)), "bias": jnp.zeros(8)},
        "temperature": jnp.zeros(()),
        "lm_head": {"kernel": jnp.zeros((8, 10))},
    }
    why = {k: r.why for k, r in _rows(p).items()}
    assert why == {
        "embed/embedding": "name preset: embedding name 'embed'",
        "wte": "name preset: embedding name 'wte'",
        "mlp/kernel": "name preset: matrix (in, out)",
        "mlp/bias": "name preset: bias/norm leaf",
        "temperature": "rank < 2",
        "lm_head/kernel": "name preset: head name 'lm_head'",
    }
    rule = lambda n, s: "adam" if n[0] == "mlp" else None  # noqa: E731
    why = {k: r.why for k, r in _rows(p, labels=rule).items()}
    assert why["mlp/kernel"] == why["mlp/bias"] == "user rule"
    assert why["wte"] == "name preset: embedding name 'wte'"  # deferred: the preset's reason

    class Explained:
        def __call__(self, names, shape):
            return "muon" if names == ("wte",) else None

        def reason(self, names):
            return "chosen" if names == ("wte",) else "no opinion"

    rows = _rows(p, labels=Explained())
    assert (rows["wte"].route, rows["wte"].why) == ("muon", "chosen")
    assert rows["mlp/kernel"].why == "name preset: matrix (in, out) (rule: no opinion)"


def test_print_shows_one_table_with_the_why_column(capsys):
    params = nnx.state(AttnModel(rngs=nnx.Rngs(0)), nnx.Param)
    table = fo.routing_table(params)
    print(table)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["path", "shape", "route", "matrix", "scale", "why"]
    assert len(lines) == 1 + len(jax.tree.leaves(params))
    assert out == str(table) + "\n" and "RouteRow(" not in out
    row = next(line for line in lines if line.startswith("out/kernel"))
    assert row.endswith("name preset: 'out' with no attention siblings → head")
    html = table._repr_html_()
    assert "<th>why</th>" in html and "no attention siblings → head" in html
    assert fo.RouteRow("a", (1,), "adam", "-", "-").why == ""  # old 5-field rows still build


def test_four_d_query_kernel_is_orthogonalized_per_layer_by_fo_muon():
    """The Muon stage sees the same stack the labels do (it routes each leaf on its own)."""
    rng = np.random.default_rng(1)
    scales = np.array([0.1, 1.0, 10.0])[:, None, None, None]
    g = jnp.asarray(rng.standard_normal((3, 16, 2, 8)) * scales, jnp.float32)
    params = {"attn": {"query": {"kernel": jnp.zeros_like(g)}}}
    grads = {"attn": {"query": {"kernel": g}}}
    tx = fo.muon(1.0, weight_decay=0.0)
    updates, _ = _no_warnings(tx.update, grads, tx.init(params), params)
    rms = np.sqrt(np.mean(np.square(updates["attn"]["query"]["kernel"]), axis=(1, 2, 3)))
    np.testing.assert_allclose(rms, 0.2, rtol=0.1)


def test_routing_table_of_a_whole_nnx_state_marks_batch_statistics_as_not_parameters():
    """A user passing nnx.state(model) without an nnx.Param filter: BatchNorm's mean/var
    are no optimizer's business, and the table says so instead of routing them to AdamW."""
    model = nnx.Sequential(
        nnx.Conv(1, 4, (3,), rngs=nnx.Rngs(0)), nnx.BatchNorm(4, rngs=nnx.Rngs(0))
    )
    rows = {r.path: r for r in fo.routing_table(nnx.state(model))}
    for stat in ("layers/1/mean", "layers/1/var"):
        assert rows[stat].route == "-"
        assert "not a parameter (nnx.BatchStat)" in rows[stat].why
    assert rows["layers/1/scale"].route == "adam"
    assert rows["layers/0/kernel"].route == "muon"
    params_only = {r.path for r in fo.routing_table(nnx.state(model, nnx.Param))}
    assert params_only == set(rows) - {"layers/1/mean", "layers/1/var"}
