"""Small quadratic programs over ``T × T`` Gramians, solved inside ``jit`` with fixed iteration counts.

* :func:`min_norm_simplex` — ``min_{w ∈ Δ} wᵀ G w`` (the minimum-norm point of the convex hull of the
  task gradients; MGDA). Exact for ``T = 2``; otherwise accelerated projected gradient (FISTA) with
  step ``1 / λ_max(G)`` and Euclidean projection onto the simplex
  (``optax.projections.projection_simplex``).
* :func:`box_qp` — ``min_{v ≥ u} vᵀ G v`` for a lower bound ``u`` (projections onto the dual cone
  ``{d : J d ≥ 0}``; UPGrad, DualProj). An exact primal active-set method (at most 4T + 8 steps).
* :func:`regularize` — ``G + ε·(trace(G)/T + tiny)·I``: keeps the problems well posed when gradients
  are zero or identical (degenerate ``G``), without changing well-conditioned solutions noticeably.

All of them compute in the dtype of their inputs, at least float32 (:mod:`mtljax.optim.dtypes`), and
check their arguments' shapes (:func:`check_gramian`) with a message naming the function.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from optax.projections import projection_simplex

from mtljax.optim.dtypes import working_dtype


def check_gramian(gram, where: str) -> int:
    """``T`` of a ``[T, T]`` Gramian; a chex shape error naming ``where`` for anything else."""
    chex.assert_rank(gram, 2, custom_message=f"{where}: the Gramian must be a [T, T] matrix")
    t = jnp.shape(gram)[0]
    chex.assert_shape(gram, (t, t), custom_message=f"{where}: the Gramian must be a [T, T] matrix")
    return t


def regularize(gram: jax.Array, eps: float = 1e-6) -> jax.Array:
    check_gramian(gram, "regularize")
    gram = jnp.asarray(gram, working_dtype(gram))
    gram = 0.5 * (gram + gram.T)
    t = gram.shape[0]
    scale = jnp.trace(gram) / t + 1e-12
    return gram + eps * scale * jnp.eye(t, dtype=gram.dtype)


def min_norm_simplex(gram: jax.Array, iters: int = 250) -> jax.Array:
    """Weights ``w ∈ Δ`` minimising ``‖Jᵀ w‖² = wᵀ G w``."""
    check_gramian(gram, "min_norm_simplex")
    gram = jnp.asarray(gram, working_dtype(gram))
    t = gram.shape[0]
    if t == 1:
        return jnp.ones((1,), gram.dtype)
    if t == 2:
        # minimise |γ g1 + (1-γ) g2|²: γ = (g2·g2 − g1·g2) / |g1 − g2|², clipped to [0, 1]
        denom = gram[0, 0] + gram[1, 1] - 2 * gram[0, 1]
        gamma = jnp.where(denom > 1e-20, (gram[1, 1] - gram[0, 1]) / jnp.maximum(denom, 1e-20), 0.5)
        gamma = jnp.clip(gamma, 0.0, 1.0)
        return jnp.stack([gamma, 1.0 - gamma])
    step = 1.0 / (jnp.linalg.eigvalsh(regularize(gram))[-1] + 1e-20)
    w0 = jnp.full((t,), 1.0 / t, gram.dtype)

    def body(_, carry):
        w, y, s = carry
        # ∇(wᵀGw) = 2Gw, Lipschitz 2λ_max; the cast keeps float32 under x64 (optax promotes there)
        w_next = projection_simplex(y - step * (gram @ y)).astype(gram.dtype)
        s_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * s * s))
        y_next = w_next + ((s - 1.0) / s_next) * (w_next - w)
        return w_next, y_next, s_next

    w, _, _ = jax.lax.fori_loop(0, iters, body, (w0, w0, jnp.ones((), gram.dtype)))
    return w


def box_qp(gram: jax.Array, lower: jax.Array, max_iter: int | None = None) -> jax.Array:
    """``argmin_{v ≥ lower} vᵀ G v`` for positive definite ``G`` by a primal active-set method.

    Starts with every bound active (v = lower); each step either moves to the minimiser over the
    current free set, adding the first bound it would cross, or frees the bound with the most negative
    multiplier. Exact after finitely many steps; at most ``max_iter`` (default 4T + 8) steps.
    """
    t = check_gramian(gram, "box_qp")
    chex.assert_shape(lower, (t,), custom_message="box_qp: the lower bound must be a [T] vector")
    dtype = working_dtype(gram, lower)
    gram, lower = jnp.asarray(gram, dtype), jnp.asarray(lower, dtype)
    eye = jnp.eye(t, dtype=dtype)
    tol = 1e-7 * (jnp.max(jnp.abs(jnp.diag(gram))) + 1e-30) * (jnp.max(jnp.abs(lower)) + 1e-30)

    def subproblem(fixed):  # minimiser with v_i = lower_i on the fixed set, free elsewhere
        free = ~fixed
        mat = jnp.where(free[:, None] & free[None, :], gram, 0.0) + jnp.where(fixed, 1.0, 0.0) * eye
        rhs = jnp.where(free, -(gram @ jnp.where(fixed, lower, 0.0)), lower)
        return jnp.linalg.solve(mat, rhs)

    def step(carry):
        i, v, fixed, _ = carry
        target = subproblem(fixed)
        blocked = ~fixed & (target < lower)
        ratio = jnp.where(blocked, (v - lower) / jnp.maximum(v - target, 1e-30), jnp.inf)
        j = jnp.argmin(ratio)
        v_block = jnp.where(eye[j] > 0, lower, v + jnp.clip(ratio[j], 0.0, 1.0) * (target - v))
        mult = jnp.where(fixed, gram @ target, jnp.inf)  # ½ × the multipliers of the active bounds
        k = jnp.argmin(mult)
        optimal = mult[k] >= -tol
        any_blocked = jnp.any(blocked)
        new_v = jnp.where(any_blocked, v_block, target)
        new_fixed = jnp.where(any_blocked, fixed | (eye[j] > 0), fixed & ((eye[k] == 0) | optimal))
        stop = (~any_blocked & optimal) | ~jnp.all(jnp.isfinite(new_v))
        ok = jnp.all(jnp.isfinite(new_v))
        return i + 1, jnp.where(ok, new_v, v), jnp.where(ok, new_fixed, fixed), stop

    iters = 4 * t + 8 if max_iter is None else max_iter
    init = (jnp.zeros((), jnp.int32), lower, jnp.ones((t,), bool), jnp.zeros((), bool))
    _, v, _, _ = jax.lax.while_loop(lambda c: (c[0] < iters) & ~c[3], step, init)
    return v
