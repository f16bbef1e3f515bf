"""Geometric Loss Strategy (GLS).

Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream Feature Aggregation and Geometric
Loss Strategy for Multi-Task Learning", CVPR Workshops 2019 (arXiv:1904.08492).

The objective is the geometric mean of the task losses,

    GLS(θ) = (Π_t L_t)^{1/T},      ∇GLS = Σ_t [GLS / (T·L_t)] ∇L_t,

so the weights are ``w_t = GLS / (T·L_t) = exp(mean_s log L_s − log L_t) / T``: a task with a small
loss gets a large weight (``w_t ∝ L_t^{1/T − 1}``), and ``Σ_t w_t L_t = GLS``.

Choices:

* Computed in log space (no overflow/underflow of the product for many tasks).
* Guard: the losses are clamped at ``eps`` (default 1e-8) before the logs — GLS needs positive losses;
  as ``L_t → 0`` the true weight ``∝ L_t^{1/T−1}`` diverges, and the clamp keeps it finite.
* ``T = 1`` gives ``w = 1`` (the single gradient unchanged). No state.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from mtljax.optim.base import Method
from mtljax.optim.dtypes import working_dtype


def geometric_loss(*, eps: float = 1e-8) -> Method:
    """GLS weights ``(Π L)^{1/T} / (T·L_t)`` with losses clamped at ``eps``."""
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"gls: eps must be a finite number > 0, got {eps!r}")

    def weights(losses, state, key, *, gramian=None):
        del key, gramian
        losses = jnp.asarray(losses)
        log_l = jnp.log(jnp.maximum(losses.astype(working_dtype(losses)), eps))
        t = log_l.shape[0]
        w = jnp.exp(jnp.mean(log_l) - log_l) / t
        return w, state

    return Method("gls", "losses", init=lambda num_tasks: (), weights=weights)
