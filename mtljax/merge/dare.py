"""DARE, "Drop And REscale" (Yu et al., 2024, "Language Models are Super Mario: Absorbing Abilities from
Homologous Models as a Free Lunch").

Equation, for a task vector ``τ`` and drop rate ``p``: draw ``m ~ Bernoulli(p)`` per entry and set
``τ̃ = (1 − m) ⊙ τ / (1 − p)``. Each entry is dropped with probability ``p`` and the survivors are
scaled up so that ``E[τ̃] = τ`` (the expected output of every layer is kept). DARE is a preprocessing
step: the sparsified experts ``θ_0 + τ̃_t`` are then merged by another method — here task arithmetic
or TIES (:func:`dare_merge`), the two combinations the paper studies.

Choices and deviations:

* Every task vector gets its own key (``jax.random.split(key, T)``) and every leaf its own sub-key,
  so the drop masks are independent across tasks and leaves. Results depend on the key only.
* ``p = 0`` is exactly the identity; ``p`` must lie in ``[0, 1)`` (checked when it is a Python number;
  a traced ``p`` is used as given).
* The masks are drawn in the leaves' shapes with :func:`jax.random.bernoulli`, which keeps each entry
  with probability ``1 − p``; the rescaled survivors are computed in the leaf's dtype.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mtljax.merge.task_arithmetic import check_scale, task_arithmetic
from mtljax.merge.ties import check_density, ties
from mtljax.merge.vectors import (
    MergeError,
    PyTree,
    apply,
    check_finetuned,
    task_vectors,
)

BASES = ("task_arithmetic", "ties")


def check_p(p) -> None:
    """:class:`MergeError` unless ``p`` (when a concrete number) lies in ``[0, 1)``."""
    if isinstance(p, bool):
        raise MergeError(f"p: must be a number in [0, 1), got {p}")
    if isinstance(p, numbers.Real) and not 0.0 <= float(p) < 1.0:
        raise MergeError(f"p: must be in [0, 1), got {p}")


def _check_key(key) -> None:
    if key is None:
        raise MergeError("key: a jax.random key is required (DARE's drop masks are random)")


def dare(vector: PyTree, p: float, key: jax.Array) -> PyTree:
    """Drop each entry of ``vector`` with probability ``p`` and divide the survivors by ``1 − p``."""
    check_p(p)
    _check_key(key)
    if isinstance(p, numbers.Real) and float(p) == 0.0:
        return vector
    leaves, treedef = jax.tree.flatten(vector)
    keys = jax.random.split(key, max(len(leaves), 1))
    out = []
    for k, x in zip(keys, leaves):
        keep = jax.random.bernoulli(k, 1.0 - p, jnp.shape(x))
        out.append(jnp.where(keep, x / jnp.asarray(1.0 - p, x.dtype), jnp.zeros_like(x)))
    return jax.tree.unflatten(treedef, out)


def dare_merge(pretrained: PyTree, finetuned: Sequence[PyTree], p: float = 0.5, key: jax.Array | None = None,
               base: str = "task_arithmetic", **base_kwargs) -> PyTree:
    """``base(pretrained, [θ_0 + dare(τ_t, p, key_t)])`` with independent ``key_t`` per task; ``base`` is
    ``"task_arithmetic"`` (kwargs ``scale``) or ``"ties"`` (kwargs ``density``, ``scale``)."""
    finetuned = check_finetuned(pretrained, finetuned)
    check_p(p)
    _check_key(key)
    if base not in BASES:
        raise MergeError(f"base: must be one of {', '.join(BASES)}, got {base!r}")
    allowed = {"task_arithmetic": {"scale"}, "ties": {"density", "scale"}}[base]
    unknown = sorted(set(base_kwargs) - allowed)
    if unknown:
        raise MergeError(f"{unknown[0]}: not an argument of {base} (takes {', '.join(sorted(allowed))})")
    if "density" in base_kwargs:
        check_density(base_kwargs["density"])
    if base == "task_arithmetic" and "scale" in base_kwargs:
        check_scale(base_kwargs["scale"], len(finetuned))
    keys = jax.random.split(key, len(finetuned))
    sparse = [apply(pretrained, dare(v, p, k)) for v, k in zip(task_vectors(pretrained, finetuned), keys)]
    method = task_arithmetic if base == "task_arithmetic" else ties
    return method(pretrained, sparse, **base_kwargs)
