"""Regression tests for what a new user ran into with Muon (issue #17, items 1, 4, 5, 8)."""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import filtered_optax as fo
from filtered_optax._filters import GAMMA_OFF_HINT

PARAMS = {"w": jnp.ones((4, 8)), "b": jnp.ones((8,))}


def _run(tx, params, grads, *, jit=True):
    state = tx.init(params)
    step = jax.jit(tx.update) if jit else tx.update
    for g in grads:
        u, state = step(g, state, params)
        params = optax.apply_updates(params, u)
    return params, state


def _grads(params, n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), params)
        for _ in range(n)
    ]


# --------------------------------------------------------------------------------------------
# Item 1: gradient shapes are checked, on both sides, naming the leaf

BAD_GRADIENTS = [
    ("w", (1, 8)),  # broadcastable to the Muon matrix
    ("w", (8, 4)),  # the Muon matrix transposed
    ("b", (1,)),  # broadcastable to the AdamW vector
    ("b", (1, 8)),  # a matrix where a vector was: the routing would send it to Muon
]


@pytest.mark.parametrize("leaf,shape", BAD_GRADIENTS, ids=[f"{k}{s}" for k, s in BAD_GRADIENTS])
@pytest.mark.parametrize("with_params", [True, False])
def test_a_gradient_of_another_shape_is_a_value_error_naming_the_leaf(leaf, shape, with_params):
    tx = fo.muon(1e-3)
    grads = {**PARAMS, leaf: jnp.ones(shape)}
    with pytest.raises(ValueError, match=rf"\['{leaf}'\] has shape \({shape[0]},"):
        tx.update(grads, tx.init(PARAMS), PARAMS if with_params else None)


def test_the_issues_example():
    tx = fo.muon(1e-3)
    p = {"w": jnp.ones((4, 8))}
    with pytest.raises(ValueError, match=r"\['w'\]"):
        tx.update({"w": jnp.ones((1, 8))}, tx.init(p), p)


def test_shapes_are_checked_under_jit_inject_hyperparams_and_alone():
    tx = optax.inject_hyperparams(fo.muon)(learning_rate=1e-3)
    with pytest.raises(ValueError, match=r"\['w'\]"):
        jax.jit(tx.update)({**PARAMS, "w": jnp.ones((8, 4))}, tx.init(PARAMS), PARAMS)
    alone = fo.scale_by_muon()
    p = {"w": jnp.ones((4, 8))}
    with pytest.raises(ValueError, match=r"\['w'\]"):
        alone.update({"w": jnp.ones((8, 4))}, alone.init(p))


def test_inside_an_outer_mask_the_check_skips_masked_leaves_only():
    tx = optax.masked(fo.muon(1e-3), {"w": True, "b": False})
    state = tx.init(PARAMS)
    tx.update(PARAMS, state, PARAMS)  # the masked-out leaf reaches fo.muon as a MaskedNode
    with pytest.raises(ValueError, match=r"\['w'\]"):
        tx.update({**PARAMS, "w": jnp.ones((8, 4))}, state, PARAMS)


def test_a_missing_leaf_is_a_value_error():
    tx = fo.muon(1e-3)
    with pytest.raises(ValueError, match="structure"):
        tx.update({"w": jnp.ones((4, 8))}, tx.init(PARAMS), PARAMS)


def test_matching_gradients_still_train():
    p, _ = _run(fo.muon(1e-2), PARAMS, _grads(PARAMS, 3))
    assert all(not np.allclose(p[k], PARAMS[k]) for k in PARAMS)


# --------------------------------------------------------------------------------------------
# Item 4: wrong-typed arguments are a TypeError at construction, naming the argument

NUMBER = "0.9"  # a string where a number belongs
WRONG = {
    **{
        n: NUMBER
        for n in (
            "learning_rate beta weight_decay eps rms adam_learning_rate adam_b1 adam_b2 adam_eps "
            "adam_weight_decay adam_eps_root ns_steps filter_gamma filter_eta filter_b2 "
            "filter_warmup filter_kappa"
        ).split()
    },
    **{n: "yes" for n in "nesterov bias_correction per_head stats batch_same_shape".split()},
    "adaptive": "no",
    "coefficients": 5,
    "ns_coeffs": 5,
    "scale": [1.0],
    "compute_dtype": 5,
    "mu_dtype": 5,
    "labels": 3,
    "dimension_numbers": 3,
    "stacked": 3,
    "head_names": "lm_head",  # a bare name, where a tuple of names belongs
    "embed_names": 3,
    "weight_decay_mask": "all",
    "preconditioning": 5,
    "muon_weight_dimension_numbers": 3,
    "consistent_rms": "0.2",
    # Not (yet) an argument here: the distributed Newton-Schulz keyword, wrong-typed.
    "ns_split_axes": 3.5,
}
FACTORIES = {
    "muon": fo.muon,
    "scale_by_muon": fo.scale_by_muon,
    "orthogonal_update": fo.orthogonal_update,
}
CASES = [(f, a) for f, make in FACTORIES.items() for a in inspect.signature(make).parameters]


def test_every_argument_has_a_wrong_value_to_try():
    assert {a for _, a in CASES} <= set(WRONG), {a for _, a in CASES} - set(WRONG)


@pytest.mark.parametrize("factory,arg", CASES, ids=[f"{f}-{a}" for f, a in CASES])
def test_wrong_typed_argument_is_a_type_error_naming_it(factory, arg):
    kwargs = {"learning_rate": 1e-3} if factory == "muon" else {}
    kwargs[arg] = WRONG[arg]
    with pytest.raises(TypeError, match=arg):
        FACTORIES[factory](**kwargs)


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        (dict(learning_rate="1e-3"), "learning_rate"),
        (dict(learning_rate=1e-3, beta="0.9"), "beta"),
        (dict(learning_rate=1e-3, stacked=3), "stacked"),
        (dict(learning_rate=1e-3, per_head="yes"), "per_head"),
        (dict(learning_rate=1e-3, coefficients=5), "coefficients"),
        (dict(learning_rate=1e-3, adam_b1="0.9"), "adam_b1"),
        (dict(learning_rate=1e-3, weight_decay=[0.1]), "weight_decay"),
    ],
)
def test_the_issues_examples_say_what_is_allowed(kwargs, arg):
    with pytest.raises(TypeError, match=arg) as info:
        fo.muon(**kwargs)
    assert "must be" in str(info.value)


def test_scalars_arrays_tracers_and_schedules_stay_accepted():
    sched = optax.linear_schedule(1e-2, 0.0, 10)
    fo.muon(sched, adam_learning_rate=sched)
    fo.muon(
        np.float32(1e-3),
        beta=jnp.asarray(0.9),
        weight_decay=np.array(0.1),
        filter_gamma=np.float64(5.0),
        filter_warmup=np.int64(2),
        ns_steps=np.int32(3),
        stacked="layers",
        coefficients=[(3.4445, -4.775, 2.0315)],
        batch_same_shape=None,
    )

    @jax.jit
    def step(lr, beta, gamma):
        tx = fo.muon(lr, beta=beta, filter_gamma=gamma)
        return tx.update(PARAMS, tx.init(PARAMS), PARAMS)[0]["w"]

    assert step(1e-3, 0.9, 5.0).shape == (4, 8)


@pytest.mark.parametrize("scale", [None, [1.0], {"moonshot": 1}])
def test_a_scale_that_is_neither_a_name_nor_a_number_is_a_type_error(scale):
    with pytest.raises(TypeError, match="scale must be one of"):
        fo.muon(1e-3, scale=scale)


def test_values_of_the_right_type_keep_their_value_errors():
    for kwargs, arg in [
        (dict(coefficients=(3.4, -4.7)), "coefficients"),
        (dict(scale=-1.0), "scale"),
        (dict(compute_dtype="int8"), "compute_dtype"),
        (dict(ns_steps=0), "ns_steps"),
        (dict(filter_gamma=0.0), "filter_gamma"),
    ]:
        with pytest.raises(ValueError, match=arg):
            fo.muon(1e-3, **kwargs)


# --------------------------------------------------------------------------------------------
# Item 5: filter_gamma=inf (with filter_eta=1) is the one way to turn the filter off

FILTER_OFF = "use filter_gamma=float('inf') to turn the spike clip off"


@pytest.mark.parametrize("make", [lambda **kw: fo.muon(1e-3, **kw), fo.scale_by_muon])
def test_filter_gamma_none_says_how_to_turn_the_filter_off(make):
    with pytest.raises(TypeError, match="filter_gamma") as info:
        make(filter_gamma=None)
    assert FILTER_OFF in str(info.value) and "filter_eta=1.0" in str(info.value)
    assert GAMMA_OFF_HINT.replace("gamma=", "filter_gamma=").split(" (")[0] in str(info.value)


@pytest.mark.parametrize("make", [fo.muon, fo.scale_by_muon])
def test_the_default_is_the_filter_off(make):
    params = inspect.signature(make).parameters
    assert params["filter_gamma"].default == math.inf and params["filter_eta"].default == 1.0


def _muon_side(state):
    return state.inner_states["muon"].inner_state[0]


def test_default_and_explicit_inf_are_plain_muon_without_nu():
    grads = _grads(PARAMS, 5)
    p_default, s_default = _run(fo.muon(1e-2), PARAMS, grads)
    p_inf, s_inf = _run(fo.muon(1e-2, filter_gamma=float("inf"), filter_eta=1.0), PARAMS, grads)
    assert _muon_side(s_default).nu is None and _muon_side(s_inf).nu is None
    assert jax.tree.structure(s_default) == jax.tree.structure(s_inf)
    for k in PARAMS:
        np.testing.assert_array_equal(p_default[k], p_inf[k])


def test_a_finite_gamma_or_smoothing_turns_the_filter_on():
    assert isinstance(fo.scale_by_muon(filter_gamma=5.0).init(PARAMS).nu, dict)
    assert isinstance(fo.scale_by_muon(filter_eta=0.5).init(PARAMS).nu, dict)


def test_inject_hyperparams_with_the_filter_off_keeps_no_nu_under_jit():
    """inject_hyperparams injects the inf default: traced in update, the state decides."""
    grads = _grads(PARAMS, 4)
    tx = optax.inject_hyperparams(fo.muon)(learning_rate=1e-2)
    p_inj, s_inj = _run(tx, PARAMS, grads)
    p_ref, _ = _run(fo.muon(1e-2), PARAMS, grads)
    assert _muon_side(s_inj.inner_state).nu is None
    for k in PARAMS:
        np.testing.assert_allclose(p_inj[k], p_ref[k], rtol=1e-6, atol=1e-7)
    on = optax.inject_hyperparams(fo.muon)(learning_rate=1e-2, filter_gamma=3.0)
    _, s_on = _run(on, PARAMS, grads)
    assert isinstance(_muon_side(s_on.inner_state).nu, dict)


def test_stats_with_the_filter_off_is_still_a_clear_error():
    with pytest.raises(ValueError, match="filter_gamma"):
        fo.muon(1e-2, stats=True)
    fo.muon(1e-2, stats=True, filter_gamma=5.0)


# --------------------------------------------------------------------------------------------
# Item 8: optax.contrib.muon's keywords

MATRICES = {"w": jnp.zeros((16, 40)), "v": jnp.zeros((24, 12))}
MIXED = {"w": jnp.zeros((16, 40)), "b": jnp.zeros((40,))}
# fo.muon set up as optax.contrib.muon's defaults, the AdamW side without Nesterov.
OURS_AS_OPTAX = dict(
    scale="keller",
    bias_correction=True,
    coefficients="keller",
    eps=1e-8,
    adam_eps=1e-8,
    adam_b2=0.999,
    weight_decay=0.0,
    adam_weight_decay=0.0,
    nesterov=False,
)
OPTAX_BASE = dict(nesterov=False)
# A non-default value for each of optax's keywords.
NON_DEFAULT = {
    "ns_coeffs": "dion",
    "ns_steps": 3,
    "beta": 0.8,
    "eps": 1e-3,
    "weight_decay": 0.3,
    "weight_decay_mask": {"w": False, "v": True},
    "mu_dtype": jnp.bfloat16,
    "nesterov": True,
    "adam_b1": 0.8,
    "adam_b2": 0.99,
    "adam_eps_root": 1e-4,
    "adam_weight_decay": 0.3,
    "adam_learning_rate": 0.05,
    "adaptive": True,
    "preconditioning": "spectral",
    "muon_weight_dimension_numbers": {"w": None},
    "consistent_rms": 0.2,
}
NEEDS = {"weight_decay_mask": {"weight_decay": 0.3}}
# optax acts on both sides with these, fo.muon on the Muon side only: compared on matrices.
MUON_SIDE_ONLY = {"eps", "nesterov", "weight_decay_mask"}
# Keywords rejected, each with (error, the equivalent its message names).
REJECTED = {
    "adaptive": (TypeError, "not implemented"),
    "preconditioning": (ValueError, "frobenius"),
    "muon_weight_dimension_numbers": (TypeError, "labels="),
    "consistent_rms": (TypeError, r"scale='moonshot', rms=x"),
}


def _optax_keywords():
    return [k for k in inspect.signature(optax.contrib.muon).parameters if k != "learning_rate"]


def test_every_optax_keyword_has_a_value_to_try():
    assert set(_optax_keywords()) == set(NON_DEFAULT)


@pytest.mark.parametrize("keyword", _optax_keywords())
def test_optax_keyword_is_accepted_with_optax_meaning_or_names_ours(keyword):
    if keyword in REJECTED:
        error, equivalent = REJECTED[keyword]
        with pytest.raises(error, match=equivalent):
            fo.muon(1e-2, **{keyword: NON_DEFAULT[keyword]})
        fo.muon(
            1e-2, **{keyword: inspect.signature(optax.contrib.muon).parameters[keyword].default}
        )  # optax's default is accepted: a no-op
        return
    assert keyword in inspect.signature(fo.muon).parameters
    params = MATRICES if keyword in MUON_SIDE_ONLY else MIXED
    extra = {**NEEDS.get(keyword, {}), keyword: NON_DEFAULT[keyword]}
    ours_base = {
        k: v
        for k, v in OURS_AS_OPTAX.items()
        if not (keyword == "ns_coeffs" and k == "coefficients")
    }
    grads = _grads(params, 4, seed=3)
    p_ours, s_ours = _run(fo.muon(1e-2, **{**ours_base, **extra}), params, grads)
    p_optax, s_optax = _run(optax.contrib.muon(1e-2, **{**OPTAX_BASE, **extra}), params, grads)
    p_default, _ = _run(
        optax.contrib.muon(1e-2, **{**OPTAX_BASE, **NEEDS.get(keyword, {})}), params, grads
    )
    # float32 round-off (bfloat16 storage of the momentum for mu_dtype).
    tol = 2e-2 if keyword == "mu_dtype" else 1e-5
    for k in params:
        np.testing.assert_allclose(p_ours[k], p_optax[k], rtol=tol, atol=tol * 0.1, err_msg=k)
    if keyword == "mu_dtype":
        mus = [v for s in (s_ours, s_optax) for _, v in optax.tree.get_all_with_path(s, "mu")]
        assert {x.dtype for x in jax.tree.leaves(mus)} == {jnp.dtype(jnp.bfloat16)}
    else:
        assert any(not np.allclose(p_ours[k], p_default[k], rtol=1e-6, atol=0) for k in params)


def test_fo_muon_as_set_up_here_is_optax_contrib_muon():
    """The base of the comparisons above: with nothing changed, the two agree."""
    grads = _grads(MIXED, 4, seed=3)
    p_ours, _ = _run(fo.muon(1e-2, **OURS_AS_OPTAX), MIXED, grads)
    p_optax, _ = _run(optax.contrib.muon(1e-2, **OPTAX_BASE), MIXED, grads)
    for k in MIXED:
        np.testing.assert_allclose(p_ours[k], p_optax[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_ns_coeffs_is_coefficients_and_not_both():
    grads = _grads(MATRICES, 3)
    a, _ = _run(fo.muon(1e-2, ns_coeffs="standard"), MATRICES, grads)
    b, _ = _run(fo.muon(1e-2, coefficients="keller"), MATRICES, grads)
    c, _ = _run(fo.muon(1e-2, ns_coeffs=(3.4445, -4.775, 2.0315)), MATRICES, grads)
    for k in MATRICES:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_allclose(a[k], c[k], rtol=1e-6)
    with pytest.raises(TypeError, match="ns_coeffs.*coefficients"):
        fo.muon(1e-2, ns_coeffs="standard", coefficients="keller")


@pytest.mark.parametrize("as_callable", [False, True])
def test_weight_decay_mask_applies_on_both_sides(as_callable):
    params = {"w": jnp.ones((8, 16)), "w2": jnp.ones((8, 16)), "b": jnp.ones(16), "g": jnp.ones(16)}
    mask = {"w": True, "w2": False, "b": True, "g": False}
    tx = fo.muon(0.1, weight_decay=0.5, weight_decay_mask=(lambda p: mask) if as_callable else mask)
    zero = jax.tree.map(jnp.zeros_like, params)  # no gradient: only the decay moves them
    p, _ = _run(tx, params, [zero])
    for k, decayed in mask.items():
        np.testing.assert_allclose(p[k], 1.0 - 0.1 * 0.5 if decayed else 1.0, rtol=1e-6, err_msg=k)
