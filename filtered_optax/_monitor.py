r"""Per-step scalar statistics of any chain, named by where they sit in the state.

:func:`monitor` is a pass-through stage that records the global norm and the RMS of
whatever flows through it at its position in a chain; filters built with ``stats=True``
record :class:`~filtered_optax.FilterStats`. Both are float32 scalars kept in the
optimizer state, so they survive ``jax.jit``, ``lax.scan``, ``nnx.Optimizer``,
checkpoints and sharding, and add no parameter-sized buffer.

:func:`read_stats` gathers all of them into one flat dict. Each name comes from the
stage's path through the state - the labels of ``optax.partition`` and other mappings -
so the same stage in two branches gets two names, where a lookup by field name such as
``optax.tree.get(state, "spike_fraction")`` finds two matches and raises ``KeyError``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from filtered_optax._paths import key_name
from filtered_optax._types import FilterStats

# Levels of detail of a name: mapping keys (partition labels) only; plus sequence
# positions (places in a chain); every key of the path (field names too).
_LABELS, _POSITIONS, _FULL_PATH = 0, 1, 2


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MonitorState:
    """State of :func:`monitor`: two float32 scalars and the stage's static name.

    Attributes:
      norm: global L2 norm of the updates that last passed the stage.
      rms: their root mean square, ``norm / sqrt(number of elements)``.
      name: the name given to :func:`monitor` (None = ``"monitor"``); pytree metadata,
        not an array leaf, so it costs nothing under ``jit`` and is not checkpointed.
    """

    norm: jax.Array
    rms: jax.Array
    name: str | None = dataclasses.field(default=None, metadata={"static": True})


def monitor(name: str | None = None) -> optax.GradientTransformationExtraArgs:
    r"""A pass-through stage that records the norm and RMS of the updates at its position.

    For the updates :math:`u` reaching the stage (all leaves of the tree, :math:`n`
    elements in all) it stores, in float32,

    .. math::
      \mathrm{norm} = \|u\|_2 = \Big(\sum_i |u_i|^2\Big)^{1/2}, \qquad
      \mathrm{rms} = \mathrm{norm} / \sqrt{\max(n, 1)},

    and returns :math:`u` unchanged (the same arrays). Put it first in a chain for the
    gradient norm before clipping, or last in a branch of ``optax.partition`` for the
    update RMS of that parameter group. It accepts and ignores extra arguments, so it
    also works inside :func:`filtered_optax.with_moments` stages. Read the values with
    :func:`read_stats`.

    Args:
      name: a label for this stage in :func:`read_stats`'s names (default
        ``"monitor"``); naming each monitor keeps the names short and stable.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`MonitorState`.

    Example:
      >>> import jax.numpy as jnp, optax, filtered_optax as fo
      >>> tx = optax.chain(fo.monitor("grad"), optax.clip_by_global_norm(1.0))
      >>> state = tx.init({"w": jnp.zeros(4)})
      >>> _, state = tx.update({"w": jnp.full(4, 3.0)}, state)
      >>> {k: float(v) for k, v in fo.read_stats(state).items()}
      {'grad/norm': 6.0, 'grad/rms': 3.0}
    """
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"name must be a non-empty string or None; got name={name!r}.")

    def init_fn(params):
        del params
        return MonitorState(jnp.zeros([], jnp.float32), jnp.zeros([], jnp.float32), name)

    def update_fn(updates, state, params=None, **extra_args):
        del state, params, extra_args
        leaves = jax.tree.leaves(updates)
        # |u|^2 rather than u^2, so that complex updates give a real norm; summed in
        # float32 (or wider) so that bfloat16 updates do not lose the small terms.
        squares = [
            jnp.sum(jnp.square(jnp.abs(u).astype(jnp.promote_types(u.dtype, jnp.float32))))
            for u in leaves
        ]
        size = sum(math.prod(jnp.shape(u)) for u in leaves)
        norm = jnp.sqrt(sum(squares, jnp.zeros([], jnp.float32)))
        rms = norm / math.sqrt(max(size, 1))
        return updates, MonitorState(norm.astype(jnp.float32), rms.astype(jnp.float32), name)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _is_stats(x: Any) -> bool:
    return isinstance(x, (MonitorState, FilterStats))


def _stage_name(stats: MonitorState | FilterStats) -> str:
    if isinstance(stats, MonitorState):
        return stats.name or "monitor"
    return "filter"


def _prefix(path: Sequence[Any], stats: Any, detail: int) -> str:
    """The stage's name at a level of detail (one of the module's three constants)."""
    kept = [
        key
        for key in path
        if detail == _FULL_PATH
        or isinstance(key, jax.tree_util.DictKey)
        or (detail == _POSITIONS and isinstance(key, jax.tree_util.SequenceKey))
    ]
    return "/".join([*map(key_name, kept), _stage_name(stats)])


def _unique_prefixes(found: list[tuple[Any, Any]]) -> list[str]:
    """Short names; only stages whose names collide get longer ones, until none do."""
    detail = [_LABELS] * len(found)
    while True:
        names = [_prefix(path, s, d) for (path, s), d in zip(found, detail)]
        clashes = {n for n in names if names.count(n) > 1}
        longer = [n in clashes and d < _FULL_PATH for n, d in zip(names, detail)]
        if not any(longer):
            return names
        detail = [d + more for d, more in zip(detail, longer)]


def read_stats(state: optax.OptState) -> dict[str, jax.Array]:
    r"""All monitor and filter statistics in an optimizer state, under unique names.

    Walks ``state`` (chains, ``optax.partition`` / ``multi_transform``,
    ``inject_hyperparams``, ``MultiSteps``, a Flax ``nnx.Optimizer``'s ``opt_state``, ...)
    and names each :class:`MonitorState` and :class:`~filtered_optax.FilterStats` by its
    path::

        <partition label>/.../<stage>/<statistic>

    where ``<stage>`` is the monitor's name (``"monitor"`` if unnamed) or ``"filter"``,
    and ``<statistic>`` is ``norm`` / ``rms`` or ``spike_fraction`` / ``mean_gain``.
    Stages whose names would still coincide (say two unnamed monitors in one chain) also
    get their chain positions (``"0/monitor/norm"``, ``"2/monitor/norm"``), and as a last
    resort every key of their path, field names included
    (``"filter_state/0/monitor/norm"``); other names stay short. Names depend only on the
    state's structure, so they are the same at every step, inside and outside ``jit``.

    Args:
      state: an optimizer state (concrete, or traced inside ``jit`` / ``lax.scan``).

    Returns:
      A dict from name to float32 scalar; empty when the optimizer holds no statistics.

    Example:
      >>> import jax.numpy as jnp, optax, filtered_optax as fo
      >>> group = lambda: optax.chain(fo.filtered_adam(1e-3, stats=True), fo.monitor())
      >>> tx = optax.chain(
      ...     fo.monitor("grad"),
      ...     optax.clip_by_global_norm(1.0),
      ...     optax.partition({"a": group(), "b": group()}, {"x": "a", "y": "b"}),
      ... )
      >>> state = tx.init({"x": jnp.zeros(2), "y": jnp.zeros(3)})
      >>> list(fo.read_stats(state))  # doctest: +NORMALIZE_WHITESPACE
      ['grad/norm', 'grad/rms', 'a/filter/spike_fraction', 'a/filter/mean_gain',
       'a/monitor/norm', 'a/monitor/rms', 'b/filter/spike_fraction',
       'b/filter/mean_gain', 'b/monitor/norm', 'b/monitor/rms']
    """
    found = jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_stats)[0]
    found = [(path, leaf) for path, leaf in found if _is_stats(leaf)]
    out = {}
    for prefix, (_, stats) in zip(_unique_prefixes(found), found):
        fields = ("norm", "rms") if isinstance(stats, MonitorState) else stats._fields
        for field in fields:
            # jnp.asarray also unwraps containers such as flax.nnx's OptArray.
            out[f"{prefix}/{field}"] = jnp.asarray(getattr(stats, field), jnp.float32)
    return out
