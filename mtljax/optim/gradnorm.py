"""GradNorm.

Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss Balancing
in Deep Multitask Networks", ICML 2018 (arXiv:1711.02257).

Learnable task weights ``w`` (start at 1) are trained so that the weighted gradient norms on the
shared layer follow the tasks' relative training rates:

    G_t = w_t ‖∇_W L_t‖,   Ḡ = mean_t G_t,   L̃_t = L_t / L_t(0),   r_t = L̃_t / mean_s L̃_s
    L_grad = Σ_t | G_t − Ḡ · r_t^α |        (the target Ḡ·r_t^α is held constant)
    ∂L_grad/∂w_t = sign(G_t − Ḡ r_t^α) · ‖∇_W L_t‖

then ``w`` is renormalised to ``Σ_t w_t = T``. A task that trains slowly (large ``r_t``) is pushed to a
larger gradient norm; ``α`` (default 1.5) sets the strength of that pull.

Choices:

* ``needs = "gramian"``: only the diagonal is used, ``‖∇_W L_t‖ = sqrt(G_tt)``. The paper takes ``W``
  = the last shared layer; the trainer decides which gradients the Gramian is built from (parameters,
  a layer, or the shared representation).
* The weights returned are the current ``w(k)`` (the network step uses them), and the state holds
  ``w(k+1)``, as in the paper's Algorithm 1. ``L(0)`` is the first call's losses, kept in the state.
* ``w`` takes one Adam step (learning rate ``lr``, default 0.025) per call; the paper trains ``w`` with
  "standard update rules" alongside the network without a separate setting, and Adam keeps the step
  independent of the gradient-norm scale. After the step ``w`` is clipped to ``≥ 1e-4`` (so no task
  is switched off for good) and rescaled to sum ``T``. (LibMTL instead parametrises
  ``w = T·softmax(logits)``; we keep the paper's direct weights.)
* Zero gradients are harmless (their weights get no push); ``L(0) = 0`` is guarded by ``1e-8``.
* ``T = 1``: ``w = 1`` always (renormalisation), the single gradient unchanged.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from mtljax.optim.base import Method
from mtljax.optim.dtypes import cast_like, working_dtype

_EPS = 1e-8
_MIN_WEIGHT = 1e-4


def gradnorm(*, alpha: float = 1.5, lr: float = 0.025) -> Method:
    """GradNorm with restoring strength ``alpha``; weights learned by Adam(``lr``)."""
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"gradnorm: alpha must be a finite number >= 0, got {alpha!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"gradnorm: lr must be a finite number > 0, got {lr!r}")
    opt = optax.adam(lr)

    def init(num_tasks):
        w = jnp.ones((num_tasks,), jnp.float32)
        return {"w": w, "opt": opt.init(w), "initial_losses": jnp.ones((num_tasks,), jnp.float32),
                "step": jnp.zeros((), jnp.int32)}

    def weights(losses, state, key, *, gramian=None):
        del key
        if gramian is None:
            raise ValueError("gradnorm: needs the Gramian of the task gradients (gramian=...)")
        losses, gramian = jnp.asarray(losses), jnp.asarray(gramian)
        dtype = working_dtype(losses, gramian)
        losses = losses.astype(dtype)
        t = losses.shape[0]
        initial = jnp.where(state["step"] == 0, losses, state["initial_losses"])
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gramian.astype(dtype)), 0.0))
        w = state["w"]
        g_w = w * norms
        rate = losses / jnp.maximum(initial, _EPS)
        r = rate / jnp.maximum(jnp.mean(rate), _EPS)
        target = jnp.mean(g_w) * r ** alpha
        grad_w = jnp.sign(g_w - target) * norms
        upd, opt_state = opt.update(grad_w, state["opt"], w)
        w_next = jnp.maximum(optax.apply_updates(w, upd), _MIN_WEIGHT)
        w_next = t * w_next / jnp.sum(w_next)
        new_state = {"w": w_next, "opt": opt_state, "initial_losses": initial,
                     "step": jnp.minimum(state["step"] + 1, 1).astype(jnp.int32)}
        return w.astype(dtype), cast_like(new_state, state)

    return Method("gradnorm", "gramian", init=init, weights=weights)
