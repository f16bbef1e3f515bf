"""Small quadratic programs over ``T × T`` Gramians, solved inside ``jit`` with fixed iteration counts.

* :func:`min_norm_simplex` — ``min_{w ∈ Δ} wᵀ G w`` (the minimum-norm point of the convex hull of the
  task gradients; MGDA). Exact for ``T = 2``; otherwise accelerated projected gradient (FISTA) with
  step ``1 / λ_max(G)`` and Euclidean projection onto the simplex.
* :func:`nonneg_qp` — ``min_{v ≥ u} vᵀ G v`` for a lower bound ``u`` (projections onto the dual cone
  ``{d : J d ≥ 0}``; UPGrad, DualProj). Cyclic coordinate descent, each coordinate minimised exactly.
* :func:`regularize` — ``G + ε·(trace(G)/T + tiny)·I``: keeps the problems well posed when gradients
  are zero or identical (degenerate ``G``), without changing well-conditioned solutions noticeably.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def regularize(gram: jax.Array, eps: float = 1e-6) -> jax.Array:
    gram = 0.5 * (gram + gram.T).astype(jnp.float32)
    t = gram.shape[0]
    scale = jnp.trace(gram) / t + 1e-12
    return gram + eps * scale * jnp.eye(t, dtype=gram.dtype)


def project_simplex(v: jax.Array) -> jax.Array:
    """Euclidean projection onto ``{w ≥ 0, Σ w = 1}`` (sort-based, Held et al. / Duchi et al.)."""
    t = v.shape[0]
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u) - 1.0
    idx = jnp.arange(1, t + 1, dtype=v.dtype)
    cond = u - css / idx > 0
    rho = jnp.max(jnp.where(cond, jnp.arange(t), 0))
    theta = css[rho] / (rho + 1.0)
    return jnp.maximum(v - theta, 0.0)


def min_norm_simplex(gram: jax.Array, iters: int = 250) -> jax.Array:
    """Weights ``w ∈ Δ`` minimising ``‖Jᵀ w‖² = wᵀ G w``."""
    gram = gram.astype(jnp.float32)
    t = gram.shape[0]
    if t == 1:
        return jnp.ones((1,), jnp.float32)
    if t == 2:
        # minimise |γ g1 + (1-γ) g2|²: γ = (g2·g2 − g1·g2) / |g1 − g2|², clipped to [0, 1]
        denom = gram[0, 0] + gram[1, 1] - 2 * gram[0, 1]
        gamma = jnp.where(denom > 1e-20, (gram[1, 1] - gram[0, 1]) / jnp.maximum(denom, 1e-20), 0.5)
        gamma = jnp.clip(gamma, 0.0, 1.0)
        return jnp.stack([gamma, 1.0 - gamma])
    step = 1.0 / (jnp.linalg.eigvalsh(regularize(gram))[-1] + 1e-20)
    w0 = jnp.full((t,), 1.0 / t, jnp.float32)

    def body(_, carry):
        w, y, s = carry
        w_next = project_simplex(y - step * (gram @ y))  # ∇(wᵀGw) = 2Gw, Lipschitz 2λ_max
        s_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * s * s))
        y_next = w_next + ((s - 1.0) / s_next) * (w_next - w)
        return w_next, y_next, s_next

    w, _, _ = jax.lax.fori_loop(0, iters, body, (w0, w0, jnp.ones((), jnp.float32)))
    return w


def nonneg_qp(gram: jax.Array, lower: jax.Array, sweeps: int = 100) -> jax.Array:
    """``argmin_{v ≥ lower} vᵀ G v`` by exact cyclic coordinate descent (``G`` PSD)."""
    gram = gram.astype(jnp.float32)
    t = gram.shape[0]
    diag = jnp.diag(gram)

    def coord(i, v):
        gi = gram[i] @ v
        vi = jnp.where(diag[i] > 1e-20, v[i] - gi / jnp.maximum(diag[i], 1e-20), lower[i])
        return v.at[i].set(jnp.maximum(vi, lower[i]))

    def sweep(_, v):
        return jax.lax.fori_loop(0, t, coord, v)

    return jax.lax.fori_loop(0, sweeps, sweep, lower.astype(jnp.float32))
