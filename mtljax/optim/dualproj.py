"""DualProj — Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024 (arXiv 2406.16232;
reference implementation TorchJD, ``torchjd.aggregation.DualProj``; the projection is Eq. 11 of GEM,
Lopez-Paz & Ranzato 2017).

The mean gradient is projected onto the dual cone of the task gradients, {d : J d ≥ 0}:

    d = π((1/T) Σ_t g_t) = Jᵀ w,   w = argmin_{v ≥ (1/T)·1} vᵀ G v   (G = J Jᵀ).

So d is the closest vector to the mean gradient that does not conflict with any task (J d ≥ 0), and it
equals the mean gradient when there is no conflict. Preference vector: the mean (TorchJD's default).
Numerics as in TorchJD and :mod:`mtljax.optim.upgrad`: the QP is solved on G / trace(G) + reg_eps·I
(reg_eps·I when trace(G) < norm_eps), defaults norm_eps = reg_eps = 1e-4, with the
active-set solver :func:`mtljax.optim.solvers.box_qp`. With one task w = [1].
"""

from __future__ import annotations

import jax.numpy as jnp

from mtljax.optim.base import Method
from mtljax.optim.solvers import box_qp
from mtljax.optim.upgrad import check_eps, dual_cone_gramian


def dualproj(*, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> Method:
    check_eps("dualproj", norm_eps, reg_eps)
    norm_eps, reg_eps = float(norm_eps), float(reg_eps)

    def weights(losses, state, key, *, gramian=None):
        del losses, key
        g = dual_cone_gramian(gramian, norm_eps, reg_eps)
        t = g.shape[0]
        return box_qp(g, jnp.full((t,), 1.0 / t, g.dtype)), state

    return Method("dualproj", "gramian", init=lambda num_tasks: (), weights=weights)
