"""Key paths to names: one spelling of a parameter's path for routing, monitor and describe.

A leaf of the import graph (it imports nothing from the package).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from filtered_optax._types import PathNames

# The attribute under which an ``nnx.Variable`` exposes its array; dropped at the end of a
# path so that Variables and plain arrays get the same names.
_VARIABLE_VALUE = "value"


def key_name(key: Any) -> str:
    """One key of a ``jax.tree_util`` key path as a string.

    ``DictKey`` (dicts, nnx.State) and ``FlattenedIndexKey`` give their key, ``SequenceKey``
    its index, ``GetAttrKey`` (NamedTuples, dataclasses, nnx.Variable) its attribute name.
    """
    if isinstance(key, (jax.tree_util.DictKey, jax.tree_util.FlattenedIndexKey)):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return str(key.name)
    return str(key)


def path_names(path: Sequence[Any]) -> PathNames:
    """Converts a ``jax.tree_util`` key path into a tuple of strings.

    Each key is named by :func:`key_name`; a trailing ``.value`` attribute (how an
    ``nnx.Variable`` exposes its array) is dropped, so Variables and pure arrays give the
    same names.

    Args:
      path: a key path, as ``jax.tree_util.tree_flatten_with_path`` returns.

    Returns:
      The names, outermost first.

    Example:
      >>> import jax, jax.numpy as jnp, filtered_optax as fo
      >>> [fo.path_names(p) for p, _ in
      ...  jax.tree_util.tree_flatten_with_path({"mlp": [jnp.zeros(2)]})[0]]
      [('mlp', '0')]
    """
    names = [key_name(key) for key in path]
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and names[-1] == _VARIABLE_VALUE:
        names.pop()
    return tuple(names)


def path_text(path: Sequence[Any]) -> str:
    """``"a/b/kernel"`` for a key path (``"<root>"`` for the empty path of a bare array)."""
    return "/".join(path_names(path)) or "<root>"
