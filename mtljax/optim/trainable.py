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
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
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


def freeze_tasks(frozen: Sequence[int], task_names: Sequence[str], specific: Callable[[Any], Any],
                 head_prefix: str = "heads_") -> optax.GradientTransformation:
    """Zero every update that belongs to the tasks with indices ``frozen``: adding a task to a
    trained model without changing what the earlier tasks compute.

    Two kinds of parameters belong to a task (``specific(tree)`` marks them, a boolean pytree):
    a whole leaf under ``<head_prefix><task>`` (its head), and row ``t`` of a per-task module
    stacked over the tasks (``[T, ...]``: LoRA factors, prompts, prefixes, MULTI-LANE lanes). Those
    updates are multiplied by 0; shared parameters pass unchanged — freeze them too (``trainable``
    patterns) for the earlier tasks' outputs to stay bit-identical. Place it after the multi-task
    transform (so that global-norm clipping sees no frozen gradient) and again last (AdamW's weight
    decay would move a frozen row otherwise); the optimizer's moments for frozen rows are kept but
    never reach the parameters.
    """
    names = tuple(task_names)
    keep = jnp.ones(len(names), jnp.float32).at[jnp.asarray(list(frozen), jnp.int32)].set(0.0)
    frozen_heads = {head_prefix + names[i] for i in frozen}

    def zero(path, update, mine):
        if not mine:
            return update
        first = path_string(path).split("/", 1)[0]
        if first.startswith(head_prefix):
            return jnp.zeros_like(update) if first in frozen_heads else update
        if update.ndim == 0 or update.shape[0] != len(names):
            raise ValueError(f"freeze_tasks: task-specific parameter {path_string(path)!r} of shape {update.shape} "
                             f"is neither a head nor stacked over the {len(names)} tasks")
        return update * keep.reshape((-1,) + (1,) * (update.ndim - 1)).astype(update.dtype)

    def update_fn(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(zero, updates, specific(updates)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def count(tree) -> int:
    """Number of scalar parameters in a (possibly masked) tree."""
    return sum(int(x.size) for x in jax.tree.leaves(tree))


__all__ = ["compile_patterns", "count", "freeze_tasks", "join", "param_paths", "path_string", "split", "trainable_mask"]
