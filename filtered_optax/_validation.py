"""Hyperparameter checks shared by every factory.

Each check runs once, when a factory is called, and only on concrete values: a value
that ``optax.inject_hyperparams`` passes in as a traced array is skipped, so validation
never breaks tracing.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def concrete_float(value: Any) -> float | None:
    """Returns ``value`` as a Python float, or None when it is traced or not a scalar."""
    if isinstance(value, jax.core.Tracer) or callable(value):
        return None
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        return None
    if array.shape != () or not np.issubdtype(array.dtype, np.number):
        return None
    return float(array)


def check_range(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raises ``ValueError`` when a concrete ``value`` lies outside the given interval.

    Args:
      name: the argument's name, quoted in the error.
      value: the value given; traced values and schedules are not checked.
      low, high: the bounds (None = unbounded).
      low_open, high_open: whether each bound is excluded.
    """
    x = concrete_float(value)
    if x is None:
        return
    too_low = low is not None and (x <= low if low_open else x < low)
    too_high = high is not None and (x >= high if high_open else x > high)
    if math.isnan(x) or too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must lie in {left}{lo}, {hi}{right}; got {name}={value!r}.")


def check_decay(name: str, value: Any) -> None:
    """Decay rates of exponential moving averages live in [0, 1)."""
    check_range(name, value, low=0.0, high=1.0, high_open=True)


def check_non_negative(name: str, value: Any) -> None:
    check_range(name, value, low=0.0)


def check_learning_rate(value: Any, name: str = "learning_rate") -> None:
    """A constant learning rate must be finite and >= 0; schedules are not checked."""
    x = concrete_float(value)
    if x is not None and not (math.isfinite(x) and x >= 0.0):
        raise ValueError(
            f"{name} must be a finite number >= 0 or a schedule (a callable of the "
            f"step count); got {name}={value!r}."
        )


def check_non_negative_int(name: str, value: Any) -> None:
    """Raises ``ValueError`` unless a concrete ``value`` is a finite integer >= 0."""
    x = concrete_float(value)
    if x is not None and (not math.isfinite(x) or x < 0 or x != int(x)):
        raise ValueError(f"{name} must be an integer >= 0; got {name}={value!r}.")


def check_float_dtype(name: str, value: Any) -> Any:
    """Returns the canonical floating dtype ``value`` names (None stays None).

    Raises ``ValueError`` for anything that is not a floating dtype: an integer storage
    dtype would silently truncate the moment it stores.
    """
    if value is None:
        return None
    try:
        dtype = jax.dtypes.canonicalize_dtype(value)
    except TypeError as err:
        raise ValueError(
            f"{name} must be a floating dtype such as jnp.float32 or jnp.bfloat16, or None; "
            f"got {name}={value!r}."
        ) from err
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{name} must be a floating dtype such as jnp.float32 or jnp.bfloat16, or None; "
            f"got {name}={value!r}."
        )
    return dtype


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Raises ``ValueError`` when a string option is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}; got {name}={value!r}.")


def check_leaf_dtypes(tree: Any, what: str, *, owner: str, allow_complex: bool = True) -> None:
    """Rejects integer and boolean leaves (and complex ones unless allowed), naming the leaf.

    Only dtypes are read, so this works on abstract values. Moment buffers made for an
    integer leaf would be integers, and ``nu`` cast back every step would truncate to zero.
    """
    allowed = jnp.inexact if allow_complex else jnp.floating
    kinds = "floating (or complex) arrays" if allow_complex else "real floating arrays"
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and not jnp.issubdtype(dtype, allowed):
            name = jax.tree_util.keystr(path) or "<root>"
            raise TypeError(
                f"{owner} optimizes {kinds} only; {what} leaf {name} has dtype {dtype}. "
                "Exclude it with optax.masked or optax.partition (e.g. optax.set_to_zero()), "
                "or cast it to a float dtype."
            )
