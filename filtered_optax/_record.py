"""What each of our constructors was called with, for :func:`filtered_optax.describe`.

An optax transformation is a pair of closures, so once built it no longer says which
hyperparameters made it. The public constructors of this package therefore note their
resolved arguments in a weak registry keyed by the returned transformation's ``init``
function (a new closure per call). The note dies with the transformation, and nothing
about the transformation itself changes.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Record(NamedTuple):
    """One constructor call.

    Attributes:
      name: the constructor's public name, e.g. ``"fo.filtered_adam"``.
      arguments: every argument by name, defaults applied.
      given: names of the arguments the caller passed, or None when unknown.
    """

    name: str
    arguments: dict[str, Any]
    given: tuple[str, ...] | None


_RECORDS: weakref.WeakKeyDictionary[Any, Record] = weakref.WeakKeyDictionary()


def record(
    tx: Any, name: str, arguments: dict[str, Any], given: tuple[str, ...] | None = None
) -> Any:
    """Notes that ``tx`` was built by ``name(**arguments)`` and returns ``tx`` unchanged.

    The outermost constructor wins: a factory that returns another factory's result
    (``kalman_filter`` returning ``identity_filter()``) overwrites the inner note.
    """
    try:
        _RECORDS[tx.init] = Record(name, arguments, given)
    except (AttributeError, TypeError):  # no init, or one that cannot be weakly referenced
        pass
    return tx


def lookup(tx: Any) -> Record | None:
    """The :class:`Record` of ``tx``, or None when none of our constructors built it."""
    try:
        return _RECORDS.get(tx.init)
    except (AttributeError, TypeError):
        return None


def recorded(fn: F) -> F:
    """Decorator: the transformation ``fn`` returns is recorded with its bound arguments.

    The wrapper keeps ``fn``'s signature and docstring (``inspect.signature`` follows
    ``__wrapped__``), so ``optax.inject_hyperparams(fn)`` sees the same parameters.
    """
    signature = inspect.signature(fn)
    name = "fo." + fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tx = fn(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        given = tuple(bound.arguments)
        bound.apply_defaults()
        return record(tx, name, dict(bound.arguments), given)

    return wrapper  # type: ignore[return-value]
