"""FairGrad — Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024 (arXiv 2402.15638).

Task t's "utility" is its rate of improvement g_tᵀd along the update d = Σ_t w_t g_t. FairGrad maximises
the α-fair utility Σ_t (g_tᵀd)^{1−α}/(1−α) (Σ log g_tᵀd at α = 1) under a norm constraint; its KKT
conditions say the weights w > 0 solve

    G w = w^{−1/α}   (elementwise power; G = J Jᵀ, G[i,j] = g_i·g_j),

and the update is d ∝ Jᵀ w. α = 1 is proportional fairness and gives exactly Nash-MTL's bargaining
equation G w = 1/w (tested); α = 2 is minimum-potential-delay fairness; α → ∞ approaches max-min
fairness; α → 0 approaches linear scalarisation. Default α = 1.0 (the official code's default).

Solver (instead of the official scipy ``least_squares`` on the residual G w − w^{−1/α}): the equation is
the stationarity condition of the strictly convex f(w) = ½ wᵀ G w − Σ_t φ(w_t) on w > 0, with
φ(w) = w^p / p, p = 1 − 1/α (φ = log w at α = 1). We run ``iters`` Newton steps on f in the relative
coordinates w ← w ⊙ (1 + δ) (the scaled Hessian D G D + diag(w^p/α) is well conditioned), with a fixed
backtracking grid (largest step in {1, ½, ¼, …} that keeps w > 0 and satisfies Armijo; a full step once
the Newton decrement is small). Numerics: the problem is solved for G / s (s = trace(G)/T) with the
relative ridge ``reg``·(diag(G/s) + 10⁻³) added to the diagonal (keeps a solution when a gradient is
zero or gradients cancel without biasing tasks with small gradients; a ridge ∝ I did, measurably),
started from the orthogonal-gradient solution w_t = G_tt^{−α/(1+α)}, and mapped back exactly by
w(G) = s^{−α/(1+α)} w(G / s). Measured: relative residual of G w = w^{−1/α} ≤ 1e-4 on random
well-scaled problems (α ∈ [0.5, 5], T ≤ 8, gradient norms spanning 100×).

Scaling as in the official code: the weights are multiplied by T ("to match the sum of losses") and the
resulting shared update T·Jᵀw is clipped to norm ``max_norm`` (``max_norm = 0`` disables clipping; then
``weights / T`` is the fixed point itself).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtljax.optim.base import Method
from mtljax.optim.dtypes import working_dtype
from mtljax.optim.solvers import check_gramian

_STEPS = (2.0 ** -np.arange(12)).astype(np.float32)  # backtracking grid 1, 1/2, ..., 1/2048


def solve_fair_weights(gram: jax.Array, alpha: float, iters: int = 30, reg: float = 1e-6) -> jax.Array:
    """The w > 0 with ``G w = w^(−1/alpha)`` (damped Newton on a convex potential; see module doc)."""
    check_gramian(gram, "solve_fair_weights")
    gram = jnp.asarray(gram, working_dtype(gram))
    gram = 0.5 * (gram + gram.T)
    t = gram.shape[0]
    scale = jnp.trace(gram) / t
    scale = jnp.where(scale > 1e-30, scale, 1.0)
    g = gram / scale
    g = g + jnp.diag(reg * (jnp.diag(g) + 1e-3))
    p = 1.0 - 1.0 / alpha
    expo = alpha / (1.0 + alpha)

    def phi_increase(w, dt):  # Σ_t φ(w_t (1 + dt_t)) − φ(w_t), without cancellation
        lg = jnp.log1p(dt)
        if p == 0.0:
            return jnp.sum(lg)
        return jnp.sum(w**p * jnp.expm1(p * lg) / p)

    def newton(_, w):
        gw = g @ w
        wp = w**p
        r = w * gw - wp  # D ∇f
        hess = w[:, None] * g * w[None, :] + jnp.diag(wp / alpha)
        delta = -jnp.linalg.solve(hess, r)
        decrement = jnp.maximum(-(r @ delta), 0.0)  # Newton decrement λ² = δᵀ H δ
        u = w * delta
        ugw, ugu = u @ gw, u @ g @ u

        def accept(step):
            dt = step * delta
            feasible = jnp.all(dt > -0.99)
            safe = jnp.where(feasible, dt, 0.0)
            change = step * ugw + 0.5 * step**2 * ugu - phi_increase(w, safe)
            return feasible, feasible & (change <= -0.25 * step * decrement)

        feasible, armijo = jax.vmap(accept)(jnp.asarray(_STEPS))
        full = feasible[0] & (decrement < 1e-2)
        first = jnp.argmax(armijo)
        step = jnp.where(full, 1.0, jnp.where(jnp.any(armijo), jnp.asarray(_STEPS)[first], 0.0))
        w_new = w * (1.0 + step * delta)
        return jnp.where(jnp.all(jnp.isfinite(w_new)), w_new, w)

    w0 = jnp.diag(g) ** (-expo)
    w = jax.lax.fori_loop(0, iters, newton, w0)
    return w * scale ** (-expo)


def clip_weights(w: jax.Array, gram: jax.Array, max_norm: float) -> jax.Array:
    """Scale ``w`` so that ‖Jᵀw‖ = sqrt(wᵀ G w) ≤ ``max_norm`` (no-op when ``max_norm`` is 0)."""
    if max_norm <= 0:
        return w
    dtype = working_dtype(w, gram)
    w = jnp.asarray(w, dtype)
    norm = jnp.sqrt(jnp.maximum(w @ jnp.asarray(gram, dtype) @ w, 0.0))
    return w * jnp.where(norm > max_norm, max_norm / jnp.maximum(norm, 1e-30), 1.0)


def fairgrad(*, alpha: float = 1.0, max_norm: float = 1.0, iters: int = 30, reg: float = 1e-6) -> Method:
    if not alpha > 0:
        raise ValueError(f"fairgrad: alpha must be > 0, got {alpha}")
    if max_norm < 0:
        raise ValueError(f"fairgrad: max_norm must be >= 0, got {max_norm}")
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"fairgrad: iters must be a positive integer, got {iters!r}")
    if not reg > 0:
        raise ValueError(f"fairgrad: reg must be > 0, got {reg}")
    alpha, max_norm, reg = float(alpha), float(max_norm), float(reg)

    def weights(losses, state, key, *, gramian=None):
        del losses, key
        t = gramian.shape[0]
        w = t * solve_fair_weights(gramian, alpha, iters, reg)
        return clip_weights(w, gramian, max_norm), state

    return Method("fairgrad", "gramian", init=lambda num_tasks: (), weights=weights)
