"""Shardings for an optimizer state: each moment like its parameter, the rest replicated.

``jax.jit(tx.init)(params)`` alone leaves ``mu`` / ``nu`` replicated: zeros do not depend on
the parameters' values, so nothing propagates the parameters' shardings to them. Passing
``out_shardings=state_shardings(tx, params)`` creates every state buffer directly in its
shards, with no full copy on any device.

The state's structure comes from ``jax.eval_shape(tx.init, params)`` (no computation). optax
states hold copies of the parameter tree (``mu``, ``nu``, ``trace``, ... possibly inside
``optax.chain`` / ``partition`` / ``masked`` / ``inject_hyperparams`` states), so a state leaf
whose key path ends with a parameter's key path and whose shape equals that parameter's shape
is that parameter's moment and takes its sharding; every other leaf (step counts, scalars,
hyperparameters, statistics) is replicated over the parameters' mesh.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec, Sharding

KeyPath = tuple[Any, ...]


def _param_table(params: Any, shardings: Any) -> dict[KeyPath, tuple[tuple[int, ...], Any]]:
    """``{key path: (shape, sharding)}`` for every parameter leaf."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if shardings is None:
        sh = [getattr(leaf, "sharding", None) for _, leaf in leaves]
    else:
        sh = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, Sharding))
        if len(sh) != len(leaves):
            raise ValueError(
                f"shardings must have one Sharding per parameter; got {len(sh)} shardings "
                f"for {len(leaves)} parameters."
            )
    table = {}
    for (path, leaf), sharding in zip(leaves, sh):
        if not hasattr(leaf, "shape"):
            raise TypeError(
                "params must hold arrays or jax.ShapeDtypeStruct (shapes are needed to build "
                f"the state); got a {type(leaf).__name__} at {jax.tree_util.keystr(path)}."
            )
        if not isinstance(sharding, Sharding):
            raise TypeError(
                f"no sharding for the parameter at {jax.tree_util.keystr(path)}: pass "
                "committed arrays, jax.ShapeDtypeStruct(..., sharding=...), or shardings=."
            )
        table[tuple(path)] = (tuple(leaf.shape), sharding)
    return table


def _replicated(shardings: Sequence[Sharding]) -> Sharding:
    """Replicated over the first NamedSharding's mesh; a lone device's sharding otherwise."""
    for s in shardings:
        if isinstance(s, NamedSharding):
            return NamedSharding(s.mesh, PartitionSpec())
    if not shardings:
        raise ValueError("params must hold at least one parameter; got an empty tree.")
    return shardings[0]


def _owner(path: KeyPath, shape: tuple[int, ...], table: dict) -> Any:
    """The sharding of the parameter whose path ends ``path`` (longest match, same shape)."""
    for start in range(len(path) + 1):
        entry = table.get(path[start:])
        if entry is not None and entry[0] == shape:
            return entry[1]
    return None


def state_shardings(tx: optax.GradientTransformation, params: Any, shardings: Any = None) -> Any:
    r"""The shardings of ``tx.init(params)``: each moment like its parameter, the rest replicated.

    .. math::
        \mathrm{sharding}(s) = \begin{cases} \mathrm{sharding}(p) & s \text{ is a copy of
        parameter } p \text{ (path ends with } p\text{'s, same shape)} \\
        \text{replicated} & \text{otherwise} \end{cases}

    Args:
        tx: any optax ``GradientTransformation`` (a filtered_optax optimizer or a chain, a
            ``partition``, an ``inject_hyperparams`` wrapper, ...).
        params: the parameters (committed arrays) or their shapes (``jax.ShapeDtypeStruct``,
            e.g. from ``jax.eval_shape``, with ``sharding=`` set unless ``shardings`` is given);
            any pytree, including ``flax.nnx.State``.
        shardings: optional tree of ``jax.sharding.Sharding``, one per parameter (in the
            parameters' leaf order), overriding the parameters' own.

    Returns:
        A pytree of ``Sharding`` with the structure of ``tx.init(params)``, for
        ``jax.jit(tx.init, out_shardings=...)`` and the ``out_shardings`` of a train step.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import filtered_optax as fo
        >>> params = {"w": jnp.zeros((4, 3))}
        >>> tx = fo.filtered_adam(1e-3)
        >>> state = jax.jit(tx.init, out_shardings=fo.state_shardings(tx, params))(params)

    References:
        JAX, "Distributed arrays and automatic parallelization"
        (docs.jax.dev/en/latest/notebooks/Distributed_arrays_and_automatic_parallelization.html).
    """
    table = _param_table(params, shardings)
    replicated = _replicated([s for _, s in table.values()])
    abstract = jax.eval_shape(tx.init, params)

    def pick(path: KeyPath, leaf: Any) -> Sharding:
        shape = tuple(getattr(leaf, "shape", ()))
        owner = _owner(tuple(path), shape, table) if shape else None
        return replicated if owner is None else owner

    return jax.tree_util.tree_map_with_path(pick, abstract)
