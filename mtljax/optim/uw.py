"""Uncertainty weighting (UW).

Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry and
Semantics", CVPR 2018 (arXiv:1705.07115).

Every task owns a learnable log-variance ``s_t = log σ_t²`` and the joint objective is

    L_UW(θ, s) = Σ_t ½·e^{−s_t}·L_t(θ) + ½·s_t

(the Gaussian-likelihood form, ``1/(2σ²)·L + log σ``). The shared update is ``Σ_t w_t ∇L_t`` with
``w_t = ½·e^{−s_t}``, and ``∂L_UW/∂s_t = ½ − ½·e^{−s_t}·L_t`` vanishes at ``s_t = log L_t``: the
log-variances follow the log of the loss scales, where every weighted term ``w_t L_t`` equals ½.

Choices:

* Weights ``½·e^{−s}`` for every task (the paper's regression form; its classification form drops
  the ½). LibMTL uses the same single form for all tasks.
* ``s`` takes one gradient step per call, from the same point as the network (joint descent on
  ``(θ, s)``): the weights returned are those at the current ``s``, and the state holds the updated one.
  The paper trains ``s`` with the network's optimiser; here ``s`` has its own Adam (β₁=0.9, β₂=0.999,
  ε=1e-8) with learning rate ``lr`` (default 1e-3): Adam's step does not depend on the loss scale, so
  one default suits every task mix.
* ``init_log_var`` (default 0: σ² = 1, weights ½); LibMTL starts from −0.5 (weights ≈ 0.82).
* ``T = 1`` is not a special case: the single weight is ``½·e^{−s}`` (UW rescales by definition).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from mtljax.optim.base import Method
from mtljax.optim.dtypes import cast_like, working_dtype


def uncertainty_weighting(*, lr: float = 1e-3, init_log_var: float = 0.0) -> Method:
    """UW with log-variances learned by Adam(``lr``), starting from ``init_log_var``."""
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"uw: lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(init_log_var, (int, float)) and math.isfinite(init_log_var)):
        raise ValueError(f"uw: init_log_var must be a finite number, got {init_log_var!r}")
    opt = optax.adam(lr)

    def init(num_tasks):
        s = jnp.full((num_tasks,), init_log_var, jnp.float32)
        return {"log_var": s, "opt": opt.init(s)}

    def weights(losses, state, key, *, gramian=None):
        del key, gramian
        losses = jnp.asarray(losses)
        losses = losses.astype(working_dtype(losses))
        s = state["log_var"]
        w = 0.5 * jnp.exp(-s)
        grad_s = 0.5 - w * losses  # ∂L_UW/∂s_t
        upd, opt_state = opt.update(grad_s, state["opt"], s)
        new_state = {"log_var": optax.apply_updates(s, upd), "opt": opt_state}
        return w.astype(losses.dtype), cast_like(new_state, state)

    return Method("uw", "losses", init=init, weights=weights)
