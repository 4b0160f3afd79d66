"""Reliability (issue #5): bad hyperparameters, bad gradients, odd pytrees, determinism.

Runs every public optimizer of tests/registry.py (Muon included once ``fo.muon`` exists)
through the inputs a training loop meets in practice: NaN and Inf gradients (README,
"The filter": Inf is clipped as a spike, NaN propagates; ``optax.apply_if_finite`` is the guard),
gradient trees that do not match the state, integer / boolean / complex leaves, ``None``
leaves, empty trees, scalars and 0-size arrays. The README's "Reliability" section states
exactly what these tests check.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import filtered_optax as fo
from tests.registry import OPTIMIZERS, ids

# Muon is written in parallel with these tests; its cases are skipped until it is exported.
MUON = getattr(fo, "muon", None)
needs_muon = pytest.mark.skipif(MUON is None, reason="fo.muon not available yet")

# A 1-D leaf (AdamW side of Muon) and a 2-D hidden matrix (Muon side).
PARAMS = {"bias": jnp.zeros(3), "kernel": jnp.zeros((4, 3))}
FILTERED = {"filtered_adam", "filtered_adam_smoothing", "filtered_adamw", "filtered_muon"}
# Optimizers that are not fully element-wise: Newton-Schulz mixes a matrix's entries.
MATRIX = {"muon", "filtered_muon"}
# Leaves on which each filtered optimizer clips an Inf (filtered Muon filters only its
# Muon side; its AdamW side is plain AdamW).
INF_SAFE_LEAVES = {
    "filtered_adam": {"bias", "kernel"},
    "filtered_adam_smoothing": {"bias", "kernel"},
    "filtered_adamw": {"bias", "kernel"},
    "filtered_muon": {"kernel"},
}
by_name = pytest.mark.parametrize("name,make,kwargs", OPTIMIZERS, ids=ids())


def _grad(t: int, params=PARAMS):
    """A smooth, non-zero, deterministic gradient stream."""
    return jax.tree.map(
        lambda p: 1.0 + 0.3 * jnp.sin(t + jnp.arange(p.size, dtype=p.dtype).reshape(p.shape)),
        params,
    )


def _poison(grads, value, leaf: str):
    out = dict(grads)
    out[leaf] = grads[leaf].reshape(-1).at[0].set(value).reshape(grads[leaf].shape)
    return out


def _all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


def _run(tx, grads_at, steps, params=PARAMS):
    update = jax.jit(tx.update)
    state = tx.init(params)
    updates = None
    for t in range(steps):
        updates, state = update(grads_at(t), state, params)
    return updates, state


# ---------------------------------------------------------------------------------------
# 1. Hyperparameter validation beyond tests/unit/test_validation.py (its 28 cases are distinct
#    from these).

BAD_CORE = [
    (fo.filtered_adam, dict(learning_rate=1e-3, b2=math.nan), "b2"),
    (fo.filtered_adam, dict(learning_rate=1e-3, eps=math.nan), "eps"),
    (fo.filtered_adam, dict(learning_rate=1e-3, gamma=math.nan), "gamma"),
    (fo.filtered_adam, dict(learning_rate=math.nan), "learning_rate"),
    (fo.filtered_adam, dict(learning_rate=1e-3, b1=np.float32(1.0)), "b1"),
    (fo.filtered_adam, dict(learning_rate=1e-3, b1=jnp.float32(1.0)), "b1"),  # concrete array
    (fo.filtered_adam, dict(learning_rate=1e-3, warmup=math.nan), "warmup"),
    (fo.filtered_adam, dict(learning_rate=1e-3, warmup=math.inf), "warmup"),
    (fo.filtered_adam, dict(learning_rate=1e-3, mu_dtype="not_a_dtype"), "mu_dtype"),
    (fo.filtered_adam, dict(learning_rate=1e-3, mu_dtype=jnp.int32), "mu_dtype"),
    (fo.filtered_adamw, dict(learning_rate=1e-3, b1=1.5), "b1"),
    (fo.filtered_adamw, dict(learning_rate=1e-3, gamma=0.0), "gamma"),
    (fo.filtered_adamw, dict(learning_rate=1e-3, eta=-1.0), "eta"),
    (fo.filtered_adamw, dict(learning_rate=-1.0), "learning_rate"),
    (fo.adam, dict(learning_rate=1e-3, eps_root=-1.0), "eps_root"),
    (fo.adam, dict(learning_rate=1e-3, mu_dtype="bool"), "mu_dtype"),
    (fo.adamw, dict(learning_rate=1e-3, b1=-0.5), "b1"),
    (fo.rmsprop, dict(learning_rate=1e-3, initial_scale=-1.0), "initial_scale"),
    (fo.rmsprop, dict(learning_rate=1e-3, momentum=-0.1), "momentum"),
    (fo.adabelief, dict(learning_rate=1e-3, eps_root=-1.0), "eps_root"),
    (fo.adabelief, dict(learning_rate=1e-3, eps=-1.0), "eps"),
    (fo.sgd, dict(learning_rate=-0.1), "learning_rate"),
    (fo.heavy_ball, dict(momentum=-1.0), "momentum"),
    (fo.second_moment, dict(decay=1.0), "decay"),
    (fo.rms_normalize, dict(eps=-1.0), "eps"),
    (fo.normalize, dict(eps_root=-1.0), "eps_root"),
    (fo.spam_filter, dict(warmup=-2), "warmup"),
    (fo.zscore_filter, dict(kappa=-0.1), "kappa"),
    (fo.soft_clip_filter, dict(warmup=1.5), "warmup"),
    (fo.kalman_filter, dict(gamma=math.nan), "gamma"),
    (fo.with_moments, dict(mu_dtype=jnp.int8), "mu_dtype"),
]

BAD_MUON = [
    (dict(beta=1.0), "beta"),
    (dict(beta=-0.1), "beta"),
    (dict(ns_steps=0), "ns_steps"),
    (dict(ns_steps=2.5), "ns_steps"),
    (dict(ns_steps=-3), "ns_steps"),
    (dict(coefficients="nope"), "coefficients"),
    (dict(coefficients=(1.0, 2.0)), "coefficients"),
    (dict(coefficients=[(1.0, 2.0, 3.0), (1.0, 2.0)]), "coefficients"),
    (dict(coefficients=[]), "coefficients"),
    (dict(coefficients="keller", ns_steps=0), "ns_steps"),
    (dict(scale="bogus"), "scale"),
    (dict(scale=-1.0), "scale"),
    # scale=None is a TypeError now (wrong type): tests/test_muon_new_user_bugs.py.
    (dict(rms=-0.2), "rms"),
    (dict(eps=-1.0), "eps"),
    (dict(compute_dtype="int32"), "compute_dtype"),
    (dict(compute_dtype="not_a_dtype"), "compute_dtype"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(adam_weight_decay=-1.0), "adam_weight_decay"),
    (dict(adam_b1=1.0), "adam_b1"),
    (dict(adam_b2=1.5), "adam_b2"),
    (dict(adam_eps=-1e-8), "adam_eps"),
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(learning_rate=math.nan), "learning_rate"),
    (dict(filter_gamma=0.0), "filter_gamma"),
    (dict(filter_gamma=-1.0), "filter_gamma"),
    (dict(filter_eta=1.5), "filter_eta"),
    (dict(filter_b2=1.0), "filter_b2"),
    (dict(filter_warmup=-1), "filter_warmup"),
    (dict(filter_kappa=-1.0), "filter_kappa"),
]

# Muon arguments whose validation was added after this file found the gaps.
BAD_MUON += [
    (dict(adam_learning_rate=-1e-3), "adam_learning_rate"),
    (dict(filter_warmup=2.5), "filter_warmup"),
    (dict(mu_dtype="not_a_dtype"), "mu_dtype"),
]


def _assert_names_value(err: ValueError, arg: str, value) -> None:
    text = str(err)
    assert f"{arg}=" in text, text  # names the argument ...
    assert "must" in text, text  # ... says what is allowed ...
    assert repr(value) in text or str(value) in text, text  # ... and quotes the value


@pytest.mark.parametrize(
    "factory,kwargs,arg",
    BAD_CORE,
    ids=[f"{f.__name__}-{a}-{i}" for i, (f, _, a) in enumerate(BAD_CORE)],
)
def test_bad_core_hyperparameter_raises_value_error(factory, kwargs, arg):
    with pytest.raises(ValueError) as info:
        factory(**kwargs)
    _assert_names_value(info.value, arg, kwargs[arg])


@needs_muon
@pytest.mark.parametrize(
    "kwargs,arg", BAD_MUON, ids=[f"{a}-{i}" for i, (_, a) in enumerate(BAD_MUON)]
)
def test_bad_muon_hyperparameter_raises_value_error(kwargs, arg):
    with pytest.raises(ValueError) as info:
        MUON(**{"learning_rate": 1e-3, **kwargs})
    _assert_names_value(info.value, arg, kwargs[arg])


def test_concrete_values_validated_traced_values_never_break_tracing():
    # inject_hyperparams passes every numeric hyperparameter as an array: nothing breaks.
    for make, kw in [
        (
            fo.filtered_adam,
            dict(b1=0.9, b2=0.99, eps=1e-8, eta=0.5, gamma=5.0, warmup=2, kappa=0.1),
        ),
        (fo.filtered_adamw, dict(b1=0.9, weight_decay=0.1, gamma=5.0, warmup=2)),
        (fo.adam, dict(b1=0.9, b2=0.99, eps=1e-8, eps_root=0.0)),
        (fo.rmsprop, dict(decay=0.9, eps=1e-8, initial_scale=0.0)),
        (fo.adabelief, dict(b1=0.9, b2=0.99, eps=1e-16, eps_root=1e-16)),
        (fo.sgd, dict(momentum=0.9)),
    ]:
        tx = optax.inject_hyperparams(make)(learning_rate=1e-2, **kw)
        updates, _ = _run(tx, _grad, 4)
        assert _all_finite(updates), make.__name__

    # Building inside jit with traced values works and gives the concrete-value result.
    @jax.jit
    def traced(gamma, eta, b1):
        tx = fo.filtered_adam(1e-2, b1=b1, gamma=gamma, eta=eta, warmup=1)
        state = tx.init(PARAMS)
        for t in range(4):
            updates, state = tx.update(_grad(t), state, PARAMS)
        return updates

    concrete = fo.filtered_adam(1e-2, b1=0.9, gamma=2.0, eta=0.5, warmup=1)
    expected, _ = _run(concrete, _grad, 4)
    got = traced(jnp.float32(2.0), jnp.float32(0.5), jnp.float32(0.9))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), got, expected)


@needs_muon
def test_muon_inject_hyperparams_traces():
    tx = optax.inject_hyperparams(MUON)(
        learning_rate=1e-2,
        beta=0.9,
        weight_decay=0.1,
        eps=1e-7,
        rms=0.2,
        adam_b1=0.9,
        adam_b2=0.95,
        adam_eps=1e-8,
        filter_eta=1.0,
    )
    updates, _ = _run(tx, _grad, 3)
    assert _all_finite(updates)


# ---------------------------------------------------------------------------------------
# 2. NaN and Inf gradients (README, "The filter") and the apply_if_finite guard.


def _poison_both(value):
    return lambda t: (
        _poison(_poison(_grad(t), value, "bias"), value, "kernel") if t == 30 else _grad(t)
    )


@by_name
def test_inf_gradient_after_warmup(name, make, kwargs):
    """One +Inf entry per leaf at step 30: filtered optimizers clip it, others are poisoned."""
    tx = make(1e-2, **kwargs)
    clean_u, _ = _run(tx, _grad, 31)
    u, state = _run(tx, _poison_both(jnp.inf), 31)
    safe = INF_SAFE_LEAVES.get(name, set())
    for leaf in ("bias", "kernel"):
        if leaf in safe:
            assert _all_finite(u[leaf]), leaf
            # The clipped step still moves the coordinate the way the gradient points.
            assert float(u[leaf].reshape(-1)[0]) < 0
        else:
            assert not _all_finite(u[leaf]), leaf
        if name not in MATRIX or leaf == "bias":
            # Element-wise optimizers: the other entries of the leaf are untouched.
            np.testing.assert_array_equal(u[leaf].reshape(-1)[1:], clean_u[leaf].reshape(-1)[1:])
    if name != "sgd":  # plain SGD keeps no state
        assert _all_finite(state) == (safe == {"bias", "kernel"})


@pytest.mark.parametrize("value", [jnp.inf, -jnp.inf])
def test_filtered_adam_clips_inf_to_the_spike_bound(value):
    """The clipped value is m_hat + sign(d) * gamma * s: the state stays near the clean one."""
    tx = fo.with_moments(filter=fo.kalman_filter(gamma=10.0))
    params = {"w": jnp.zeros(2)}
    _, state = _run(tx, lambda t: {"w": jnp.array([1.0, -1.0])}, 30, params)
    # Bias corrections with the float32 decays the library uses (see test_filters.py).
    m_hat = state.mu["w"] / (1 - jnp.float32(0.9) ** 30)
    s = jnp.sqrt(state.nu["w"] / (1 - jnp.float32(0.999) ** 30))
    r = fo.kalman_filter_math(
        jnp.array([value, value]), state.mu["w"], state.nu["w"], 30, b1=0.9, b2=0.999
    )
    expected = m_hat + jnp.sign(value) * 10.0 * s
    np.testing.assert_allclose(r.filtered, expected, rtol=1e-5)
    assert bool(jnp.all(r.is_spike))


@pytest.mark.parametrize("case", ["before_warmup", "first_seen"])
def test_inf_passes_the_gate_where_the_filter_is_the_identity(case):
    """Before warmup, and on a coordinate whose v is still 0, Inf is not clipped (gate)."""
    tx = fo.filtered_adam(1e-2)
    params = {"w": jnp.zeros(2)}
    if case == "before_warmup":
        at, base = 5, jnp.array([1.0, 1.0])
    else:  # coordinate 0 had exactly zero gradient so far: v_{t-1} == 0
        at, base = 30, jnp.array([0.0, 1.0])
    u, state = _run(
        tx, lambda t: {"w": base.at[0].set(jnp.inf) if t == at else base}, at + 1, params
    )
    nu = optax.tree.get(state, "nu")["w"]
    assert bool(jnp.isinf(nu[0])) and bool(jnp.isnan(u["w"][0]))
    assert bool(jnp.isfinite(u["w"][1]))


@by_name
def test_nan_gradient_propagates(name, make, kwargs):
    """A NaN is a bug upstream: every optimizer lets it show in the update and the state."""
    tx = make(1e-2, **kwargs)
    clean_u, _ = _run(tx, _grad, 31)
    u, state = _run(tx, _poison_both(jnp.nan), 31)
    for leaf in ("bias", "kernel"):
        assert bool(jnp.isnan(u[leaf].reshape(-1)[0])), leaf
        if name not in MATRIX or leaf == "bias":
            np.testing.assert_array_equal(u[leaf].reshape(-1)[1:], clean_u[leaf].reshape(-1)[1:])
    if name != "sgd":  # plain SGD keeps no state
        assert not _all_finite(state)


@by_name
@pytest.mark.parametrize("value", [jnp.nan, -jnp.inf])
def test_apply_if_finite_skips_the_bad_step_exactly(name, make, kwargs, value):
    """clean*30, bad, clean*3 under apply_if_finite == clean*33 without the bad step."""
    tx = optax.apply_if_finite(make(1e-2, **kwargs), max_consecutive_errors=5)
    update = jax.jit(tx.update)

    def train(with_bad: bool):
        params, state = PARAMS, tx.init(PARAMS)
        stream = [_grad(t) for t in range(33)]
        if with_bad:
            stream.insert(30, _poison(_grad(99), value, "kernel"))
        for g in stream:
            updates, state = update(g, state, params)
            params = optax.apply_updates(params, updates)
        return params, state

    p_bad, s_bad = train(True)
    p_ok, s_ok = train(False)
    jax.tree.map(np.testing.assert_array_equal, p_bad, p_ok)
    jax.tree.map(np.testing.assert_array_equal, s_bad.inner_state, s_ok.inner_state)
    assert int(s_bad.total_notfinite) == 1 and int(s_ok.total_notfinite) == 0
    assert _all_finite(s_bad.inner_state)


# ---------------------------------------------------------------------------------------
# 3. Gradient trees and leaf types.

WITH_MOMENTS = [o for o in OPTIMIZERS if o[0] != "sgd" and o[0] not in MATRIX]


@pytest.mark.parametrize("name,make,kwargs", WITH_MOMENTS, ids=[o[0] for o in WITH_MOMENTS])
def test_gradient_tree_must_match_the_state(name, make, kwargs):
    tx = make(1e-2, **kwargs)
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match="does not match the optimizer state"):
        tx.update({**_grad(0), "extra": jnp.ones(2)}, state, PARAMS)
    with pytest.raises(ValueError, match="does not match the optimizer state"):
        tx.update({"bias": jnp.ones(3)}, state)
    with pytest.raises(ValueError, match=r"\['kernel'\] has shape \(4, 2\)"):
        tx.update({"bias": jnp.ones(3), "kernel": jnp.ones((4, 2))}, state)
    # Same structure, other container type: still a clear error, also under jit.
    with pytest.raises(ValueError, match="does not match"):
        jax.jit(tx.update)([jnp.ones(3), jnp.ones((4, 3))], state)


@needs_muon
@pytest.mark.parametrize("name", sorted(MATRIX))
def test_muon_gradient_tree_mismatch_raises(name):
    make, kwargs = {o[0]: (o[1], o[2]) for o in OPTIMIZERS}[name]
    tx = make(1e-2, **kwargs)
    with pytest.raises((ValueError, TypeError)):
        tx.update({**_grad(0), "extra": jnp.ones(2)}, tx.init(PARAMS), PARAMS)


def test_plain_sgd_is_stateless_and_accepts_any_tree():
    """fo.sgd() without momentum is optax.sgd: no state to mismatch, ints scaled as optax."""
    tx = fo.sgd(0.5)
    state = tx.init(PARAMS)
    u, _ = tx.update({"x": jnp.array([2], jnp.int32)}, state)
    ref, _ = optax.sgd(0.5).update({"x": jnp.array([2], jnp.int32)}, optax.sgd(0.5).init({}))
    np.testing.assert_array_equal(u["x"], ref["x"])


@by_name
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_and_boolean_leaves_are_rejected(name, make, kwargs, dtype):
    if name == "sgd":
        pytest.skip("stateless optax.sgd: covered by test_plain_sgd_is_stateless...")
    tx = make(1e-2, **kwargs)
    params = {"bias": jnp.zeros(3), "step": jnp.zeros(3, dtype)}
    if name in MATRIX:
        # 1-D integer leaves go to Muon's AdamW side, which rejects them.
        with pytest.raises(TypeError, match=r"\['step'\].*dtype"):
            tx.init(params)
        return
    with pytest.raises(TypeError, match=r"parameter leaf \['step'\] has dtype"):
        tx.init(params)
    # ... and an integer gradient for float parameters is rejected in update.
    state = tx.init({"bias": jnp.zeros(3), "step": jnp.zeros(3)})
    with pytest.raises(TypeError, match=r"gradient leaf \['step'\] has dtype"):
        tx.update({"bias": jnp.ones(3), "step": jnp.ones(3, dtype)}, state)


@needs_muon
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.complex64])
def test_muon_rejects_integer_and_complex_matrices(dtype):
    """Newton-Schulz is defined for real matrices: other dtypes raise, naming the leaf."""
    tx = MUON(1e-2)
    params = {"kernel": jnp.ones((4, 3), dtype)}
    with pytest.raises(TypeError, match="kernel"):
        tx.init(params)
    with pytest.raises(TypeError, match="kernel"):
        tx.update(params, tx.init({"kernel": jnp.ones((4, 3))}), params)


@by_name
def test_none_empty_scalar_and_zero_size_leaves(name, make, kwargs):
    tx = make(1e-2, **kwargs)
    params = {
        "none": None,
        "scalar": jnp.float32(1.0),
        "empty0": jnp.zeros((0,)),
        "empty2": jnp.zeros((0, 3)),
        "empty3": jnp.zeros((3, 0, 2)),
        "kernel": jnp.ones((4, 3)),
    }
    update = jax.jit(tx.update)
    state = tx.init(params)
    for t in range(3):
        grads = jax.tree.map(lambda p, t=t: p * 0 + 0.5 + t, params)
        updates, new_state = update(grads, state, params)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)
        state = new_state
    assert updates["none"] is None
    for k in ("scalar", "empty0", "empty2", "empty3", "kernel"):
        assert updates[k].shape == params[k].shape and updates[k].dtype == params[k].dtype
    assert _all_finite(updates) and float(updates["scalar"]) < 0
    # An empty tree: nothing to do, and no error.
    updates, _ = tx.update({}, tx.init({}), {})
    assert updates == {}


OPTAX_TWINS = {
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=1e-3),
    "rmsprop": lambda: optax.rmsprop(1e-2),
    "adabelief": lambda: optax.adabelief(1e-2),
    "sgd": lambda: optax.sgd(1e-2),
    "sgd_momentum": lambda: optax.sgd(1e-2, momentum=0.9),
}


@by_name
def test_complex_parameters_work(name, make, kwargs):
    params = {"bias": jnp.zeros(3, jnp.complex64)}

    def grads(t):
        return {"bias": (1.0 + 0.5j) * (t + 1) * jnp.arange(1.0, 4.0).astype(jnp.complex64)}

    tx = make(1e-2, **kwargs)
    if name in OPTAX_TWINS:  # unfiltered: complex works exactly as in optax
        got, _ = _run(tx, grads, 5, params)
        want, _ = _run(OPTAX_TWINS[name](), grads, 5, params)
        assert got["bias"].dtype == jnp.complex64
        np.testing.assert_allclose(got["bias"], want["bias"], rtol=1e-6)
    elif name in FILTERED - MATRIX:
        # The filters act on the modulus and clip along the innovation
        # (tests/unit/test_filters_complex.py checks them against a NumPy reference): every
        # gradient here has the phase of 1 + 0.5j, so every update, and the parameters, keep
        # that phase.
        got, _ = _run(tx, grads, 5, params)
        assert got["bias"].dtype == jnp.complex64 and _all_finite(got)
        turned = np.asarray(got["bias"]) / (1.0 + 0.5j)
        np.testing.assert_allclose(turned.imag, 0.0, atol=1e-6)
        assert np.all(turned.real < 0)  # moved against the gradient
    else:
        pytest.skip("Muon matrices: see test_muon_rejects_integer_and_complex_matrices")


def test_disabled_filter_accepts_complex_as_adam():
    """eta=1, gamma=inf short-circuits to the identity filter, so complex is plain Adam."""
    params = {"w": jnp.zeros(3, jnp.complex64)}

    def grads(t):
        return {"w": (1.0 - 2.0j) * (t + 1) * jnp.ones(3, jnp.complex64)}

    got, _ = _run(fo.filtered_adam(1e-2, eta=1.0, gamma=math.inf), grads, 4, params)
    want, _ = _run(optax.adam(1e-2), grads, 4, params)
    np.testing.assert_array_equal(got["w"], want["w"])


# ---------------------------------------------------------------------------------------
# 4. Zero, sparse and masked gradients.


@by_name
def test_never_touched_coordinates_never_move(name, make, kwargs):
    """g == 0 from the start (a masked / frozen coordinate) gives exactly zero updates."""
    tx = make(1e-2, **kwargs)
    mask = {"bias": jnp.array([0.0, 1.0, 1.0]), "kernel": jnp.zeros((4, 3))}
    u, state = _run(tx, lambda t: jax.tree.map(jnp.multiply, _grad(t), mask), 30)
    assert float(u["bias"][0]) == 0.0 and bool(jnp.all(u["kernel"] == 0))
    assert float(u["bias"][1]) != 0.0
    assert _all_finite(state)


def test_rare_coordinate_is_not_locked_at_zero():
    """A coordinate first seen late passes the filter unclipped (v_{t-1} == 0 gate)."""
    params = {"emb": jnp.zeros(3)}

    def grads(t):
        g = jnp.array([0.0, 1.0, -1.0]) * (1 + 0.1 * math.sin(t))
        return {"emb": g.at[0].set(1e3) if t == 40 else g}

    got, state = _run(fo.filtered_adam(1e-2), grads, 41, params)
    want, _ = _run(optax.adam(1e-2), grads, 41, params)
    np.testing.assert_array_equal(got["emb"][0], want["emb"][0])
    assert abs(float(got["emb"][0])) > 1e-3  # it moves (Adam's first step is ~lr)
    np.testing.assert_allclose(state[0].nu["emb"][0], 1e-3 * 1e6, rtol=1e-6)  # unclipped


def test_kalman_filter_passes_zero_gradient_as_exact_zero():
    r = fo.kalman_filter_math(
        jnp.zeros(3),
        jnp.array([0.5, -0.5, 2.0]),
        jnp.ones(3),
        50,
        b1=0.9,
        b2=0.999,
        eta=0.0,
        gamma=1.0,
    )
    np.testing.assert_array_equal(r.filtered, jnp.zeros(3))
    assert not bool(jnp.any(r.is_spike))


@pytest.mark.parametrize(
    "make",
    [fo.spam_filter, fo.zscore_filter, fo.soft_clip_filter],
    ids=["spam", "zscore", "soft_clip"],
)
def test_alternative_filters_clip_inf(make):
    """Every clipping filter of the family turns an Inf after warmup into a finite value."""
    tx = fo.with_moments(filter=make())
    params = {"w": jnp.zeros(3)}
    u, state = _run(
        tx,
        lambda t: {"w": jnp.array([1.0, -1.0, 0.5]).at[0].set(jnp.inf if t == 30 else 1.0)},
        31,
        params,
    )
    assert _all_finite(u) and _all_finite(state)


# ---------------------------------------------------------------------------------------
# 5. Determinism.


def _random_run(tx, seed: int, steps: int, jit: bool):
    key = jax.random.PRNGKey(seed)
    params = {
        "bias": jax.random.normal(key, (5,)),
        "kernel": jax.random.normal(jax.random.fold_in(key, 1), (6, 4)),
    }
    update = jax.jit(tx.update) if jit else tx.update
    state = tx.init(params)
    for t in range(steps):
        k = jax.random.fold_in(key, 100 + t)
        size = 30.0 if t % 7 == 6 else 1.0  # with spikes
        grads = jax.tree.map(
            lambda p, k=k, size=size: p + size * jax.random.normal(k, p.shape), params
        )
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


@by_name
def test_same_seed_gives_bitwise_identical_runs(name, make, kwargs):
    a = _random_run(make(1e-2, **kwargs), 0, 10, jit=True)
    b = _random_run(make(1e-2, **kwargs), 0, 10, jit=True)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    c = _random_run(make(1e-2, **kwargs), 1, 10, jit=True)
    assert not np.array_equal(a[0]["bias"], c[0]["bias"])  # the seed matters


@by_name
def test_jit_and_eager_agree(name, make, kwargs):
    """jit and eager agree to float32 rounding, but not bitwise.

    XLA fuses the element-wise chain under jit and rounds some intermediates differently
    from op-by-op dispatch: one step differs by at most an ulp or so (optax.adamw too),
    and over steps the filter's data-dependent gain amplifies that to ~1e-5 relative.
    Muon's Newton-Schulz matmuls differ likewise.
    """
    make_tx = lambda: make(1e-2, **kwargs)  # noqa: E731
    one_eager = _random_run(make_tx(), 0, 1, jit=False)
    one_jit = _random_run(make_tx(), 0, 1, jit=True)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), one_eager, one_jit
    )
    eager = _random_run(make_tx(), 0, 6, jit=False)
    jitted = _random_run(make_tx(), 0, 6, jit=True)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), eager, jitted)
