"""Fast Adaptive Multitask Optimization (FAMO).

Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023
(arXiv:2306.03792; official code Cranial-XIX/FAMO).

FAMO descends ``Σ_t z_t log L_t`` with task logits ``ξ`` and ``z = softmax(ξ)``, normalised by
``c = (Σ_t z_t / L_t)^{-1}``:

    w_t = c · z_t / L_t            (Σ_t w_t = 1; update = Σ_t w_t ∇L_t = c Σ_t z_t ∇log L_t)

After a step the logits move so that tasks whose log-loss fell *less* gain weight (O(1) per step, no
per-task gradients):

    δ_t = log L_t(before) − log L_t(after),      ξ ← ξ − lr·Adam(J_softmax(ξ)ᵀ δ + γ·ξ)

Choices:

* Losses observed at the next call. The official code re-evaluates the losses on the same batch after
  the parameter update; a pure weighting sees each loss once, so ``δ`` compares the losses of two
  consecutive calls (different batches: a noisier estimate of the same decrease). The state keeps the
  previous losses; at call ``k`` the logits are first updated with ``δ = log L(k−1) − log L(k)``, then
  the weights for ``L(k)`` are computed from the updated logits. The first call only stores ``L(0)``
  (``z`` uniform, ``w_t ∝ 1/L_t``).
* ``ξ`` uses Adam(``lr``) with L2 decay ``γ·ξ`` added to its gradient, as the official code
  (``torch.optim.Adam(weight_decay=γ)``). Defaults ``lr = 0.025``, ``gamma = 1e-3`` (LibMTL's defaults;
  the official code defaults to ``γ = 0.01``, which its CelebA script also uses, and 0 for its toy).
* The minimum losses subtracted in the official code default to 0 and are not exposed; ``1e-8`` is
  added to every loss before logs and divisions, as there.
* Weights sum to 1 (the paper's normalisation), not ``T``; ``T = 1`` gives ``w = 1``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from mtljax.optim.base import Method
from mtljax.optim.dtypes import cast_like, working_dtype

_EPS = 1e-8


def famo(*, lr: float = 0.025, gamma: float = 1e-3) -> Method:
    """FAMO with logit learning rate ``lr`` and logit decay ``gamma``."""
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"famo: lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"famo: gamma must be a finite number >= 0, got {gamma!r}")
    opt = optax.chain(optax.add_decayed_weights(gamma), optax.adam(lr))

    def init(num_tasks):
        xi = jnp.zeros((num_tasks,), jnp.float32)
        return {"logits": xi, "opt": opt.init(xi), "prev_losses": jnp.ones((num_tasks,), jnp.float32),
                "step": jnp.zeros((), jnp.int32)}

    def weights(losses, state, key, *, gramian=None):
        del key, gramian
        losses = jnp.asarray(losses)
        d = losses.astype(working_dtype(losses)) + _EPS
        xi = state["logits"]

        # logit step from the decrease of the log-losses since the previous call
        delta = jnp.log(state["prev_losses"]) - jnp.log(d)
        z = jax.nn.softmax(xi)
        grad_xi = z * (delta - jnp.dot(z, delta))  # J_softmax(ξ)ᵀ δ
        upd, opt_state = opt.update(grad_xi, state["opt"], xi)
        stepped = state["step"] > 0
        xi, opt_state = jax.tree.map(lambda new, old: jnp.where(stepped, new, old),
                                     (optax.apply_updates(xi, upd), opt_state), (xi, state["opt"]))

        z = jax.nn.softmax(xi)
        w = (z / d) / jnp.sum(z / d)
        new_state = {"logits": xi, "opt": opt_state, "prev_losses": d, "step": state["step"] + 1}
        return w.astype(d.dtype), cast_like(new_state, state)

    return Method("famo", "losses", init=init, weights=weights)
