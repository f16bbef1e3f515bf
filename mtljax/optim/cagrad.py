"""CAGrad — Liu, Liu, Jin, Stone, Liu, "Conflict-Averse Gradient Descent for Multi-task Learning"
(NeurIPS 2021, arXiv 2110.14048).

Maximise the worst task's improvement within a ball around the average gradient g_0 = (1/T) Σ g_t:
max_d min_t g_tᵀd s.t. ‖d − g_0‖ ≤ c‖g_0‖. Its dual is a problem over the simplex,

    w* = argmin_{w ∈ Δ}  g_wᵀ g_0 + √φ ‖g_w‖,      g_w = Jᵀw,  φ = c² ‖g_0‖²,

and the update is d = g_0 + (√φ / ‖g_w*‖) g_w*, divided by (1 + c²) (the official code's default
rescaling). In Gramian terms g_wᵀ g_0 = wᵀG1/T, ‖g_w‖² = wᵀGw, ‖g_0‖² = 1ᵀG1/T², so the weights on
the original gradients are (1/T + (√φ/‖g_w*‖) w*) / (1 + c²). The dual is solved by accelerated
projected gradient on the simplex with a fixed number of iterations (the official code uses SLSQP).
c = 0 gives the average gradient; as c grows CAGrad approaches MGDA's direction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from optax.projections import projection_simplex

from mtljax.optim.base import Method
from mtljax.optim.dtypes import working_dtype
from mtljax.optim.solvers import check_gramian, regularize


def cagrad_dual(gram, c: float, iters: int):
    """``w*`` of the dual problem (FISTA on the simplex)."""
    t = check_gramian(gram, "cagrad_dual")
    mean = jnp.full((t,), 1.0 / t, gram.dtype)
    sqrt_phi = c * jnp.sqrt(jnp.maximum(mean @ gram @ mean, 0.0))
    lip = jnp.linalg.eigvalsh(regularize(gram))[-1] * (1.0 + c) + 1e-12
    step = 1.0 / lip

    def grad(w):
        gw = jnp.sqrt(jnp.maximum(w @ gram @ w, 1e-20))
        return gram @ mean + sqrt_phi * (gram @ w) / gw

    def body(_, carry):
        w, y, s = carry
        w_next = projection_simplex(y - step * grad(y)).astype(gram.dtype)  # float32 stays float32 under x64
        s_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * s * s))
        return w_next, w_next + ((s - 1.0) / s_next) * (w_next - w), s_next

    w, _, _ = jax.lax.fori_loop(0, iters, body, (mean, mean, jnp.ones((), gram.dtype)))
    return w, sqrt_phi


def cagrad(*, c: float = 0.4, iters: int = 200, rescale: bool = True) -> Method:
    if c < 0:
        raise ValueError(f"cagrad: c must be >= 0, got {c}")
    if iters < 1:
        raise ValueError(f"cagrad: iters must be >= 1, got {iters}")

    def weights(losses, state, key, *, gramian=None):
        del losses, key
        gram = jnp.asarray(gramian, working_dtype(gramian))
        t = gram.shape[0]
        w, sqrt_phi = cagrad_dual(gram, c, iters)
        norm_gw = jnp.sqrt(jnp.maximum(w @ gram @ w, 0.0))
        lam = jnp.where(norm_gw > 1e-12, sqrt_phi / jnp.maximum(norm_gw, 1e-12), 0.0)
        out = jnp.full((t,), 1.0 / t, gram.dtype) + lam * w
        return out / (1.0 + c * c) if rescale else out, state

    return Method("cagrad", "gramian", init=lambda num_tasks: (), weights=weights)
