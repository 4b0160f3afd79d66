"""fo.describe writes out schedules, so descriptions that must differ do (issue #17, item 3)."""

from __future__ import annotations

import json

import optax
import optax.schedules
import pytest

import filtered_optax as fo

# Every schedule factory optax.schedules exports, each built twice: (a, b) differ in one
# argument, (a, a_again) are built the same way.
SCHEDULES = {
    "constant_schedule": lambda x: optax.constant_schedule(x),
    "linear_schedule": lambda x: optax.linear_schedule(0.0, x, 100, 10),
    "polynomial_schedule": lambda x: optax.polynomial_schedule(x, 0.0, 2, 100),
    "cosine_decay_schedule": lambda x: optax.cosine_decay_schedule(x, 100, alpha=0.1),
    "exponential_decay": lambda x: optax.exponential_decay(x, 100, 0.5),
    "piecewise_constant_schedule": lambda x: optax.piecewise_constant_schedule(
        1e-3, {100: x * 100, 200: 0.5}
    ),
    "piecewise_interpolate_schedule": lambda x: optax.piecewise_interpolate_schedule(
        "cosine", 1e-3, {100: x * 100}
    ),
    "warmup_constant_schedule": lambda x: optax.schedules.warmup_constant_schedule(0.0, x, 10),
    "warmup_cosine_decay_schedule": lambda x: optax.warmup_cosine_decay_schedule(
        0.0, x, 100, 10_000
    ),
    "warmup_exponential_decay_schedule": lambda x: optax.warmup_exponential_decay_schedule(
        0.0, x, 100, 1000, 0.5
    ),
    "sgdr_schedule": lambda x: optax.sgdr_schedule(
        [dict(init_value=1e-4, peak_value=x, warmup_steps=10, decay_steps=100)] * 2
    ),
    "cosine_onecycle_schedule": lambda x: optax.cosine_onecycle_schedule(1000, x),
    "linear_onecycle_schedule": lambda x: optax.linear_onecycle_schedule(1000, x),
    "join_schedules": lambda x: optax.join_schedules(
        [optax.constant_schedule(1e-3), optax.linear_schedule(1e-3, x, 10)], [50]
    ),
}


def test_every_optax_schedule_is_in_the_table():
    exported = {
        n
        for n in dir(optax.schedules)
        if "schedule" in n
        and not n.startswith("_")
        and n not in ("Schedule", "StatefulSchedule", "WrappedSchedule")
        and "hyperparams" not in n
    } | {"exponential_decay"}
    assert exported <= set(SCHEDULES)


def _lr_text(tx) -> str:
    return dict(fo.describe(tx).hyperparams)["learning_rate"]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_that_differ_describe_differently(name):
    make = SCHEDULES[name]
    a, a_again, b = (fo.describe(fo.adamw(make(x))) for x in (3e-3, 3e-3, 1e-3))
    assert a == a_again
    assert a != b
    text = _lr_text(fo.adamw(make(3e-3)))
    assert "not describable" not in text and "<locals>" not in text
    if "onecycle" not in name:  # (onecycle stores scales derived from the peak)
        assert "0.003" in text or "0.3" in text  # the value is written out
    # optax's own chain, where the schedule sits inside scale_by_learning_rate, too.
    assert fo.describe(optax.adamw(make(3e-3))) != fo.describe(optax.adamw(make(1e-3)))


def test_the_issues_example():
    d = fo.describe
    one = d(fo.adamw(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 100, 10_000)))
    two = d(fo.adamw(optax.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 10_000)))
    assert one != two
    text = dict(one.hyperparams)["learning_rate"]
    assert text.startswith("optax.join_schedules(schedules=[optax.polynomial_schedule(")
    assert "optax.cosine_decay_schedule(init_value=0.003, decay_steps=9900" in text
    assert text.endswith("boundaries=[100])")


def test_lambdas_are_told_apart_by_their_code():
    def make(lr):
        return lambda count: lr  # a closure over a number: written out

    first = lambda count: 1e-3  # noqa: E731
    second = lambda count: 2e-3  # noqa: E731
    assert fo.describe(fo.adam(first)) == fo.describe(fo.adam(first))
    assert fo.describe(fo.adam(first)) != fo.describe(fo.adam(second))
    assert "(code " in _lr_text(fo.adam(first))
    assert "lr=0.001" in _lr_text(fo.adam(make(1e-3)))
    assert fo.describe(fo.adam(make(1e-3))) != fo.describe(fo.adam(make(2e-3)))


class _Schedule:
    """A callable object: nothing about it can be read."""

    def __call__(self, count):
        return 1e-3


def test_an_undescribable_callable_says_so_and_equals_only_itself():
    one, two = _Schedule(), _Schedule()
    text = _lr_text(fo.adam(one))
    assert "not describable" in text and "_Schedule" in text
    assert fo.describe(fo.adam(one)) == fo.describe(fo.adam(one))
    assert fo.describe(fo.adam(one)) != fo.describe(fo.adam(two))
    # A closure over something that cannot be written out is undescribable as well.
    big = lambda count, table=tuple(range(100)): table[0]  # noqa: E731
    assert "(code " in _lr_text(fo.adam(big))  # a default tuple of numbers is written out
    obj = _Schedule()
    closure = (lambda o: lambda count: o(count))(obj)
    assert "not describable" in _lr_text(fo.adam(closure))


def test_json_round_trip_keeps_schedules_and_tokens():
    for tx in (
        fo.adamw(SCHEDULES["sgdr_schedule"](1e-3)),
        fo.adam(_Schedule()),
        optax.inject_hyperparams(fo.filtered_adam)(learning_rate=SCHEDULES["join_schedules"](1e-3)),
    ):
        d = fo.describe(tx)
        back = fo.Description.from_dict(json.loads(json.dumps(d.to_dict())))
        assert back == d


def test_inject_hyperparams_shows_the_schedule():
    sched = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 100, 10_000)
    desc = fo.describe(optax.inject_hyperparams(fo.filtered_adam)(learning_rate=sched))
    assert dict(desc.hyperparams)["learning_rate"].startswith("optax.join_schedules(")
