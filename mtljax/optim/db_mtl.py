"""Dual-Balancing Multi-Task Learning (DB-MTL).

Lin, Jiang, Ye, Zhang, Chen, Chen, Liu & Kwok, "Dual-Balancing for Multi-Task Learning",
arXiv:2308.12029 (2023; LibMTL ``DB_MTL``).

Two balancing steps:

1. Loss scale: every task is trained on ``log L_t``, whose gradient is ``g_t = ∇L_t / L_t``.
2. Gradient magnitude: an EMA ``ĝ_t ← β_k ĝ_t + (1 − β_k) g_t`` (``β_k = β / k^{σ}``, ``ĝ`` starting at
   0) is rescaled so every task contributes the largest norm:

       update = Σ_t α · ĝ_t / ‖ĝ_t‖,      α = max_s ‖ĝ_s‖.

Deviation (Gramian-only): the EMA of the gradient *vectors* needs a parameter-shaped buffer per task,
which ``init(num_tasks)`` cannot allocate and the Gramian/representation paths never see. Here
``needs = "gramian"``: the state keeps the EMA of the *norms* ``m_t ≈ ‖ĝ_t‖`` of the log-loss gradients,
``‖g_t‖ = sqrt(G_tt) / (L_t + 1e-8)``, and each task contributes the current direction at the norm
``α = max_s m_s``:

    w_t = α / ‖∇L_t‖,      update = Σ_t w_t ∇L_t = Σ_t α · ∇L_t / ‖∇L_t‖.

With ``β = 0`` this is the paper's update exactly; with ``β > 0`` it matches the paper whenever the
gradient directions are constant across steps, and otherwise drops the EMA's averaging of directions
(only magnitudes are smoothed).

Defaults ``β = 0.9``, ``σ = 0`` (LibMTL's ``DB_beta``, ``DB_beta_sigma``). A task with a zero
gradient (``‖∇L_t‖ ≤ 1e-12``) gets weight 0. ``T = 1`` rescales by definition: ``w = α / ‖∇L‖``, so the
update is the gradient direction at the smoothed norm of ``∇log L`` (at the first call
``(1 − β)·∇L / L``).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from mtljax.optim.base import Method
from mtljax.optim.dtypes import cast_like, working_dtype

_EPS = 1e-8
_ZERO_NORM = 1e-12


def db_mtl(*, beta: float = 0.9, beta_sigma: float = 0.0) -> Method:
    """DB-MTL with gradient-norm EMA ``β_k = beta / k**beta_sigma``."""
    if not (isinstance(beta, (int, float)) and 0 <= beta < 1):
        raise ValueError(f"db_mtl: beta must be in [0, 1), got {beta!r}")
    if not (isinstance(beta_sigma, (int, float)) and math.isfinite(beta_sigma) and beta_sigma >= 0):
        raise ValueError(f"db_mtl: beta_sigma must be a finite number >= 0, got {beta_sigma!r}")

    def init(num_tasks):
        return {"norm_ema": jnp.zeros((num_tasks,), jnp.float32), "step": jnp.zeros((), jnp.int32)}

    def weights(losses, state, key, *, gramian=None):
        del key
        if gramian is None:
            raise ValueError("db_mtl: needs the Gramian of the task gradients (gramian=...)")
        losses, gramian = jnp.asarray(losses), jnp.asarray(gramian)
        dtype = working_dtype(losses, gramian)
        losses = losses.astype(dtype)
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gramian.astype(dtype)), 0.0))  # ‖∇L_t‖
        log_norms = norms / (losses + _EPS)  # ‖∇log L_t‖
        step = state["step"] + 1
        b = beta / step.astype(jnp.float32) ** beta_sigma
        ema = log_norms + b * (state["norm_ema"] - log_norms)
        alpha = jnp.max(ema)
        nonzero = norms > _ZERO_NORM
        w = jnp.where(nonzero, alpha / jnp.where(nonzero, norms, 1.0), 0.0)
        return w.astype(dtype), cast_like({"norm_ema": ema, "step": step}, state)

    return Method("db_mtl", "gramian", init=init, weights=weights)
