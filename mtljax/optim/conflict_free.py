"""ConFIG — Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks", ICLR 2025 (arXiv 2408.11104; official code tum-pbs/ConFIG, ``conflictfree``).

With unit gradients u_t = g_t / ‖g_t‖ (rows of U), the direction is the least-norm solution of
U x = 1 — the vector with the same (unit) projection on every u_t, i.e. equal cosine to every task —
normalised, and its length is the sum of the gradients' projections on it:

    g_u = U⁺ 1,   ĝ = g_u / ‖g_u‖,   d = (Σ_t g_tᵀ ĝ) · ĝ.

Gramian form (everything is a combination of the rows of J): U Uᵀ = Ĝ = N⁻¹ G N⁻¹ (the cosine matrix,
N = diag ‖g_t‖), U⁺ = Uᵀ (U Uᵀ)⁺, so g_u = Jᵀ a with a = N⁻¹ Ĝ⁺ 1. Then ‖g_u‖² = aᵀ G a and
Σ_t g_tᵀ ĝ = 1ᵀ G a / √(aᵀ G a), hence

    d = Jᵀ w,   w = a · (1ᵀ G a) / (aᵀ G a).

Choices: equal direction weights (the official default "EqualWeight", i.e. the right-hand side 1) and
projection length (default "ProjectionLength"); the official two-task closed form is the same vector.
Ĝ⁺ is a pseudo-inverse through the eigendecomposition of Ĝ with eigenvalues ≤ ``rcond`` · λ_max
dropped (default 1e-6; the official code's least-squares solve uses machine-precision rcond, which
in float32 leaves rounding noise of order 1e-7 in Ĝ unfiltered). Zero gradients get a zero unit vector
(as the official ``nan_to_num``) and weight 0; all-zero gradients give w = 0. One task: w = [1].
"""

from __future__ import annotations

import jax.numpy as jnp

from mtljax.optim.base import Method
from mtljax.optim.dtypes import working_dtype


def config(*, rcond: float = 1e-6) -> Method:
    if not 0 <= rcond < 1:
        raise ValueError(f"config: rcond must be in [0, 1), got {rcond}")
    rcond = float(rcond)

    def weights(losses, state, key, *, gramian=None):
        del losses, key
        gram = jnp.asarray(gramian, working_dtype(gramian))
        gram = 0.5 * (gram + gram.T)
        t = gram.shape[0]
        sq = jnp.diag(gram)
        nonzero = sq > 1e-30 * jnp.maximum(jnp.max(sq), 1e-30)
        inv_norm = jnp.where(nonzero, 1.0 / jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)
        cos = inv_norm[:, None] * gram * inv_norm[None, :]
        lam, vec = jnp.linalg.eigh(cos)
        keep = lam > rcond * jnp.maximum(jnp.max(lam), 0.0)
        inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
        c = vec @ (inv * (vec.T @ jnp.ones((t,), gram.dtype)))  # Ĝ⁺ 1
        a = inv_norm * c
        sq_len = a @ gram @ a
        w = a * (jnp.sum(gram @ a) / jnp.where(sq_len > 0, sq_len, 1.0))
        return jnp.where(sq_len > 0, w, 0.0), state

    return Method("config", "gramian", init=lambda num_tasks: (), weights=weights)
