"""optax's own alias tests, run against our optimizers.

optax ships ``optax/_src/alias_test.py`` in its wheel. Its common ``AliasTest`` cases
(optimization of a parabola and of Rosenbrock's function in float32 and complex64,
extra arguments, ``inject_hyperparams``, explicit and preserved dtypes, state stability
under ``lax.cond``, ``MultiSteps``) are run here with ``adam``, ``adamw``, ``sgd``,
``rmsprop`` and ``adabelief`` replaced by ours - once as the plain re-expressions and
once with ``adam`` / ``adamw`` replaced by ``filtered_adam`` / ``filtered_adamw`` (filter
on, defaults). Only the cases of those five optimizers run; each is one pytest test.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
import unittest

import pytest

import filtered_optax as fo

pytest.importorskip("absl.testing.parameterized")

_FIVE = ("adam", "adamw", "sgd", "rmsprop", "adabelief")
# optax's test of explicit state dtypes names its optimizers itself.
_EXPLICIT_DTYPE_NAMES = {"sgd_mom", "adam", "adamw"}
REPLACEMENTS = {
    "plain": {name: getattr(fo, name) for name in _FIVE},
    "filtered": {
        **{name: getattr(fo, name) for name in _FIVE},
        "adam": fo.filtered_adam,
        "adamw": fo.filtered_adamw,
    },
}


def _import_alias_test() -> types.ModuleType:
    """optax's alias_test module; sklearn (used only by its L-BFGS tests) may be absent."""
    try:
        importlib.import_module("sklearn")
    except ImportError:
        stub = types.ModuleType("sklearn")
        stub.datasets = types.ModuleType("sklearn.datasets")
        stub.linear_model = types.ModuleType("sklearn.linear_model")
        sys.modules.setdefault("sklearn", stub)
    try:
        return importlib.import_module("optax._src.alias_test")
    except ImportError as err:  # an optax wheel without its tests
        pytest.skip(f"optax's alias_test is not importable: {err}")


alias_test = _import_alias_test()


def _case_params(method) -> dict:
    """The keyword arguments absl's parameterized bound into one generated test."""
    return dict(inspect.getclosurevars(method).nonlocals.get("testcase_params", {}))


def _our_cases() -> list[str]:
    names = []
    for name in sorted(dir(alias_test.AliasTest)):
        if not name.startswith("test_"):
            continue
        opt_name = _case_params(getattr(alias_test.AliasTest, name)).get("opt_name")
        if opt_name in _FIVE or (
            name.startswith("test_explicit_dtype") and opt_name in _EXPLICIT_DTYPE_NAMES
        ):
            names.append(name)
    return names


CASES = _our_cases()


class _Alias(types.ModuleType):
    """``optax._src.alias`` as the test module sees it, with our optimizers in place."""

    def __init__(self, real: types.ModuleType, ours: dict):
        super().__init__(real.__name__)
        self._real, self._ours = real, ours

    def __getattr__(self, name: str):
        return self._ours[name] if name in self._ours else getattr(self._real, name)


def test_the_cases_of_our_five_optimizers_are_found():
    # 6 configurations of the five optimizers in _OPTIMIZERS_UNDER_TEST, 7 test methods.
    kinds = {name.rstrip("0123456789") for name in CASES}
    assert {"test_optimization", "test_explicit_dtype", "test_gradient_accumulation"} <= kinds
    assert len(CASES) >= 100


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("variant", sorted(REPLACEMENTS))
def test_optax_alias_case(variant, case, monkeypatch):
    monkeypatch.setattr(alias_test, "alias", _Alias(alias_test.alias, REPLACEMENTS[variant]))
    result = unittest.TestResult()
    alias_test.AliasTest(case).run(result)
    problems = [text for _, text in result.failures + result.errors]
    assert not problems, "\n".join(problems)
    if result.skipped:
        pytest.skip(result.skipped[0][1])
