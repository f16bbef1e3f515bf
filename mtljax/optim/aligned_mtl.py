"""Aligned-MTL — Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023
(arXiv 2305.19000; official code SamsungLabs/MTL, ``optim/aligned``).

The task gradients are replaced by an aligned set with condition number 1: with the eigendecomposition
G = J Jᵀ = V Λ Vᵀ (λ_1 ≥ … ≥ λ_R > 0 the non-negligible eigenvalues),

    B = √σ · V_R Λ_R^{−1/2} V_Rᵀ,   Ĵ = B J,   Ĵ Ĵᵀ = B G B = σ · V_R V_Rᵀ,

so the aligned gradients (rows of Ĵ) are orthogonal with equal norm √σ inside the span of the task
gradients (condition number 1, Ĵ = √σ · U_R V_Rᵀ from the SVD of J). The update is the sum of the aligned
gradients (as in the official code; TorchJD's port uses the mean, i.e. divides by T):

    d = Ĵᵀ 1 = Jᵀ w,   w = B 1.

``scale`` chooses σ: "min" (default, σ = λ_R, the paper's choice: no aligned gradient is longer than
the smallest singular direction allows), "median" (the lower median of the kept eigenvalues, as
``torch.median`` in the official code) or "rmse" (their mean). Eigenvalues at or below
λ_max · T · ε are dropped (ε: machine epsilon of G's dtype, as the official tolerance), so zero or repeated
gradients are handled; if all are dropped (G ≈ 0), w = 1. With one task, w = [1].

The paper's "UB" variant (Aligned-MTL-UB) is the same aggregator applied to the Gramian of the
gradients with respect to the shared representation — mtljax's representation-level path.
"""

from __future__ import annotations

import jax.numpy as jnp

from mtljax.optim.base import Method
from mtljax.optim.dtypes import working_dtype

SCALES = ("min", "median", "rmse")


def balance_matrix(gram, scale: str = "min"):
    """B (T × T) such that B J has orthogonal, equal-norm rows spanning the rows of J."""
    gram = jnp.asarray(gram, working_dtype(gram))
    gram = 0.5 * (gram + gram.T)
    t = gram.shape[0]
    lam, vec = jnp.linalg.eigh(gram)  # ascending
    tol = jnp.max(lam) * t * jnp.finfo(gram.dtype).eps
    keep = lam > tol
    rank = jnp.sum(keep)
    if scale == "min":
        sigma = jnp.min(jnp.where(keep, lam, jnp.inf))
    elif scale == "median":  # kept eigenvalues are the last `rank`; lower median of them
        sigma = lam[jnp.clip(t - rank + (rank - 1) // 2, 0, t - 1)]
    else:
        sigma = jnp.sum(jnp.where(keep, lam, 0.0)) / jnp.maximum(rank, 1)
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
    b = jnp.sqrt(jnp.where(rank > 0, sigma, 1.0)) * (vec * inv_sqrt[None, :]) @ vec.T
    return jnp.where(rank > 0, b, jnp.eye(t, dtype=gram.dtype))


def aligned_mtl(*, scale: str = "min") -> Method:
    if scale not in SCALES:
        raise ValueError(f"aligned_mtl: scale must be one of {SCALES}, got {scale!r}")

    def weights(losses, state, key, *, gramian=None):
        del losses, key
        b = balance_matrix(gramian, scale)
        return jnp.sum(b, axis=1), state

    return Method("aligned_mtl", "gramian", init=lambda num_tasks: (), weights=weights)
