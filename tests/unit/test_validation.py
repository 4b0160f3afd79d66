"""Invalid hyperparameters raise a ValueError naming the argument, at construction."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
import pytest

import filtered_optax as fo

BAD = [
    (fo.filtered_adam, dict(learning_rate=1e-3, b1=1.0), "b1"),
    (fo.filtered_adam, dict(learning_rate=1e-3, b1=-0.1), "b1"),
    (fo.filtered_adam, dict(learning_rate=1e-3, b2=1.5), "b2"),
    (fo.filtered_adam, dict(learning_rate=1e-3, eps=-1e-8), "eps"),
    (fo.filtered_adam, dict(learning_rate=1e-3, gamma=0.0), "gamma"),
    (fo.filtered_adam, dict(learning_rate=1e-3, gamma=-3.0), "gamma"),
    (fo.filtered_adam, dict(learning_rate=1e-3, eta=1.1), "eta"),
    (fo.filtered_adam, dict(learning_rate=1e-3, eta=-0.1), "eta"),
    (fo.filtered_adam, dict(learning_rate=1e-3, eta=math.nan), "eta"),
    (fo.filtered_adam, dict(learning_rate=1e-3, warmup=-1), "warmup"),
    (fo.filtered_adam, dict(learning_rate=1e-3, warmup=2.5), "warmup"),
    (fo.filtered_adam, dict(learning_rate=1e-3, kappa=-1.0), "kappa"),
    (fo.filtered_adam, dict(learning_rate=-1e-3), "learning_rate"),
    (fo.filtered_adam, dict(learning_rate=math.inf), "learning_rate"),
    (fo.filtered_adamw, dict(learning_rate=1e-3, weight_decay=-0.1), "weight_decay"),
    (fo.adam, dict(learning_rate=1e-3, b2=1.0), "b2"),
    (fo.adamw, dict(learning_rate=1e-3, weight_decay=-1.0), "weight_decay"),
    (fo.rmsprop, dict(learning_rate=1e-3, decay=1.0), "decay"),
    (fo.rmsprop, dict(learning_rate=1e-3, eps=-1.0), "eps"),
    (fo.adabelief, dict(learning_rate=1e-3, b1=2.0), "b1"),
    (fo.sgd, dict(learning_rate=1e-3, momentum=-0.9), "momentum"),
    (fo.spam_filter, dict(threshold=0.0), "threshold"),
    (fo.zscore_filter, dict(gamma=-1.0), "gamma"),
    (fo.soft_clip_filter, dict(gamma=0.0), "gamma"),
    (fo.kalman_filter, dict(eta=2.0), "eta"),
    (fo.ema, dict(b1=1.0), "b1"),
    (fo.belief, dict(b2=-0.5), "b2"),
    (fo.normalize, dict(eps=-1.0), "eps"),
]


@pytest.mark.parametrize("factory,kwargs,arg", BAD, ids=[f"{f.__name__}-{a}" for f, _, a in BAD])
def test_bad_hyperparameter_raises_value_error_naming_it(factory, kwargs, arg):
    with pytest.raises(ValueError, match=arg) as info:
        factory(**kwargs)
    assert "must" in str(info.value)  # says what is allowed


def test_limits_are_accepted():
    fo.filtered_adam(0.0, b1=0.0, b2=0.0, eps=0.0, eta=0.0, gamma=math.inf, warmup=0, kappa=0.0)
    fo.filtered_adam(1e-3, eta=1.0, gamma=1e-6)


def test_traced_values_are_not_validated_and_do_not_break_tracing():
    @jax.jit
    def build_and_step(gamma, eta):
        tx = fo.filtered_adam(1e-3, gamma=gamma, eta=eta)
        params = {"w": jnp.ones(3)}
        return tx.update(params, tx.init(params), params)[0]

    assert build_and_step(jnp.float32(3.0), jnp.float32(0.5))["w"].shape == (3,)
    # ... and inject_hyperparams, which passes arrays, works with every argument.
    optax.inject_hyperparams(fo.filtered_adam)(
        learning_rate=1e-3, b1=0.9, b2=0.99, eps=1e-8, eta=0.9, gamma=5.0, warmup=3, kappa=0.1
    ).init({"w": jnp.ones(2)})


def test_schedules_are_accepted_as_learning_rate():
    fo.filtered_adam(optax.cosine_decay_schedule(1e-3, 100))


def test_wrong_stage_types_raise_type_error():
    with pytest.raises(TypeError, match="moments"):
        fo.with_moments(moments=fo.normalize())
    with pytest.raises(TypeError, match="filter"):
        fo.with_moments(filter=lambda g: g)
    with pytest.raises(TypeError, match="first"):
        tx = fo.with_moments(moments=fo.second_moment(), scale=fo.normalize())
        tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))
