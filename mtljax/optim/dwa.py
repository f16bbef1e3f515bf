"""Dynamic Weight Average (DWA).

Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019 (arXiv:1803.10704).

    r_t(k) = L̄_t(k−1) / L̄_t(k−2),      w_t(k) = T · exp(r_t(k)/τ) / Σ_s exp(r_s(k)/τ)

with temperature ``τ = 2`` and ``w_t = 1`` while fewer than two past averages exist. The weights always
sum to ``T``; a task whose loss fell more slowly (larger ratio) gets a larger weight.

Choices:

* The paper averages the losses over an *epoch* (``L̄``); a pure per-step method sees one batch at a
  time, so the state accumulates losses over blocks of ``period`` calls and keeps the means of the two
  last completed blocks. ``period = steps per epoch`` is the paper's rule exactly; the default
  ``period = 1`` uses the previous two steps' losses (``r_t = L_t(k−1)/L_t(k−2)``, equal weights for the
  first two calls). Ratios are taken of ``max(L̄, 1e-12)`` so zero losses stay finite.
* The current batch's loss never enters its own weights (as in the paper, where epoch ``k`` uses the
  averages of epochs ``k−1`` and ``k−2``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mtljax.optim.base import Method
from mtljax.optim.dtypes import cast_like, working_dtype

_TINY = 1e-12


def dwa(*, temperature: float = 2.0, period: int = 1) -> Method:
    """DWA with softmax temperature ``temperature`` over loss averages of ``period`` calls."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"dwa: temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(period, bool) or not isinstance(period, int) or period < 1:
        raise ValueError(f"dwa: period must be a positive integer, got {period!r}")

    def init(num_tasks):
        zeros = jnp.zeros((num_tasks,), jnp.float32)
        return {
            "accum": zeros,  # running sum of losses in the current block
            "calls": jnp.zeros((), jnp.int32),  # calls in the current block
            "last": zeros,  # mean loss of the last completed block (k−1)
            "before_last": zeros,  # ... and of the one before (k−2)
            "blocks": jnp.zeros((), jnp.int32),  # completed blocks, saturating at 2
        }

    def weights(losses, state, key, *, gramian=None):
        del key, gramian
        losses = jnp.asarray(losses)
        losses = losses.astype(working_dtype(losses))
        t = losses.shape[0]
        ratio = jnp.maximum(state["last"], _TINY) / jnp.maximum(state["before_last"], _TINY)
        w = t * jax.nn.softmax(ratio / temperature)
        w = jnp.where(state["blocks"] >= 2, w, jnp.ones_like(w))

        accum = state["accum"] + losses
        calls = state["calls"] + 1
        done = calls >= period
        new_state = {
            "accum": jnp.where(done, 0.0, accum),
            "calls": jnp.where(done, 0, calls).astype(jnp.int32),
            "last": jnp.where(done, accum / period, state["last"]),
            "before_last": jnp.where(done, state["last"], state["before_last"]),
            "blocks": jnp.minimum(state["blocks"] + done.astype(jnp.int32), 2).astype(jnp.int32),
        }
        return w.astype(losses.dtype), cast_like(new_state, state)

    return Method("dwa", "losses", init=init, weights=weights)
