"""Types shared by the stages: the moment view, moment rules, filter results, matrix views.

A leaf of the import graph: it imports nothing from the package, so every other module can
use these types without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax

Updates = Any
Params = Any
# A learning rate (or any hyperparameter optax schedules): a number, or a function of the
# step count such as ``optax.cosine_decay_schedule(...)``.
ScalarOrSchedule = float | jax.Array | Callable[[Any], Any]
# A pytree of booleans with the parameters' structure, or a function of the parameters
# returning one (as ``optax.masked`` and ``optax.adamw``'s ``mask`` take).
MaskOrFn = Any
# Path components of a parameter, e.g. ("block", "attn", "query", "kernel").
PathNames = tuple[str, ...]
Shape = tuple[int, ...]
# Newton–Schulz coefficients: a preset name, one (a, b, c) triple or a sequence of them.
Coefficients = str | Sequence[float] | Sequence[Sequence[float]]


class Moments(NamedTuple):
    """Read-only view of the moment buffers that stages receive.

    Attributes:
      count: completed steps. In ``prev_moments`` (seen by filters) this is the count
        *before* this update, in ``moments`` (seen by scales) the count after it.
      mu: first-moment tree (EMA of gradients, or a momentum trace), or None when the
        moment rule keeps none.
      nu: second-moment tree, or None when the moment rule keeps none.
      b1: decay of ``mu`` (0 when it keeps none), needed for bias correction.
      b2: decay of ``nu`` (0 when it keeps none).
    """

    count: jax.Array
    mu: Updates
    nu: Updates
    b1: Any
    b2: Any


class MomentRule(NamedTuple):
    """How the moment buffers are created and advanced.

    Attributes:
      init: ``params -> (mu, nu)``; either may be None when the rule keeps no such buffer.
        Must not inspect leaf values (so ``jax.eval_shape`` works).
      update: ``(g~, mu, nu) -> (mu, nu)``.
      b1: decay of ``mu`` passed on to the stages in the :class:`Moments` view.
      b2: decay of ``nu`` likewise.
    """

    init: Callable[[Params], tuple[Updates, Updates]]
    update: Callable[[Updates, Updates, Updates], tuple[Updates, Updates]]
    b1: Any
    b2: Any


class FilterResult(NamedTuple):
    """What a filter's math returns for one array.

    Attributes:
      filtered: the filtered gradient, in the gradient's dtype.
      is_spike: bool array, True where the element was clipped as a spike.
      gain: float32 effective gain ``(g~ - m_hat) / (g - m_hat)``: 1 where the gradient
        passes unchanged, ``K`` where it is smoothed, below 1 where it is clipped.
    """

    filtered: jax.Array
    is_spike: jax.Array
    gain: jax.Array


class FilterStats(NamedTuple):
    """Scalar per-step statistics a filter stage keeps when ``stats=True``.

    Attributes:
      spike_fraction: fraction of all gradient elements clipped as spikes this step.
      mean_gain: mean effective gain over all elements (1 = nothing changed).
    """

    spike_fraction: jax.Array
    mean_gain: jax.Array


class MatrixSpec(NamedTuple):
    """How a parameter tensor is viewed as matrices ``(fan_in, fan_out)``.

    Attributes:
      reduction_axes: axes contracted with the layer input (fan-in).
      output_axes: axes of the layer output (fan-out).

    Axes in neither tuple are batch (stack) axes: each index along them is its own matrix.
    """

    reduction_axes: tuple[int, ...]
    output_axes: tuple[int, ...]


# What a routing rule answers for one parameter: "muon", "adam", a MatrixSpec, or None
# (defer to the presets).
Route = Any
RouteFn = Callable[[PathNames, Shape], Route]
