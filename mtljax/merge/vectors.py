"""Task vectors: the difference a fine-tuning made to a pretrained model (Ilharco et al., 2023, "Editing
Models with Task Arithmetic", §2: ``τ_t = θ_t − θ_0``), and the checks every merge needs.

Every merging method of :mod:`mtljax.merge` is a pure function ``method(pretrained, finetuned, **kwargs)
-> params`` over parameter pytrees of *one structure*: ``pretrained`` is ``θ_0``, ``finetuned`` a
sequence of ``θ_t`` with exactly ``θ_0``'s paths, shapes and dtypes (call :func:`check_compatible`
first: it names the first path that differs). Those trees are the *merge domain*: the parameters all
experts share with the pretrained model (a ViT's backbone); task-specific parts (heads) are not merged
and are handled by the caller (:mod:`mtljax.merge.experts`).

All functions here are ``jax.tree.map`` compositions: jit-able, and sharding-preserving (every output
leaf is an elementwise function of the inputs' leaves, so a sharded input stays sharded and nothing is
gathered to one host).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


class MergeError(ValueError):
    """A merge that cannot be done as asked; the message is one line naming the argument or path."""


def path_string(path) -> str:
    """``backbone/block0/attn/query/kernel`` for a ``jax.tree_util`` key path."""
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return "/".join(parts)


def flatten(tree: PyTree) -> dict[str, Any]:
    """``{path: leaf}`` in the tree's (sorted-key) order."""
    return {path_string(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: Mapping[str, Any]) -> dict:
    """Nested dicts from ``{a/b/c: leaf}`` (the inverse of :func:`flatten` for dict trees)."""
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        *scopes, name = path.split("/")
        for s in scopes:
            node = node.setdefault(s, {})
        node[name] = leaf
    return out


def check_compatible(pretrained: PyTree, finetuned: PyTree, name: str = "finetuned") -> None:
    """Raise :class:`MergeError` naming the first path where ``finetuned`` differs from ``pretrained``
    in presence, shape or dtype."""
    ref, other = flatten(pretrained), flatten(finetuned)
    for path in sorted(set(ref) | set(other)):
        if path not in other:
            raise MergeError(f"{name}: lacks the pretrained parameter {path!r}")
        if path not in ref:
            raise MergeError(f"{name}: has {path!r}, which the pretrained model lacks")
        a, b = ref[path], other[path]
        if tuple(np.shape(a)) != tuple(np.shape(b)):
            raise MergeError(f"{name}: {path!r} has shape {tuple(np.shape(b))}, the pretrained one "
                             f"{tuple(np.shape(a))}")
        if jnp.result_type(a) != jnp.result_type(b):
            raise MergeError(f"{name}: {path!r} has dtype {jnp.result_type(b)}, the pretrained one "
                             f"{jnp.result_type(a)}")


def task_vector(pretrained: PyTree, finetuned: PyTree) -> PyTree:
    """``τ = θ_t − θ_0`` leaf by leaf."""
    return jax.tree.map(lambda f, p: f - p, finetuned, pretrained)


def task_vectors(pretrained: PyTree, finetuned: Sequence[PyTree]) -> list[PyTree]:
    return [task_vector(pretrained, f) for f in finetuned]


def apply(pretrained: PyTree, vector: PyTree, scale: float | jax.Array = 1.0) -> PyTree:
    """``θ_0 + scale · τ`` (in the pretrained parameters' dtype)."""
    return jax.tree.map(lambda p, v: (p + scale * v).astype(p.dtype), pretrained, vector)


def stack(trees: Sequence[PyTree]) -> PyTree:
    """One tree whose leaves have a leading axis of ``len(trees)``."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def global_norm(tree: PyTree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def check_finetuned(pretrained: PyTree, finetuned: Sequence[PyTree]) -> list[PyTree]:
    """The common argument check of every merge: ``finetuned`` is a non-empty sequence of trees each
    compatible with ``pretrained`` (:func:`check_compatible`, named ``finetuned[i]``). Runs in plain
    Python on shapes and dtypes only, so under ``jax.jit`` it fails at trace time, before compilation.
    Returns ``finetuned`` as a list."""
    if isinstance(finetuned, Mapping) or not isinstance(finetuned, Sequence):
        raise MergeError(f"finetuned: must be a sequence of parameter trees, got {type(finetuned).__name__}")
    finetuned = list(finetuned)
    if not finetuned:
        raise MergeError("finetuned: must hold at least one fine-tuned model, got an empty sequence")
    for i, tree in enumerate(finetuned):
        check_compatible(pretrained, tree, name=f"finetuned[{i}]")
    return finetuned
