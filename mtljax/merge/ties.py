"""TIES-Merging (Yadav et al., 2023, "TIES-Merging: Resolving Interference When Merging Models").

Three steps on the task vectors ``τ_t = θ_t − θ_0``, then ``θ = θ_0 + λ τ_m``:

1. *Trim* (:func:`trim`): in each ``τ_t`` keep the ``k`` entries of largest magnitude and zero the
   rest, ``k = density · d`` for ``d`` the number of entries of the whole task vector.
2. *Elect* (:func:`elect_sign`): per entry ``p``, ``γ^p = sgn(Σ_t τ̂_t^p)`` over the trimmed vectors
   (the sign of larger total mass).
3. *Disjoint mean* (:func:`disjoint_mean`): ``τ_m^p = (1/|A^p|) Σ_{t ∈ A^p} τ̂_t^p`` with
   ``A^p = {t : sgn(τ̂_t^p) = γ^p}`` — only the non-zero trimmed entries that agree with the elected
   sign are averaged; an entry where none agrees (all trimmed away, or ``γ^p = 0``) becomes 0.

Choices and deviations:

* Trim scope: the top-``k`` is taken over the *whole* task vector flattened across all leaves (one
  threshold per task), as the paper describes and its reference code does (it trims rows of the
  flattened state dicts) — not leaf by leaf. A consequence: the threshold needs all of ``τ_t``'s
  magnitudes in one array (a concatenation, gathered if the leaves are sharded); the rest is
  element-wise.
* ``k = max(1, density · d rounded half up)``; an entry is kept when its magnitude is ``>=`` the
  ``k``-th largest magnitude, so ties at the threshold are all kept (possibly more than ``k``
  entries). The reference code also keeps by ``>=`` a threshold, with a count that can differ from
  this ``k`` by one entry.
* Sign election follows the paper's equation exactly: where ``Σ_t τ̂_t^p = 0`` the elected sign is 0
  and the merged entry is 0. (The reference code instead fills such zero signs with the sign of the
  sum of all elected signs; in floating point exact cancellations are rare, so this matters only on
  hand-made inputs.)
* ``density`` must be a static Python number in ``(0, 1]`` (it fixes ``k``); ``density = 1`` skips
  trimming. ``scale`` (the paper's ``λ``, 1 by default as recommended there) may be traced.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mtljax.merge.vectors import (
    MergeError,
    PyTree,
    apply,
    check_finetuned,
    task_vectors,
)


def check_density(density) -> float:
    """``density`` as a Python float in ``(0, 1]``, else :class:`MergeError`."""
    if isinstance(density, bool) or not isinstance(density, numbers.Real):
        raise MergeError(f"density: must be a static Python number in (0, 1], got {type(density).__name__}")
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise MergeError(f"density: must be in (0, 1], got {density}")
    return density


def trim(vector: PyTree, density: float) -> PyTree:
    """``vector`` with all but its top-``density`` fraction of entries by magnitude set to 0; the
    threshold is the ``k``-th largest magnitude over all leaves together (``k`` = ``density · d``
    rounded half up, at least 1), and entries ``>=`` it are kept (ties kept)."""
    density = check_density(density)
    leaves = jax.tree.leaves(vector)
    if density == 1.0 or not leaves:
        return vector
    magnitudes = jnp.concatenate([jnp.abs(x).astype(jnp.float32).reshape(-1) for x in leaves])
    d = magnitudes.shape[0]
    k = max(1, min(d, math.floor(density * d + 0.5)))  # density · d rounded half up
    threshold = jnp.sort(magnitudes)[d - k]  # the k-th largest magnitude
    return jax.tree.map(lambda x: jnp.where(jnp.abs(x).astype(jnp.float32) >= threshold, x, jnp.zeros_like(x)),
                        vector)


def elect_sign(trimmed: Sequence[PyTree]) -> PyTree:
    """``sgn(Σ_t τ̂_t)`` per entry (−1, 0 or +1, in the leaves' dtype)."""
    return jax.tree.map(lambda *xs: jnp.sign(sum(xs)), *trimmed)


def disjoint_mean(trimmed: Sequence[PyTree], sign: PyTree) -> PyTree:
    """Per entry, the mean of the trimmed values whose sign equals ``sign``'s (zeros never count); 0
    where none does."""

    def mean(s, *xs):
        agree = [((s > 0) & (x > 0)) | ((s < 0) & (x < 0)) for x in xs]
        total = sum(jnp.where(a, x, jnp.zeros_like(x)) for a, x in zip(agree, xs))
        count = sum(a.astype(jnp.int32) for a in agree)
        return (total / jnp.maximum(count, 1).astype(total.dtype)).astype(s.dtype)

    return jax.tree.map(mean, sign, *trimmed)


def ties(pretrained: PyTree, finetuned: Sequence[PyTree], density: float = 0.2, scale=1.0) -> PyTree:
    """``θ_0 + λ · disjoint_mean(trimmed, elect_sign(trimmed))`` with ``trimmed = [trim(τ_t, density)]``."""
    finetuned = check_finetuned(pretrained, finetuned)
    density = check_density(density)
    trimmed = [trim(v, density) for v in task_vectors(pretrained, finetuned)]
    merged = disjoint_mean(trimmed, elect_sign(trimmed))
    return apply(pretrained, merged, scale)
