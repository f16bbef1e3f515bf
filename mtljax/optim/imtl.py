"""IMTL-G — Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, "Towards Impartial Multi-task Learning"
(ICLR 2021), gradient part.

Find the update d = Σ_t α_t g_t with Σ α_t = 1 whose projections on all unit task gradients
u_t = g_t/‖g_t‖ are equal (d·u_1 = d·u_t for all t). With D = [g_1 − g_t]_{t≥2} and
U = [u_1 − u_t]_{t≥2} the closed form is

    α_{2:T} = g_1 Uᵀ (D Uᵀ)^{-1},      α_1 = 1 − Σ_{t≥2} α_t.

All products are entries of the Gramian: g_a·u_b = G_ab/‖g_b‖. The small linear system is solved with a
least-squares pseudo-inverse (``rcond``) so singular cases (identical or zero gradients) stay finite;
a zero gradient gets unit norm 1 in u (it then carries no direction). This is the pure IMTL-G update
(IMTL-L, the loss-scale part, is a separate weighting).
"""

from __future__ import annotations

import jax.numpy as jnp

from mtljax.optim.base import Method
from mtljax.optim.dtypes import working_dtype


def imtl_g(*, rcond: float = 1e-6) -> Method:
    if not rcond > 0:
        raise ValueError(f"imtl_g: rcond must be > 0, got {rcond}")

    def weights(losses, state, key, *, gramian=None):
        del losses, key
        gram = jnp.asarray(gramian, working_dtype(gramian))
        t = gram.shape[0]
        if t == 1:
            return jnp.ones((1,), gram.dtype), state
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
        norms = jnp.where(norms > 1e-12, norms, 1.0)
        gu = gram / norms[None, :]  # gu[a, b] = g_a · u_b
        g1u = gu[0, 0] - gu[0, 1:]  # g_1 · (u_1 − u_t)
        du = (gu[0, 0] - gu[0, 1:][None, :]) - (gu[1:, 0][:, None] - gu[1:, 1:])  # (g_1 − g_s)·(u_1 − u_t)
        alpha = jnp.linalg.lstsq(du.T, g1u, rcond=rcond)[0]  # α (D Uᵀ) = g_1 Uᵀ
        w = jnp.concatenate([1.0 - jnp.sum(alpha, keepdims=True), alpha])
        return jnp.where(jnp.all(jnp.isfinite(w)), w, jnp.full((t,), 1.0 / t, gram.dtype)), state

    return Method("imtl_g", "gramian", init=lambda num_tasks: (), weights=weights)
