"""PCGrad — Yu, Kumar, Gupta, Levine, Hausman, Finn, "Gradient Surgery for Multi-Task Learning"
(NeurIPS 2020, arXiv 2001.06782).

For every task i, visit the other tasks j in a random order; whenever the current g_i' conflicts with
g_j (g_i'·g_j < 0), remove the conflicting component:

    g_i' ← g_i' − (g_i'·g_j / ‖g_j‖²) g_j,          update = Σ_i g_i'   (sum, as in the paper).

Every g_i' is a combination of the original gradients, so we track its coefficient vector c_i
(g_i' = Jᵀ c_i) and compute all dot products from the Gramian: g_i'·g_j = (G c_i)_j. The weights are
w = Σ_i c_i. The projections use the original g_j (not the projected ones), as in the paper and its
code. Random orders come from ``key`` (one permutation per task).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtljax.optim.base import Method
from mtljax.optim.dtypes import working_dtype


def project_conflicts(gram, order, eps: float = 1e-20):
    """Coefficients ``c_i`` (rows) of the projected gradients for visiting orders ``order[i]``."""
    t = gram.shape[0]

    def one(i, perm):
        def visit(k, c):
            j = perm[k]
            dot = c @ gram[:, j]
            remove = (j != i) & (dot < 0) & (gram[j, j] > eps)
            return jnp.where(remove, c - dot / jnp.maximum(gram[j, j], eps) * jnp.eye(t, dtype=c.dtype)[j], c)

        return jax.lax.fori_loop(0, t, visit, jnp.eye(t, dtype=gram.dtype)[i])

    return jax.vmap(one)(jnp.arange(t), order)


def pcgrad() -> Method:
    def weights(losses, state, key, *, gramian=None):
        gram = jnp.asarray(gramian, working_dtype(gramian))
        t = gram.shape[0]
        order = jax.vmap(lambda k: jax.random.permutation(k, t))(jax.random.split(key, t))
        return jnp.sum(project_conflicts(gram, order), axis=0), state

    return Method("pcgrad", "gramian", init=lambda num_tasks: (), weights=weights, stochastic=True)
