"""Equal weighting: ``w_t = 1`` (the plain sum of task losses; the baseline every method is compared to)."""

from __future__ import annotations

import jax.numpy as jnp

from mtljax.optim.base import Method


def equal() -> Method:
    def weights(losses, state, key, *, gramian=None):
        del key, gramian
        return jnp.ones_like(losses, dtype=jnp.float32), state

    return Method("equal", "losses", init=lambda num_tasks: (), weights=weights)
