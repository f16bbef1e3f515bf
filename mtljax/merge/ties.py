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
  flattened state dicts) — not leaf by leaf. The threshold (the ``k``-th largest magnitude) is found
  without sorting or concatenating: a binary search over the float32 bit patterns, 31 rounds of
  counting entries above a candidate, so sharded leaves stay sharded (only the counts are reduced) and
  the cost is linear in the model's size.
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


def _kth_largest_bits(bits: Sequence[jax.Array], k: int) -> jax.Array:
    """The int32 bit pattern of the ``k``-th largest of the non-negative float32 values whose patterns
    are ``bits`` (one array per leaf). Non-negative floats order like their bit patterns, so a binary
    search over patterns finds it exactly in 31 rounds of counting ``>=`` — elementwise work and sums,
    no sort and no concatenation: on a mesh each leaf stays sharded and only the counts are reduced."""
    def count(b):
        return sum(jnp.sum((x >= b).astype(jnp.int32)) for x in bits)

    def body(_, state):
        lo, hi = state  # invariant: count(lo) >= k and count(hi + 1) < k
        mid = lo + (hi - lo + 1) // 2
        ok = count(mid) >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    top = jnp.int32(0x7F800001)  # just above +inf (hi - lo + 1 stays within int32); NaNs count as largest
    lo, _ = jax.lax.fori_loop(0, 31, body, (jnp.int32(0), top))
    return lo


def trim(vector: PyTree, density: float) -> PyTree:
    """``vector`` with all but its top-``density`` fraction of entries by magnitude set to 0; the
    threshold is the ``k``-th largest magnitude over all leaves together (``k`` = ``density · d``
    rounded half up, at least 1), and entries ``>=`` it are kept (ties kept). The threshold is found
    by a binary search over float32 bit patterns (:func:`_kth_largest_bits`), exact, without sorting
    (counts are int32: up to 2³¹ − 1 entries per task vector)."""
    density = check_density(density)
    leaves = jax.tree.leaves(vector)
    if density == 1.0 or not leaves:
        return vector
    d = sum(int(x.size) for x in leaves)
    k = max(1, min(d, math.floor(density * d + 0.5)))  # density · d rounded half up

    def magnitude_bits(x):
        return jax.lax.bitcast_convert_type(jnp.abs(x).astype(jnp.float32), jnp.int32)

    threshold = _kth_largest_bits([magnitude_bits(x) for x in leaves], k)
    return jax.tree.map(lambda x: jnp.where(magnitude_bits(x) >= threshold, x, jnp.zeros_like(x)), vector)


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
