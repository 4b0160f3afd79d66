"""Regression tests for what a new user ran into (issue #17, items 2, 4, 5 and 8)."""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import filtered_optax as fo

COMPLEX = {"w": jnp.ones((2, 2), jnp.complex64) * (1 + 2j)}


# --------------------------------------------------------------------------------------------
# Item 2: complex parameters under optax.inject_hyperparams


INJECTED = {
    "adam": (fo.adam, optax.adam, {}),
    "adamw": (fo.adamw, optax.adamw, {}),
    "sgd": (fo.sgd, optax.sgd, {"momentum": 0.9}),
    "rmsprop": (fo.rmsprop, optax.rmsprop, {}),
    "rmsprop_centered": (fo.rmsprop, optax.rmsprop, {"centered": True}),
    "adabelief": (fo.adabelief, optax.adabelief, {}),
}


@pytest.mark.parametrize("name", sorted(INJECTED))
def test_complex_parameters_under_inject_hyperparams_equal_optax(name):
    ours, theirs, kwargs = INJECTED[name]
    results = []
    for factory in (ours, theirs):
        tx = optax.inject_hyperparams(factory)(learning_rate=1e-2, **kwargs)
        params, state = COMPLEX, tx.init(COMPLEX)
        for t in range(3):
            grads = jax.tree.map(lambda p, t=t: p * (0.5 - 1j * t), params)
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
        results.append(params["w"])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5)
    assert not np.allclose(results[0], COMPLEX["w"])


@pytest.mark.parametrize("make", [fo.filtered_adam, fo.filtered_adamw])
def test_filtered_adam_with_complex_parameters_under_inject_hyperparams(make):
    tx = optax.inject_hyperparams(make)(learning_rate=1e-2, eta=0.5, gamma=3.0, warmup=1)
    state = tx.init(COMPLEX)
    params = COMPLEX
    for t in range(5):
        updates, state = jax.jit(tx.update)({"w": params["w"] * (1 - 1j * t)}, state, params)
        params = optax.apply_updates(params, updates)
    assert params["w"].dtype == jnp.complex64 and bool(jnp.all(jnp.isfinite(params["w"])))


def test_a_complex_hyperparameter_with_an_imaginary_part_is_a_type_error():
    with pytest.raises(TypeError, match="b1.*imaginary"):
        fo.adam(1e-3, b1=jnp.complex64(0.9 + 0.1j))
    fo.adam(1e-3, b1=jnp.complex64(0.9))  # what inject_hyperparams passes: accepted


# --------------------------------------------------------------------------------------------
# Item 4: wrong-typed hyperparameters fail at construction, naming the argument

ALIASES = {
    "filtered_adam": fo.filtered_adam,
    "filtered_adamw": fo.filtered_adamw,
    "adam": fo.adam,
    "adamw": fo.adamw,
    "rmsprop": fo.rmsprop,
    "adabelief": fo.adabelief,
    "sgd": lambda learning_rate=1e-3, **kw: fo.sgd(learning_rate, **{"momentum": 0.9, **kw}),
}
STAGES = {
    "kalman_filter": fo.kalman_filter,
    "spam_filter": fo.spam_filter,
    "zscore_filter": fo.zscore_filter,
    "soft_clip_filter": fo.soft_clip_filter,
    "ema": fo.ema,
    "belief": fo.belief,
    "second_moment": fo.second_moment,
    "heavy_ball": fo.heavy_ball,
    "normalize": fo.normalize,
    "rms_normalize": fo.rms_normalize,
}
WRONG = ["0.9", [0.9], np.array([0.9, 0.9]), None, True, jnp.ones(2)]


def _numeric_args(factory) -> list[str]:
    """The arguments of ``factory`` whose default is a number (or the learning rate)."""
    params = inspect.signature(factory).parameters
    return [
        n
        for n, p in params.items()
        if n == "learning_rate"
        or (isinstance(p.default, (int, float)) and not isinstance(p.default, bool))
    ]


def _cases():
    out = []
    for label, factory in {**ALIASES, **STAGES}.items():
        target = fo.sgd if label == "sgd" else factory
        for arg in _numeric_args(target):
            if label == "sgd" and arg == "momentum":
                continue  # sgd's momentum defaults to None (plain SGD): tested below
            out += [(label, arg, bad) for bad in WRONG]
    return out


CASES = _cases()


@pytest.mark.parametrize(
    "label,arg,bad", CASES, ids=[f"{c[0]}-{c[1]}-{type(c[2]).__name__}" for c in CASES]
)
def test_wrong_typed_hyperparameter_is_a_type_error_naming_it(label, arg, bad):
    factory = {**ALIASES, **STAGES}[label]
    kwargs = {"learning_rate": 1e-3} if label in ALIASES else {}
    kwargs[arg] = bad
    with pytest.raises(TypeError, match=arg) as info:
        factory(**kwargs)
    assert "must be" in str(info.value) and "real number" in str(info.value)


def test_the_cases_cover_every_numeric_argument():
    args = {(label, arg) for label, arg, _ in CASES}
    assert ("filtered_adam", "warmup") in args and ("filtered_adam", "eta") in args
    assert ("rmsprop", "initial_scale") in args and ("belief", "eps_root") in args
    assert len(args) >= 40


@pytest.mark.parametrize("make", [fo.sgd, fo.rmsprop])
def test_momentum_none_is_allowed_but_a_string_is_not(make):
    make(1e-3, momentum=None)
    with pytest.raises(TypeError, match="momentum"):
        make(1e-3, momentum="0.9")


def test_the_issues_examples():
    for kwargs in [
        dict(learning_rate="1e-3"),
        dict(learning_rate=1e-3, b1="0.9"),
        dict(learning_rate=1e-3, eta="0.5"),
        dict(learning_rate=1e-3, warmup="20"),
        dict(learning_rate=[1e-3]),
        dict(learning_rate=jnp.full((2,), 1e-3)),
        dict(learning_rate=1e-3, gamma=None),
    ]:
        (arg,) = [k for k, v in kwargs.items() if not isinstance(v, float)]
        with pytest.raises(TypeError, match=arg):
            fo.filtered_adam(**kwargs)


def test_a_schedule_is_accepted_only_where_optax_takes_one():
    sched = optax.linear_schedule(1e-3, 0.0, 100)
    fo.filtered_adam(sched)
    fo.adamw(1e-3, weight_decay=sched)  # optax.adamw takes a weight-decay schedule too
    with pytest.raises(TypeError, match=r"gamma.*inject_hyperparams"):
        fo.filtered_adam(1e-3, gamma=sched)


def test_scalars_arrays_and_tracers_stay_accepted():
    fo.filtered_adam(np.float32(1e-3), b1=jnp.asarray(0.9), gamma=np.array(5.0), warmup=np.int64(3))

    @jax.jit
    def step(lr, gamma, warmup):
        tx = fo.filtered_adam(lr, gamma=gamma, warmup=warmup)
        p = {"w": jnp.ones(3)}
        return tx.update(p, tx.init(p), p)[0]["w"]

    assert step(1e-3, 5.0, 3).shape == (3,)


@pytest.mark.parametrize("arg", ["nesterov", "stats", "eps_in_sqrt", "centered"])
def test_switches_must_be_bools(arg):
    factory = {
        "nesterov": fo.adam,
        "stats": fo.filtered_adam,
        "eps_in_sqrt": fo.rmsprop,
        "centered": fo.rmsprop,
    }[arg]
    with pytest.raises(TypeError, match=arg):
        factory(1e-3, **{arg: "False"})


SLOTS = [
    (dict(filter=fo.ema()), "filter", "moment rule"),
    (dict(scale=fo.ema()), "scale", "moment rule"),
    (dict(filter=fo.normalize()), "filter", "scale stage"),
    (dict(moments=fo.kalman_filter()), "moments", "filter stage"),
    (dict(scale=fo.kalman_filter(gamma=5.0)), "scale", "filter stage"),
    (dict(filter=fo.adam(1e-3)), "filter", "complete optimizer"),
]


@pytest.mark.parametrize("kwargs,slot,kind", SLOTS, ids=[f"{s}-{k}" for _, s, k in SLOTS])
def test_a_stage_in_the_wrong_slot_names_the_slot_and_its_kind(kwargs, slot, kind):
    with pytest.raises(TypeError) as info:
        fo.with_moments(**kwargs)
    text = str(info.value)
    assert text.startswith(f"{slot}= of fo.with_moments expects") and kind in text
    assert "put it inside fo.with_moments" not in text.lower()


def test_custom_stages_and_rules_are_still_accepted():
    custom_filter = optax.GradientTransformationExtraArgs(
        lambda p: optax.EmptyState(), lambda u, s, p=None, **kw: (u, s)
    )
    rule = fo.ema(0.8, 0.9)
    custom_rule = fo.MomentRule(rule.init, rule.update, rule.b1, rule.b2)
    tx = fo.with_moments(filter=custom_filter, moments=custom_rule)
    params = {"w": jnp.ones(2)}
    tx.update(params, tx.init(params), params)


# --------------------------------------------------------------------------------------------
# Item 5: one way to turn the filter off


GAMMA_OFF = "use gamma=float('inf') to turn the spike clip off (and eta=1.0 for no smoothing)"


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: fo.filtered_adam(1e-3, **kw),
        lambda **kw: fo.filtered_adamw(1e-3, **kw),
        fo.kalman_filter,
    ],
)
def test_gamma_none_says_how_to_turn_the_filter_off(make):
    with pytest.raises(TypeError, match="gamma") as info:
        make(gamma=None)
    assert GAMMA_OFF in str(info.value)


@pytest.mark.parametrize("make", [fo.zscore_filter, fo.soft_clip_filter])
def test_gamma_none_in_the_other_clips_says_so_too(make):
    with pytest.raises(TypeError, match=r"use gamma=float\('inf'\) to turn the spike clip off"):
        make(gamma=None)


@pytest.mark.parametrize(
    "make,ref", [(fo.filtered_adam, optax.adam), (fo.filtered_adamw, optax.adamw)]
)
def test_gamma_inf_eta_one_is_the_unfiltered_optimizer(make, ref):
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    txs = [make(1e-2, gamma=math.inf, eta=1.0, warmup=0), ref(1e-2)]
    out = []
    for tx in txs:
        p, s = params, tx.init(params)
        for t in range(40):
            g = {"w": p["w"] * (1.0 + (1e4 if t == 30 else 0.0))}  # a spike nothing clips
            u, s = tx.update(g, s, p)
            p = optax.apply_updates(p, u)
        out.append(p["w"])
    np.testing.assert_array_equal(out[0], out[1])


# --------------------------------------------------------------------------------------------
# Item 8: drop-in names for optax users

OPTAX_TWINS = {
    "adam": (fo.adam, optax.adam),
    "adamw": (fo.adamw, optax.adamw),
    "sgd": (fo.sgd, optax.sgd),
    "rmsprop": (fo.rmsprop, optax.rmsprop),
    "adabelief": (fo.adabelief, optax.adabelief),
}
# Keywords of optax's that ours reject, each with the name of our equivalent (none today).
REJECTED: dict[tuple[str, str], str] = {}
# A non-default value for every optax keyword, and what else it needs to matter.
NON_DEFAULT = {
    "b1": 0.8,
    "b2": 0.99,
    "eps": 1e-3,
    "eps_root": 1e-4,
    "mu_dtype": jnp.bfloat16,
    "nesterov": True,
    "weight_decay": 0.3,
    "mask": lambda p: {"w": True, "b": False},
    "momentum": 0.5,
    "accumulator_dtype": jnp.bfloat16,
    "decay": 0.8,
    "initial_scale": 0.1,
    "eps_in_sqrt": False,
    "centered": True,
    "bias_correction": True,
}
NEEDS = {
    ("sgd", "nesterov"): {"momentum": 0.5},
    ("rmsprop", "nesterov"): {"momentum": 0.5},
    ("sgd", "accumulator_dtype"): {"momentum": 0.5},
    ("rmsprop", "eps_in_sqrt"): {"eps": 0.1},
}


def _optax_keywords():
    return [
        (name, kw)
        for name, (_, theirs) in OPTAX_TWINS.items()
        for kw in inspect.signature(theirs).parameters
        if kw != "learning_rate"
    ]


def test_every_optax_keyword_has_a_value_to_try():
    assert {kw for _, kw in _optax_keywords()} <= set(NON_DEFAULT)


@pytest.mark.parametrize("name,keyword", _optax_keywords())
def test_optax_keyword_is_accepted_with_optax_meaning(name, keyword):
    ours, theirs = OPTAX_TWINS[name]
    if (name, keyword) in REJECTED:
        with pytest.raises(TypeError, match=REJECTED[(name, keyword)]):
            ours(1e-2, **{keyword: NON_DEFAULT[keyword]})
        return
    mine = inspect.signature(ours).parameters
    other = inspect.signature(theirs).parameters
    assert keyword in mine
    assert mine[keyword].kind == other[keyword].kind
    assert mine[keyword].default == other[keyword].default
    if other[keyword].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
        assert list(mine).index(keyword) == list(other).index(keyword)  # same position
    # ... and it means the same: a few steps agree with optax's, and differ from the default.
    needs = NEEDS.get((name, keyword), {})
    kwargs = {**needs, keyword: NON_DEFAULT[keyword]}
    params = {"w": jnp.linspace(0.5, 2.0, 4), "b": jnp.full((3,), -1.0)}
    runs = {}
    for label, tx in [
        ("ours", ours(1e-2, **kwargs)),
        ("optax", theirs(1e-2, **kwargs)),
        ("default", theirs(1e-2, **needs)),
    ]:
        p, s = params, tx.init(params)
        for t in range(4):
            u, s = tx.update(jax.tree.map(lambda x, t=t: x * (1.0 + t), p), s, p)
            p = optax.apply_updates(p, u)
        runs[label] = p
    for a, b in zip(jax.tree.leaves(runs["ours"]), jax.tree.leaves(runs["optax"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    differs = any(
        not np.allclose(a, b, rtol=1e-6, atol=0)
        for a, b in zip(jax.tree.leaves(runs["ours"]), jax.tree.leaves(runs["default"]))
    )
    dtype_only = keyword in ("mu_dtype", "accumulator_dtype")
    assert differs or dtype_only


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64, None])
def test_sgd_accumulator_dtype_is_optaxs(dtype):
    ours = fo.sgd(0.1, momentum=0.9, accumulator_dtype=dtype).init(jnp.zeros(2))
    theirs = optax.sgd(0.1, momentum=0.9, accumulator_dtype=dtype).init(jnp.zeros(2))
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)  # the same state layout
    assert optax.tree.get(ours, "trace").dtype == optax.tree.get(theirs, "trace").dtype
    with pytest.raises(TypeError, match="accumulator_dtype and mu_dtype"):
        fo.sgd(0.1, momentum=0.9, accumulator_dtype=jnp.float32, mu_dtype=jnp.float32)
