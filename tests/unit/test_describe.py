"""fo.describe: printable, serializable, comparable descriptions of built chains, and the
benchmark specs' round trip spec -> build -> describe -> spec."""

from __future__ import annotations

import inspect
import json

import jax
import jax.numpy as jnp
import optax
import pytest

import filtered_optax as fo
from benchmarks import specs, suites
from benchmarks.specs import REGISTRY, build, parse_spec, spec_from_description

S = jax.ShapeDtypeStruct
PARAMS = {
    "embed": {"embedding": S((10, 4), jnp.float32)},
    "blocks": {"mlp": {"kernel": S((4, 8), jnp.float32), "bias": S((8,), jnp.float32)}},
    "head": {"kernel": S((8, 10), jnp.float32)},
}


def _muon_and_filtered_adamw() -> optax.GradientTransformation:
    return optax.partition(
        {
            "muon": optax.chain(
                fo.scale_by_muon(beta=0.9, mu_dtype=jnp.bfloat16),
                optax.add_decayed_weights(0.1),
                optax.scale_by_learning_rate(0.02),
            ),
            "adam": fo.filtered_adamw(1e-3, weight_decay=0.1, gamma=5.0, mu_dtype=jnp.bfloat16),
        },
        fo.muon_labels,
    )


# ----------------------------------------------------------------------------- describe


def test_partitioned_chain_names_stages_groups_params_and_dtypes() -> None:
    desc = fo.describe(_muon_and_filtered_adamw(), PARAMS)
    text = str(desc)
    for stage in (
        "optax.partition",
        "optax.chain",
        "fo.scale_by_muon",
        "optax.add_decayed_weights",
        "optax.scale",
        "fo.filtered_adamw",
        "fo.with_moments",
        "fo.kalman_filter",
        "fo.ema",
        "fo.normalize",
    ):
        assert stage in text, stage
    assert [label for label, _ in desc.children] == ["muon", "adam"]
    groups = dict(desc.children)
    assert groups["muon"].params == ("blocks/mlp/kernel",)
    assert groups["adam"].params == ("blocks/mlp/bias", "embed/embedding", "head/kernel")
    assert "muon: optax.chain\n    params: blocks/mlp/kernel" in text
    assert "adam: fo.filtered_adamw(" in text
    # Buffers and their dtypes, as jax.eval_shape(init) gives them.
    assert dict(desc.find("fo.scale_by_muon").state)["mu"] == "bfloat16[4,8]"
    moments = dict(desc.find("fo.with_moments").state)
    assert moments["count"] == "int32[]"
    assert moments["mu"].startswith("bfloat16, 3 arrays")
    assert moments["nu"].startswith("float32, 3 arrays")
    assert dict(desc.find("fo.with_moments").hyperparams)["mu_dtype"] == "bfloat16"
    assert dict(desc.find("fo.kalman_filter").hyperparams)["gamma"] == 5.0
    assert dict(desc.find("fo.scale_by_muon").hyperparams)["beta"] == 0.9
    assert "state: count int32[]; mu bfloat16, 3 arrays, 128 values; nu float32" in text


def test_fo_muon_groups_follow_its_labels() -> None:
    desc = fo.describe(fo.muon(1e-3, mu_dtype="bfloat16"), PARAMS)
    labels = fo.muon_labels(PARAMS)
    partition = desc.find("optax.partition")
    assert partition is not None
    for group, branch in partition.children:
        want = tuple(
            "/".join(fo.path_names(path))
            for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]
            if label == group
        )
        assert branch.params == want and want
    assert dict(desc.find("fo.scale_by_muon").state)["mu"].startswith("bfloat16")
    assert dict(desc.find("fo.adamw").hyperparams)["b2"] == 0.95  # Moonshot's AdamW side


def test_without_params_there_are_no_groups_or_buffers() -> None:
    desc = fo.describe(_muon_and_filtered_adamw())
    assert all(d.params is None and not d.state for d in desc.walk())
    assert "params:" not in str(desc) and "state:" not in str(desc)


def test_to_dict_is_json_and_round_trips() -> None:
    desc = fo.describe(
        optax.chain(optax.clip(0.5), fo.filtered_adam(1e-3, gamma=float("inf"))), PARAMS
    )
    text = json.dumps(desc.to_dict(), allow_nan=False)  # strict JSON: no Infinity literal
    assert '"gamma": "inf"' in text
    back = fo.Description.from_dict(json.loads(text))
    assert back == desc
    assert str(back) == str(desc)
    assert "gamma=inf" in str(desc)


def test_equal_optimizers_equal_descriptions() -> None:
    def make(**kw):
        return fo.describe(fo.filtered_adamw(1e-3, **kw), PARAMS)

    assert make(weight_decay=0.1) == make(weight_decay=0.1)
    assert make(weight_decay=0.1) != make(weight_decay=0.2)
    assert make(gamma=5.0) != make()
    assert make(mu_dtype=jnp.bfloat16) != make()
    assert fo.describe(_muon_and_filtered_adamw()) == fo.describe(_muon_and_filtered_adamw())
    assert fo.describe(optax.adam(1e-3)) != fo.describe(optax.adam(1e-3, b1=0.8))
    # Passing a default explicitly builds the same optimizer.
    assert fo.describe(fo.adam(1e-3)) == fo.describe(fo.adam(1e-3, b1=0.9))


def test_plain_optax_transforms_show_their_hyperparameters() -> None:
    desc = fo.describe(optax.adam(3e-4, b1=0.8, eps=1e-6))
    assert desc.name == "optax.chain"
    adam = desc.find("optax.scale_by_adam")
    assert dict(adam.hyperparams) == {
        "b1": 0.8,
        "b2": 0.999,
        "eps": 1e-6,
        "eps_root": 0.0,
        "mu_dtype": None,
        "nesterov": False,
    }
    assert dict(desc.find("optax.scale").hyperparams) == {"step_size": -3e-4}

    desc = fo.describe(optax.chain(optax.clip_by_global_norm(2.0), optax.adam(1e-3)), PARAMS)
    first, second = (c for _, c in desc.children)
    assert first.name == "optax.clip_by_global_norm"
    assert dict(first.hyperparams) == {"max_norm": 2.0}
    assert dict(second.find("optax.scale_by_adam").state)["nu"].startswith("float32, 4 arrays")
    assert str(desc).splitlines()[:2] == [
        "optax.chain",
        "  optax.clip_by_global_norm(max_norm=2.0)",
    ]


def test_wrappers_and_schedules() -> None:
    sched = optax.linear_schedule(0.0, 1e-3, 100)
    tx = optax.inject_hyperparams(fo.filtered_adam)(learning_rate=sched, gamma=5.0)
    desc = fo.describe(tx, PARAMS)
    hp = dict(desc.hyperparams)
    assert desc.name == "optax.inject_hyperparams" and hp["gamma"] == 5.0
    assert hp["learning_rate"].startswith("optax.polynomial_schedule(init_value=0.0")
    label, inner = desc.children[0]
    assert label == "at step 0" and inner.name == "fo.filtered_adam"
    assert dict(inner.hyperparams)["gamma"] == 5.0
    # The recording decorator keeps the signature inject_hyperparams reads.
    assert "gamma" in tx.init(PARAMS_ZEROS).hyperparams
    assert "gamma" in inspect.signature(fo.filtered_adam).parameters

    masked = fo.describe(
        optax.adamw(1e-3, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)), PARAMS
    )
    decay = masked.find("optax.masked").children[0][1]
    assert decay.name == "optax.add_decayed_weights"
    assert decay.params == ("blocks/mlp/kernel", "embed/embedding", "head/kernel")
    multi = fo.describe(optax.MultiSteps(optax.sgd(0.1), 4).gradient_transformation())
    assert multi.name == "optax.MultiSteps" and multi.find("optax.scale") is not None


PARAMS_ZEROS = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), PARAMS)


def _user_transform(factor: float, name: str = "mine") -> optax.GradientTransformation:
    """A transformation written outside optax and this package."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: factor * g, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def _module_level_init(params):
    return optax.EmptyState()


def test_unknown_transforms_are_read_from_closures_or_named() -> None:
    class Opaque:
        def __call__(self, *args):
            return optax.EmptyState()

    desc = fo.describe(
        optax.chain(
            _user_transform(2.0),
            optax.GradientTransformation(_module_level_init, Opaque()),
            optax.GradientTransformation(Opaque(), Opaque()),
        ),
        PARAMS,
    )
    first, second, third = (c for _, c in desc.children)
    assert first.name == "_user_transform" and dict(first.hyperparams) == {"factor": 2.0}
    assert second.name == "_module_level_init" and not second.hyperparams
    assert third.name.endswith("Opaque") and not third.children

    def failing_labels(params):
        raise RuntimeError("no labels for you")

    desc = fo.describe(optax.partition({"a": optax.sgd(0.1)}, failing_labels), PARAMS)
    assert desc.children[0][0] == "a" and desc.children[0][1].params is None


# ----------------------------------------------------------------------------- spec round trip


def _non_default(key: str, default):
    """Some valid value other than ``default`` for registry argument ``key``."""
    if default is None:
        return {"momentum": 0.9, "mu_dtype": "bfloat16", "nu_dtype": "bfloat16"}[key]
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    return default / 2 if default else 0.1


# A non-default argument for the bases whose arguments are the target's own (params=None).
FREE_FORM = {
    "muon": [
        "muon(beta=0.9)",
        "muon(weight_decay=0.0, scale='keller')",
        "muon(beta=0.95)",
    ],  # a default spelled out stays in the canonical text
    "staged": [
        "staged(filter='spam', threshold=5000)",
        "staged(filter='zscore', gamma=3.0)",
        "staged(moments='belief', b1=0.8)",
        "staged(filter='identity', eps=1e-6)",
        "staged(filter='soft_clip', warmup=5)",
        "staged(b2=0.999)",
    ],
    "fo_adam": ["fo_adam(b1=0.8)", "fo_adam(nesterov=True)", "fo_adam(b1=0.9)"],
    "fo_sgd": ["fo_sgd(momentum=0.9)", "fo_sgd(momentum=0.9, nesterov=True)"],
}
DTYPE_SPECS = [
    "filtered_adam(mu_dtype='bfloat16', nu_dtype='bfloat16')",
    "filtered_adamw(mu_dtype='bfloat16')",
    "fo_adam(mu_dtype='bfloat16', nu_dtype='bfloat16')",
    "staged(mu_dtype='bfloat16', nu_dtype='float32')",
]


def _round_trip_specs() -> list[str]:
    out = []
    for name in specs.valid_names("base"):
        entry = REGISTRY[name]
        out.append(name)
        if entry.params is None:
            out += FREE_FORM[name]
        else:
            out += [
                f"{name}({k}={v!r})"
                for k, v in ((k, _non_default(k, d)) for k, d in entry.params.items())
            ]
        out += [f"{name}+{m}" for m in ("clip(0.5)", "clip_value(0.1)", "clip(2)+clip_value(1.0)")]
    out += DTYPE_SPECS
    for suite in suites.SUITES.values():
        out += list(suite.net_specs + suite.quad_specs)
    return sorted(set(out))


def test_every_free_form_base_has_round_trip_cases() -> None:
    assert {n for n, e in REGISTRY.items() if e.kind == "base" and e.params is None} == set(
        FREE_FORM
    )


@pytest.mark.parametrize("text", _round_trip_specs())
def test_spec_round_trips_through_describe(text: str) -> None:
    why = specs.check_available(text)
    if why is not None:
        pytest.skip(f"{text} cannot be built here: {why}")
    want = parse_spec(text).text
    for stats in (True, False):  # stats is a logging switch, not part of the spec
        assert spec_from_description(fo.describe(build(text, 1e-3, stats=stats))) == want


def test_round_trip_with_traced_and_scheduled_learning_rates() -> None:
    got = []

    def trace(lr):
        for text in ("filtered_adam(eta=0.9)+clip(1.0)", "adam(b1=0.8)"):
            got.append(spec_from_description(fo.describe(build(text, lr))))
        return lr

    jax.jit(trace)(1e-3)
    assert got == ["filtered_adam(eta=0.9)+clip(max_norm=1.0)", "adam(b1=0.8)"]
    sched = optax.cosine_decay_schedule(1e-3, 100)
    assert spec_from_description(fo.describe(build("rmsprop(decay=0.8)", sched))) == (
        "rmsprop(decay=0.8)"
    )


def test_dtype_specs_build_bfloat16_moments() -> None:
    for text in DTYPE_SPECS[:1] + DTYPE_SPECS[-1:]:
        state = dict(fo.describe(build(text, 1e-3), PARAMS).find("fo.with_moments").state)
        assert state["mu"].startswith("bfloat16"), text
    state = jax.eval_shape(build(DTYPE_SPECS[0], 1e-3).init, PARAMS)
    nu_dtypes = {x.dtype for x in jax.tree.leaves(optax.tree.get(state, "nu"))}
    assert nu_dtypes == {jnp.dtype(jnp.bfloat16)}


def test_spelled_out_structural_defaults_of_staged_come_back_short() -> None:
    # staged(filter='kalman') and staged build the same chain; the description cannot tell
    # which text was used, so it gives the shorter one.
    assert fo.describe(build("staged(filter='kalman')", 1e-3)) == fo.describe(build("staged", 1e-3))
    assert spec_from_description(fo.describe(build("staged(filter='kalman')", 1e-3))) == "staged"


def test_chains_no_spec_builds_are_refused() -> None:
    hand_made = optax.chain(optax.scale_by_adam(eps_root=1e-3), optax.scale(-1e-3))
    with pytest.raises(ValueError, match="no optimizer spec"):
        spec_from_description(fo.describe(hand_made))
    with pytest.raises(ValueError, match="no optimizer spec"):
        spec_from_description(fo.describe(fo.rmsprop(1e-3)))  # no registry entry for it
