"""Random Loss Weighting (RLW).

Lin, Ye, Zhang & Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning", TMLR 2022 (arXiv:2111.10603).

Fresh weights every step, independent of the losses:

    λ̃ ~ p(λ̃)  (T draws),      λ = softmax(λ̃),      update = Σ_t λ_t ∇L_t

with ``p`` the standard normal by default (the paper's main variant).

Choices:

* Scale: the paper and LibMTL use ``λ`` on the simplex (Σλ = 1). Here the weights are multiplied by
  ``T`` (Σw = T, E[w_t] = 1), so RLW has the loss scale of the ``equal`` baseline (Σw = T) and the
  two can share a learning rate; ``sum_to_one=True`` gives the paper's scale.
* Distributions (as in LibMTL): ``"normal"`` N(0, 1), ``"uniform"`` U(0, 1), ``"dirichlet"``
  Dir(1, …, 1) — each then passed through the softmax —, and ``"bernoulli"``: 0/1 weights with
  p = ½, conditioned on not all being 0 (no softmax, no rescaling). The conditioning draws 32
  candidate vectors and keeps the first non-zero one (all zero with probability 2^{−32T}; then task 0).
* Randomness comes only from ``key``; the method has no state (``()``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtljax.optim.base import Method
from mtljax.optim.dtypes import working_dtype

DISTRIBUTIONS = ("normal", "uniform", "dirichlet", "bernoulli")
_BERNOULLI_TRIES = 32


def random_loss_weighting(*, distribution: str = "normal", sum_to_one: bool = False) -> Method:
    """RLW with weights ``T·softmax(λ̃)``, ``λ̃ ~ distribution`` (``softmax(λ̃)`` if ``sum_to_one``)."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"rlw: distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if not isinstance(sum_to_one, bool):
        raise ValueError(f"rlw: sum_to_one must be a bool, got {sum_to_one!r}")

    def weights(losses, state, key, *, gramian=None):
        del gramian
        losses = jnp.asarray(losses)
        t, dtype = losses.shape[0], working_dtype(losses)
        if distribution == "bernoulli":
            draws = jax.random.bernoulli(key, 0.5, (_BERNOULLI_TRIES, t))
            first = jnp.argmax(draws.any(axis=1))  # index of the first non-zero draw (0 if none)
            w = draws[first].astype(dtype)
            w = jnp.where(w.sum() > 0, w, jnp.zeros_like(w).at[0].set(1.0))
            return w, state
        if distribution == "normal":
            raw = jax.random.normal(key, (t,), jnp.float32)
        elif distribution == "uniform":
            raw = jax.random.uniform(key, (t,), jnp.float32)
        else:
            e = jax.random.exponential(key, (t,), jnp.float32)  # Dir(1, …, 1) = E / ΣE, E ~ Exp(1)
            raw = e / jnp.sum(e)
        w = jax.nn.softmax(raw.astype(dtype))  # draws are float32 in every mode (same key, same draws)
        return (w if sum_to_one else t * w), state

    return Method("rlw", "losses", init=lambda num_tasks: (), weights=weights, stochastic=True)
