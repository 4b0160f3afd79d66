"""optax's wrappers around our optimizers, each checked against a hand-built oracle.

inject_hyperparams (learning-rate and ``gamma`` schedules), MultiSteps (k micro-batches =
one big batch), apply_if_finite (a NaN step is skipped exactly), masked, partition /
multi_transform, and clip_by_global_norm in front.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import filtered_optax as fo
from filtered_optax import _muon

muon = getattr(fo, "muon", _muon.muon)

STEPS = 24
WARMUP = 4  # short, so that the filter is active for most of the steps


def _data(n: int = 64, seed: int = 0):
    """Linear regression with heavy-tailed label noise (Student-t, df=1.5) and two corrupt
    batches (steps 8 and 15, labels x 30): gradient spikes for the filter to clip."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((STEPS, n, 6)).astype(np.float32)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    noise = rng.standard_t(1.5, (STEPS, n, 4)).astype(np.float32)
    y = x @ w + 0.3 * noise
    y[8] *= 30.0
    y[15] *= 30.0
    return jnp.asarray(x), jnp.asarray(y)


def _params():
    rng = np.random.default_rng(1)
    return {
        "w": jnp.zeros((6, 4), jnp.float32),
        "b": jnp.zeros((4,), jnp.float32),
        "head": {"kernel": jnp.asarray(np.eye(4) + 0.1 * rng.standard_normal((4, 4)), jnp.float32)},
    }


def _loss(params, x, y):
    pred = (x @ params["w"] + params["b"]) @ params["head"]["kernel"]
    return jnp.mean((pred - y) ** 2)


_grad = jax.jit(jax.grad(_loss))


def _train(tx, params, xs, ys, state=None):
    """Plain optax loop; returns params, state and the list of updates."""
    state = tx.init(params) if state is None else state
    update = jax.jit(tx.update)
    all_updates = []
    for x, y in zip(xs, ys):
        updates, state = update(_grad(params, x, y), state, params)
        params = optax.apply_updates(params, updates)
        all_updates.append(updates)
    return params, state, all_updates


def _close(a, b, rtol=1e-5, atol=1e-7):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


# ---------------------------------------------------------------------------------------
# inject_hyperparams


def test_inject_hyperparams_schedules_learning_rate_and_gamma():
    lr = optax.warmup_cosine_decay_schedule(0.0, 0.05, 5, STEPS, 1e-3)
    gamma = optax.linear_schedule(2.0, 20.0, STEPS)  # tight clipping early, loose later
    tx = optax.inject_hyperparams(fo.filtered_adam)(learning_rate=lr, gamma=gamma, warmup=WARMUP)
    xs, ys = _data()
    params, state, _ = _train(tx, _params(), xs, ys)
    np.testing.assert_allclose(state.hyperparams["gamma"], gamma(STEPS - 1), rtol=1e-6)
    np.testing.assert_allclose(state.hyperparams["learning_rate"], lr(STEPS - 1), rtol=1e-6)

    # Oracle: at step t, the plain alias built with that step's values (jitted with the
    # values as arguments, so rounding matches; an off-by-one step would not).
    @jax.jit
    def oracle_update(g, state, params, lr_t, gamma_t):
        return fo.filtered_adam(lr_t, gamma=gamma_t, warmup=WARMUP).update(g, state, params)

    ref_params, ref_state = _params(), fo.filtered_adam(1.0).init(_params())
    for t, (x, y) in enumerate(zip(xs, ys)):
        updates, ref_state = oracle_update(
            _grad(ref_params, x, y), ref_state, ref_params, lr(t), gamma(t)
        )
        ref_params = optax.apply_updates(ref_params, updates)
    # (The schedules are evaluated in-graph there and eagerly here: float32 rounding, which
    # the filter's thresholds amplify a little; an off-by-one step would be ~10% off.)
    _close(params, ref_params, rtol=1e-4, atol=1e-5)
    _close(state.inner_state, ref_state, rtol=1e-4, atol=1e-5)

    # gamma actually matters here (the schedule is not a no-op): gamma = inf differs.
    loose = optax.inject_hyperparams(fo.filtered_adam)(
        learning_rate=lr, gamma=jnp.inf, warmup=WARMUP
    )
    other, _, _ = _train(loose, _params(), xs, ys)
    gap = np.abs(np.asarray(other["w"]) - np.asarray(params["w"])).max()
    print(f"gamma schedule vs gamma=inf: max |w| difference {gap:.3g}")
    assert gap > 1e-2, gap


def test_inject_hyperparams_schedules_muon_learning_rate():
    lr = optax.linear_schedule(0.02, 0.002, STEPS)
    tx = optax.inject_hyperparams(muon)(learning_rate=lr, weight_decay=0.01)
    xs, ys = _data()
    params, state, _ = _train(tx, _params(), xs, ys)
    np.testing.assert_allclose(state.hyperparams["learning_rate"], lr(STEPS - 1), rtol=1e-6)

    @jax.jit
    def oracle_update(g, state, params, lr_t):
        return muon(lr_t, weight_decay=0.01).update(g, state, params)

    ref_params, ref_state = _params(), muon(1.0).init(_params())
    for t, (x, y) in enumerate(zip(xs, ys)):
        updates, ref_state = oracle_update(_grad(ref_params, x, y), ref_state, ref_params, lr(t))
        ref_params = optax.apply_updates(ref_params, updates)
    _close(params, ref_params, rtol=5e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------
# MultiSteps: k micro-batches of a mean loss = one big batch


@pytest.mark.parametrize(
    "make",
    [lambda: fo.filtered_adam(0.05, warmup=WARMUP, gamma=3.0), lambda: muon(0.05)],
    ids=["filtered_adam", "muon"],
)
def test_multisteps_equals_big_batch(make):
    k, outer = 4, 6
    xs, ys = _data(n=64)
    # Big batch t = micro-batches t*k .. t*k+k-1 (equal sizes, so mean of means = mean).
    big_x = xs[: k * outer].reshape(outer, k * 64, 6)
    big_y = ys[: k * outer].reshape(outer, k * 64, 4)
    big_params, _, _ = _train(make(), _params(), big_x, big_y)

    tx = optax.MultiSteps(make(), every_k_schedule=k)
    params, state = _params(), tx.init(_params())
    update = jax.jit(tx.update)
    for i in range(k * outer):
        updates, state = update(_grad(params, xs[i], ys[i]), state, params)
        if i % k != k - 1:  # accumulating: no movement at all
            assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))
        params = optax.apply_updates(params, updates)
    assert int(state.gradient_step) == outer
    _close(params, big_params, rtol=2e-4, atol=1e-5)
    moved = np.abs(np.asarray(params["w"])).max()
    assert moved > 0.05, moved


def test_multisteps_first_update_is_the_mean_gradient_update():
    k = 3
    xs, ys = _data()
    tx = optax.MultiSteps(fo.filtered_adam(0.1), every_k_schedule=k)
    state, params = tx.init(_params()), _params()
    grads = [_grad(params, xs[i], ys[i]) for i in range(k)]
    for g in grads:
        updates, state = tx.update(g, state, params)
    mean = jax.tree.map(lambda *g: sum(g) / k, *grads)
    ref, _ = fo.filtered_adam(0.1).update(mean, fo.filtered_adam(0.1).init(params), params)
    _close(updates, ref, rtol=1e-5, atol=1e-8)
    # First Adam step: |update| = lr * |g| / (|g| + eps) = lr where the gradient is nonzero.
    np.testing.assert_allclose(np.abs(np.asarray(updates["w"])), 0.1, rtol=1e-4)


# ---------------------------------------------------------------------------------------
# apply_if_finite


@pytest.mark.parametrize(
    "make",
    [lambda: fo.filtered_adam(0.05, warmup=WARMUP), lambda: muon(0.05)],
    ids=["filtered_adam", "muon"],
)
def test_apply_if_finite_skips_a_nan_step_exactly(make):
    xs, ys = _data()
    bad = 9
    tx = optax.apply_if_finite(make(), max_consecutive_errors=3)
    params, state = _params(), tx.init(_params())
    update = jax.jit(tx.update)
    for i in range(STEPS):
        g = _grad(params, xs[i], ys[i])
        if i == bad:
            g = {**g, "w": g["w"].at[0, 0].set(jnp.nan)}
        before = state.inner_state
        updates, state = update(g, state, params)
        if i == bad:
            assert not bool(state.last_finite) and int(state.notfinite_count) == 1
            assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))
            jax.tree.map(np.testing.assert_array_equal, state.inner_state, before)
        params = optax.apply_updates(params, updates)
    assert int(state.total_notfinite) == 1 and int(state.notfinite_count) == 0

    # Same result as never seeing the bad batch.
    keep = [i for i in range(STEPS) if i != bad]
    ref, _, _ = _train(make(), _params(), xs[np.array(keep)], ys[np.array(keep)])
    _close(params, ref, rtol=1e-5, atol=1e-6)
    assert np.isfinite(np.asarray(params["w"])).all()


# ---------------------------------------------------------------------------------------
# masked, partition / multi_transform


def test_masked_applies_the_optimizer_to_the_masked_leaves_only():
    xs, ys = _data()
    mask = {"w": True, "b": False, "head": {"kernel": True}}
    inner = fo.filtered_adam(0.05, warmup=WARMUP)
    tx = optax.masked(inner, mask)
    state = tx.init(_params())
    # Masked-out leaves get no optimizer state (no memory for frozen parameters).
    assert isinstance(state.inner_state[0].mu["b"], optax.MaskedNode)
    assert state.inner_state[0].mu["w"].shape == (6, 4)

    params = _params()
    sub_state = inner.init({"w": params["w"], "head": params["head"]})
    for i in range(8):
        g = _grad(params, xs[i], ys[i])
        updates, state = tx.update(g, state, params)
        # optax.masked passes masked-out updates through unchanged (the raw gradient) ...
        np.testing.assert_array_equal(updates["b"], g["b"])
        # ... and the masked-in leaves are exactly the optimizer on that sub-tree.
        sub_g = {"w": g["w"], "head": g["head"]}
        sub_u, sub_state = inner.update(
            sub_g, sub_state, {"w": params["w"], "head": params["head"]}
        )
        _close({"w": updates["w"], "head": updates["head"]}, sub_u, rtol=1e-6, atol=1e-9)
        params = optax.apply_updates(params, updates)


@pytest.mark.parametrize(
    "combinator", [optax.partition, optax.multi_transform], ids=["partition", "multi_transform"]
)
def test_partition_routes_groups_to_their_optimizers(combinator):
    xs, ys = _data()
    labels = {"w": "filtered", "b": "frozen", "head": {"kernel": "sgd"}}
    filtered = fo.filtered_adam(0.05, warmup=WARMUP, gamma=3.0)
    sgd = fo.sgd(0.01, momentum=0.9)
    tx = combinator({"filtered": filtered, "sgd": sgd, "frozen": optax.set_to_zero()}, labels)
    params, _, all_updates = _train(tx, _params(), xs, ys)
    np.testing.assert_array_equal(params["b"], _params()["b"])  # frozen

    # Replay each group alone on the gradients the joint run saw.
    p = _params()
    fs, ss = filtered.init({"w": p["w"]}), sgd.init({"head": p["head"]})
    f_update, s_update = jax.jit(filtered.update), jax.jit(sgd.update)
    for (x, y), u in zip(zip(xs, ys), all_updates):
        g = _grad(p, x, y)
        fu, fs = f_update({"w": g["w"]}, fs, {"w": p["w"]})
        su, ss = s_update({"head": g["head"]}, ss, {"head": p["head"]})
        _close(u["w"], fu["w"], rtol=1e-6, atol=1e-9)
        _close(u["head"], su["head"], rtol=1e-6, atol=1e-9)
        p = optax.apply_updates(p, u)
    assert float(_loss(params, xs[-1], ys[-1])) < float(_loss(_params(), xs[-1], ys[-1]))


# ---------------------------------------------------------------------------------------
# clip_by_global_norm in front


@pytest.mark.parametrize(
    "make",
    [lambda: fo.filtered_adam(0.05, warmup=WARMUP), lambda: muon(0.05)],
    ids=["filtered_adam", "muon"],
)
def test_clip_by_global_norm_in_front(make):
    max_norm = 0.5
    xs, ys = _data()
    tx = optax.chain(optax.clip_by_global_norm(max_norm), make())
    params, _, _ = _train(tx, _params(), xs, ys)

    ref, ref_state = _params(), make().init(_params())
    ref_tx, clipped_steps = make(), 0
    for x, y in zip(xs, ys):
        g = _grad(ref, x, y)
        norm = float(optax.tree.norm(g))
        clipped_steps += norm > max_norm
        g = jax.tree.map(lambda t, n=norm: t * min(1.0, max_norm / n), g)
        u, ref_state = ref_tx.update(g, ref_state, ref)
        ref = optax.apply_updates(ref, u)
    assert clipped_steps >= STEPS // 2  # the clip is active, not a no-op
    _close(params, ref, rtol=1e-5, atol=1e-6)
