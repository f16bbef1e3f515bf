"""Smooth Tchebycheff scalarization (STCH).

Lin, Zhang, Yang, Liu, Wang & Zhang, "Smooth Tchebycheff Scalarization for Multi-Objective
Optimization", ICML 2024 (arXiv:2402.19078; official code Xi-L/STCH, ``STCH_MTL``).

The Tchebycheff max over tasks is smoothed with a log-sum-exp of temperature ``μ``:

    STCH(θ) = T · μ · log Σ_t exp(λ_t (ℓ_t − z_t) / μ)
    ∇STCH  = Σ_t T · λ_t · softmax(λ(ℓ − z)/μ)_t · ∇ℓ_t

As ``μ → 0`` the weight concentrates on the worst task (the Tchebycheff max); as ``μ → ∞`` it tends to
equal weights ``λ_t`` on the ``ℓ_t``.

Choices (following the official MTL code):

* ``log_losses=True`` (default): ``ℓ_t = log L_t`` and ``z_t = log N_t`` with a reference ("nadir")
  vector ``N`` of loss scales, i.e. ``ℓ_t − z_t = log(L_t / N_t)``; the weight on ``∇L_t`` is then
  ``T·λ_t·softmax_t / (L_t + 1e-8)``. The official code trains a few warm-up epochs on ``Σ log L_t``
  and takes ``N`` as the mean loss of the last warm-up epoch. Here: for the first ``warmup_steps``
  calls the weights are ``1 / (L_t + 1e-8)`` (the ``Σ log L`` warm-up) and ``N`` is the mean of all
  warm-up losses; with ``warmup_steps = 0`` (default) ``N`` is the first call's losses (so the first
  call has uniform softmax). To match the paper, set ``warmup_steps`` to about 4 epochs of steps.
* ``log_losses=False``: plain STCH on the raw losses with ideal point ``z = 0`` (losses are ≥ 0):
  ``w = T·λ·softmax(λL/μ)`` — no warm-up, no nadir.
* ``T·`` factor as in the official code, so that with ``λ = 1`` the ``ℓ``-weights sum to ``T`` like
  the ``equal`` baseline; ``preference`` (``λ``, default all ones as in the official MTL code) must be
  positive and have one entry per task.
* Default ``μ = 1`` (the official MTL config's ``STCH_mu``). The softmax is evaluated stably.
* ``T = 1``: plain mode gives ``w = λ``; log mode gives ``w = 1/L`` (gradient of ``log L``: rescales).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mtljax.optim.base import Method
from mtljax.optim.dtypes import cast_like, working_dtype

_EPS = 1e-8


def smooth_tchebycheff(*, mu: float = 1.0, warmup_steps: int = 0, preference=None,
                       log_losses: bool = True) -> Method:
    """STCH with smoothing ``mu``, preference ``λ`` and (log mode) a nadir from ``warmup_steps`` calls."""
    if not (isinstance(mu, (int, float)) and math.isfinite(mu) and mu > 0):
        raise ValueError(f"stch: mu must be a finite number > 0, got {mu!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"stch: warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if not isinstance(log_losses, bool):
        raise ValueError(f"stch: log_losses must be a bool, got {log_losses!r}")
    if preference is not None:
        pref = [float(p) for p in preference]
        if not pref or not all(math.isfinite(p) and p > 0 for p in pref):
            raise ValueError(f"stch: preference must be a non-empty list of positive numbers, got {preference!r}")
    else:
        pref = None

    def _lam(t, dtype=jnp.float32):
        if pref is None:
            return jnp.ones((t,), dtype)
        if len(pref) != t:
            raise ValueError(f"stch: preference has {len(pref)} entries but there are {t} tasks")
        return jnp.asarray(pref, dtype)

    def init(num_tasks):
        _lam(num_tasks)
        zeros = jnp.zeros((num_tasks,), jnp.float32)
        return {"step": jnp.zeros((), jnp.int32), "warmup_sum": zeros, "nadir": jnp.ones_like(zeros)}

    def weights(losses, state, key, *, gramian=None):
        del key, gramian
        losses = jnp.asarray(losses)
        losses = losses.astype(working_dtype(losses))
        t = losses.shape[0]
        lam = _lam(t, losses.dtype)
        if not log_losses:
            return t * lam * jax.nn.softmax(lam * losses / mu), state

        step = state["step"]
        in_warmup = step < warmup_steps
        warmup_sum = state["warmup_sum"] + jnp.where(in_warmup, losses, 0.0)
        first_after = warmup_sum / warmup_steps if warmup_steps > 0 else losses
        nadir = jnp.where(step == warmup_steps, first_after, state["nadir"])
        rel = jnp.log(losses + _EPS) - jnp.log(nadir + _EPS)  # ℓ − z = log(L / N)
        w_stch = t * lam * jax.nn.softmax(lam * rel / mu) / (losses + _EPS)
        w = jnp.where(in_warmup, 1.0 / (losses + _EPS), w_stch)
        new_state = {"step": jnp.minimum(step + 1, warmup_steps + 1).astype(jnp.int32),
                     "warmup_sum": warmup_sum, "nadir": nadir}
        return w.astype(losses.dtype), cast_like(new_state, state)

    return Method("stch", "losses", init=init, weights=weights)
