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
import optax


def concrete_float(value: Any) -> float | None:
    """Returns ``value`` as a Python float, or None when it is traced or not a scalar.

    A complex scalar with a zero imaginary part (``optax.inject_hyperparams`` casts
    hyperparameters to the parameters' dtype, complex for complex parameters) gives its
    real part; one with a non-zero imaginary part gives None (:func:`check_scalar`
    rejects it).
    """
    if isinstance(value, jax.core.Tracer) or callable(value):
        return None
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        return None
    if array.shape != () or not np.issubdtype(array.dtype, np.number):
        return None
    if np.iscomplexobj(array):
        return float(array.real) if array.imag == 0 else None
    return float(array)


_SCALAR = "a real number (a Python int or float, a NumPy or JAX scalar, or a 0-d array)"


def _scalar_problem(value: Any) -> str | None:
    """Why ``value`` is not a real scalar hyperparameter, or None when it is one."""
    if isinstance(value, (bool, np.bool_)):
        return f"got the bool {value!r}"
    if isinstance(value, (int, float)):
        return None
    if isinstance(value, complex):
        return None if value.imag == 0 else f"got the complex number {value!r}"
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None:
        return f"got {type(value).__name__} {value!r}"
    if tuple(shape) != ():
        return f"got an array of shape {tuple(shape)}"
    if not np.issubdtype(np.dtype(dtype), np.number):
        return f"got a 0-d array of dtype {np.dtype(dtype).name}"
    if np.iscomplexobj(np.empty((), dtype)) and not isinstance(value, jax.core.Tracer):
        if np.asarray(value).imag != 0:
            return f"got the complex value {value!r} (a non-zero imaginary part)"
    return None


def check_scalar(
    name: str,
    value: Any,
    *,
    schedule: bool = False,
    optional: bool = False,
    hint: str = "",
) -> None:
    """Raises ``TypeError`` unless ``value`` is a real scalar hyperparameter.

    Accepted: Python ints and floats, NumPy and JAX scalars and 0-d arrays of a numeric
    (non-bool) dtype, tracers of shape () (``jax.jit``, ``optax.inject_hyperparams``),
    complex values with a zero imaginary part (``inject_hyperparams`` casts to complex
    parameters' dtype); also a schedule (a callable of the step count) when ``schedule``
    and None when ``optional``. Everything else - strings, lists, arrays of another
    shape, bools - fails here, at construction, rather than later inside a traced step.

    Args:
      name: the argument's name, quoted in the error.
      value: the value given.
      schedule: a callable is allowed (a learning-rate schedule).
      optional: None is allowed.
      hint: a clause appended to the error (e.g. how to turn a feature off).
    """
    allowed = _SCALAR + (", or a schedule (a callable of the step count)" if schedule else "")
    allowed += ", or None" if optional else ""
    if value is None:
        if optional:
            return
        problem = "got None"
    elif callable(value) and not hasattr(value, "dtype"):
        if schedule:
            return
        problem = (
            f"got the callable {getattr(value, '__name__', type(value).__name__)}; to "
            f"schedule {name}, wrap the optimizer: optax.inject_hyperparams(factory)"
            f"({name}=schedule)"
        )
    else:
        problem = _scalar_problem(value)
    if problem is not None:
        raise TypeError(f"{name} must be {allowed}; {problem}{'; ' + hint if hint else ''}.")


def check_bool(name: str, value: Any) -> None:
    """Raises ``TypeError`` unless ``value`` is a bool (a switch, never traced)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}.")


def check_range(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    schedule: bool = False,
    hint: str = "",
) -> None:
    """Raises ``TypeError`` for a value that is not a real scalar (see
    :func:`check_scalar`) and ``ValueError`` when a concrete one lies outside the interval.

    Args:
      name: the argument's name, quoted in the error.
      value: the value given; traced values and schedules are not range-checked.
      low, high: the bounds (None = unbounded).
      low_open, high_open: whether each bound is excluded.
      schedule: a schedule (a callable of the step count) is allowed.
      hint: appended to the ``TypeError`` (e.g. how to turn a feature off).
    """
    check_scalar(name, value, schedule=schedule, hint=hint)
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


def check_non_negative(name: str, value: Any, *, schedule: bool = False) -> None:
    """A real scalar >= 0 (or, with ``schedule``, a schedule)."""
    check_range(name, value, low=0.0, schedule=schedule)


def check_learning_rate(value: Any, name: str = "learning_rate") -> None:
    """A constant learning rate must be finite and >= 0; schedules are not checked."""
    check_scalar(name, value, schedule=True)
    x = concrete_float(value)
    if x is not None and not (math.isfinite(x) and x >= 0.0):
        raise ValueError(
            f"{name} must be a finite number >= 0 or a schedule (a callable of the "
            f"step count); got {name}={value!r}."
        )


def check_non_negative_int(name: str, value: Any) -> None:
    """Raises ``ValueError`` unless a concrete ``value`` is a finite integer >= 0
    (``TypeError`` when it is not a real scalar at all)."""
    check_scalar(name, value)
    x = concrete_float(value)
    if x is not None and (not math.isfinite(x) or x < 0 or x != int(x)):
        raise ValueError(f"{name} must be an integer >= 0; got {name}={value!r}.")


def check_float_dtype(name: str, value: Any, *, allow_complex: bool = False) -> Any:
    """Returns the canonical floating dtype ``value`` names (None stays None).

    Raises ``ValueError`` for anything that is not a floating dtype (or, with
    ``allow_complex``, a complex one, as optax allows for a first moment): an integer
    storage dtype would silently truncate the moment it stores.
    """
    if value is None:
        return None
    kinds = "a floating dtype such as jnp.float32 or jnp.bfloat16"
    kinds += " (or a complex dtype such as jnp.complex64)" if allow_complex else ""
    message = f"{name} must be {kinds}, or None; got {name}={value!r}."
    try:
        dtype = jax.dtypes.canonicalize_dtype(value)
    except TypeError as err:
        raise ValueError(message) from err
    if not jnp.issubdtype(dtype, jnp.inexact if allow_complex else jnp.floating):
        raise ValueError(message)
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


def is_masked(x: Any) -> bool:
    """An ``optax.MaskedNode``: a leaf that an ``optax.masked`` / ``partition`` left out."""
    return isinstance(x, optax.MaskedNode)


def check_like_state(updates: Any, reference: Any) -> None:
    """The gradient tree must have the structure and leaf shapes of the state's buffers.

    ``reference`` is a buffer tree built by ``init`` from the parameters (None: nothing to
    check). Leaves masked out (``optax.MaskedNode``) on either side are not compared.

    Raises:
      ValueError: naming the first gradient leaf whose shape differs, or both structures.
    """
    if reference is None:
        return
    got = jax.tree.structure(updates, is_leaf=is_masked)
    want = jax.tree.structure(reference, is_leaf=is_masked)
    if got != want:
        raise ValueError(
            "the gradient pytree does not match the optimizer state (built by init from "
            f"the parameters): gradient structure {got} vs state structure {want}."
        )
    pairs = zip(
        jax.tree_util.tree_flatten_with_path(updates, is_leaf=is_masked)[0],
        jax.tree.leaves(reference, is_leaf=is_masked),
    )
    for (path, g), r in pairs:
        if not (is_masked(r) or is_masked(g)) and jnp.shape(g) != jnp.shape(r):
            raise ValueError(
                f"gradient leaf {jax.tree_util.keystr(path) or '<root>'} has shape "
                f"{jnp.shape(g)} but the optimizer state was initialized for shape "
                f"{jnp.shape(r)}."
            )
