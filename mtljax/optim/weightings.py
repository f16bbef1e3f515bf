"""Equal weighting: ``w_t = 1`` (the plain sum of task losses; the baseline every method is compared to)."""

from __future__ import annotations

import jax.numpy as jnp

from mtljax.optim.base import Method
from mtljax.optim.dtypes import working_dtype


def equal() -> Method:
    def weights(losses, state, key, *, gramian=None):
        del key, gramian
        losses = jnp.asarray(losses)
        return jnp.ones(losses.shape, working_dtype(losses)), state

    return Method("equal", "losses", init=lambda num_tasks: (), weights=weights)
