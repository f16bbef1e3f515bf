"""Trainable and frozen parameters: path patterns, and the split of a parameter pytree into the two.

A parameter's *path* is its dict keys joined by ``/`` (``block2/attention/query/kernel``,
``heads_left/dense/bias``). A run trains the parameters whose path matches one of a list of patterns
(``config.optim.trainable``); the rest are frozen. A pattern is a regular expression *searched* in the
path (Python's ``re.search``): ``"lora"`` matches every path that contains ``lora``, ``"^heads_"`` the
heads, ``"block[23]/"`` two blocks, ``"/bias$"`` every bias.

Frozen parameters are removed from the tree the optax chain sees, with optax's own placeholder for a
masked-out subtree (``optax.MaskedNode``, what ``optax.masked`` and ``optax.multi_transform`` put there):

    trainable, frozen = split(params, mask)      # each tree: the other's leaves replaced by MaskedNode
    params = join(trainable, frozen)

so the chain ``tx.init(trainable)`` holds no optimizer moments for frozen parameters (the state
``optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)`` would hold), the train
step differentiates only the trainable ones (per-task gradients and Gramians are never formed for the
frozen backbone), and the frozen values pass through the step untouched: bit-identical.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import optax

MASKED = optax.MaskedNode


def path_string(path) -> str:
    """``a/b/c`` from a jax key path (dict keys and sequence indices; attribute keys of boxes skipped)."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
    return "/".join(parts)


def param_paths(params) -> list[str]:
    """Every leaf's path, in tree order."""
    return [path_string(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def compile_patterns(patterns: Sequence[str]) -> list[re.Pattern]:
    """The compiled patterns; a ``ValueError`` names the first one that is not a regular expression."""
    if isinstance(patterns, str):
        raise ValueError(f"must be a sequence of patterns, got the string {patterns!r} (write ({patterns!r},))")
    out = []
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise ValueError(f"every pattern must be a non-empty string, got {p!r}")
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"pattern {p!r} is not a regular expression ({e})") from None
    return out


def trainable_mask(params, patterns: Sequence[str], *, check: bool = True) -> Any:
    """Boolean pytree like ``params``: which leaves match one of ``patterns`` (all of them when empty).

    With ``check``, a ``ValueError`` names a pattern that matches no parameter (a typo freezes
    everything silently otherwise) and one that leaves nothing to train.
    """
    if not patterns:
        return jax.tree.map(lambda _: True, params)
    compiled = compile_patterns(patterns)
    paths = param_paths(params)
    if check:
        for p in compiled:
            if not any(p.search(path) for path in paths):
                sample = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
                raise ValueError(f"pattern {p.pattern!r} matches no parameter (paths look like {sample})")
    return jax.tree_util.tree_map_with_path(lambda path, _: any(p.search(path_string(path)) for p in compiled),
                                            params)


def split(params, mask) -> tuple[Any, Any]:
    """``(trainable, frozen)``: ``params`` with the frozen / the trainable leaves replaced by
    ``optax.MaskedNode()``. ``mask`` may be a prefix of ``params`` (a bool for a whole subtree)."""
    trainable = jax.tree.map(lambda m, p: p if m else MASKED(), mask, params)
    frozen = jax.tree.map(lambda m, p: MASKED() if m else p, mask, params)
    return trainable, frozen


def join(trainable, frozen):
    """The inverse of :func:`split`."""
    is_masked = lambda x: isinstance(x, MASKED)  # noqa: E731
    return jax.tree.map(lambda a, b: b if is_masked(a) else a, trainable, frozen, is_leaf=is_masked)


def count(tree) -> int:
    """Number of scalar parameters in a (possibly masked) tree."""
    return sum(int(x.size) for x in jax.tree.leaves(tree))


__all__ = ["compile_patterns", "count", "join", "param_paths", "path_string", "split", "trainable_mask"]
