"""MGDA — Désidéri (2012), "Multiple-gradient descent algorithm"; for deep MTL: Sener & Koltun,
"Multi-Task Learning as Multi-Objective Optimization" (NeurIPS 2018, arXiv 1810.04650).

The update is the minimum-norm point of the convex hull of the task gradients,

    w* = argmin_{w ∈ Δ} ‖Σ_t w_t g_t‖² = argmin_{w ∈ Δ} wᵀ G w,      d = Jᵀ w*,

a common descent direction (d·g_t ≥ ‖d‖² for every t) or zero at a Pareto-stationary point.
Solved on the Gramian (``solvers.min_norm_simplex``: closed form for two tasks, FISTA on the simplex
otherwise). Gradient normalisation as in Sener & Koltun's code, applied before the solve and folded
back so the weights act on the original gradients: ``"none"`` (default), ``"l2"`` (g_t/‖g_t‖),
``"loss"`` (g_t/L_t), ``"loss+"`` (g_t/(L_t‖g_t‖)). MGDA-UB is this method at
``config.optim.level='rep'`` (Gramian of the gradients w.r.t. the shared representation).
"""

from __future__ import annotations

import jax.numpy as jnp

from mtljax.optim.base import Method
from mtljax.optim.dtypes import working_dtype
from mtljax.optim.solvers import min_norm_simplex

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def mgda(*, normalization: str = "none", iters: int = 250) -> Method:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"mgda: normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if iters < 1:
        raise ValueError(f"mgda: iters must be >= 1, got {iters}")

    def weights(losses, state, key, *, gramian=None):
        del key
        dtype = working_dtype(gramian, losses)
        gram = jnp.asarray(gramian, dtype)
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
        losses = jnp.maximum(jnp.asarray(losses, dtype), 1e-12)
        scale = {"none": jnp.ones_like(norms), "l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
        scale = jnp.where(scale > 1e-12, scale, 1.0)
        w = min_norm_simplex(gram / (scale[:, None] * scale[None, :]), iters)
        return w / scale, state

    return Method("mgda", "gramian", init=lambda num_tasks: (), weights=weights)
