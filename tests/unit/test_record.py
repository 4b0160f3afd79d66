"""Constructor records: what each public constructor was called with, as fo.describe shows it."""

from __future__ import annotations

import gc
import inspect
import weakref

import optax
import pytest

import filtered_optax as fo

# Every public factory with one non-default argument (name, value) whose record must show it.
FACTORIES = [
    (fo.adam, dict(learning_rate=1e-3, b1=0.8)),
    (fo.adamw, dict(learning_rate=1e-3, weight_decay=0.3)),
    (fo.filtered_adam, dict(learning_rate=1e-3, gamma=4.0)),
    (fo.filtered_adamw, dict(learning_rate=1e-3, eta=0.5)),
    (fo.rmsprop, dict(learning_rate=1e-3, decay=0.7)),
    (fo.adabelief, dict(learning_rate=1e-3, b2=0.95)),
    (fo.sgd, dict(learning_rate=1e-3, momentum=0.8)),
    (fo.muon, dict(learning_rate=1e-3, beta=0.9)),
    (fo.kalman_filter, dict(gamma=3.0)),
    (fo.spam_filter, dict(threshold=500.0)),
    (fo.zscore_filter, dict(gamma=2.5)),
    (fo.soft_clip_filter, dict(gamma=2.5)),
    (fo.normalize, dict(eps=1e-6)),
    (fo.rms_normalize, dict(eps=1e-6)),
    (fo.orthogonal_update, dict(ns_steps=4, coefficients="keller")),
]


@pytest.mark.parametrize("factory, kwargs", FACTORIES, ids=lambda x: getattr(x, "__name__", ""))
def test_describe_shows_the_arguments_a_constructor_was_called_with(factory, kwargs):
    text = str(fo.describe(factory(**kwargs)))
    for name, value in kwargs.items():
        if name != "learning_rate":
            assert f"{name}={value!r}" in text, (name, text)


@pytest.mark.parametrize("factory, kwargs", FACTORIES, ids=lambda x: getattr(x, "__name__", ""))
def test_recording_keeps_the_signature_for_inject_hyperparams(factory, kwargs):
    """optax.inject_hyperparams reads the signature; the recording wrapper must not hide it."""
    params = inspect.signature(factory).parameters
    assert set(kwargs) <= set(params)
    assert "args" not in params and "kwargs" not in params


def test_the_record_dies_with_the_transformation():
    tx = fo.filtered_adam(1e-3, gamma=4.0)
    ref = weakref.ref(tx.init)
    del tx
    gc.collect()
    assert ref() is None


def test_equal_arguments_give_equal_descriptions_and_other_arguments_unequal():
    assert fo.describe(fo.adam(1e-3)) == fo.describe(fo.adam(1e-3))
    assert fo.describe(fo.adam(1e-3)) != fo.describe(fo.adam(1e-3, b2=0.99))
    assert fo.describe(optax.chain(fo.adam(1e-3))) != fo.describe(fo.adam(1e-3))
