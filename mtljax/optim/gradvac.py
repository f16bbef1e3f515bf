"""GradVac — Wang, Tsvetkov, Firat, Cao, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models" (ICLR 2021, arXiv 2010.05874).

PCGrad only acts when gradients conflict (cosine < 0); GradVac pulls every pair toward an adaptive
target similarity φ̂_ij, an EMA of the observed cosines (state, starting at 0). For every task i and the
other tasks j in a random order, with φ = cos(g_i', g_j):

    if φ < φ̂_ij:  g_i' ← g_i' + ‖g_i'‖ (φ̂_ij √(1−φ²) − φ √(1−φ̂_ij²)) / (‖g_j‖ √(1−φ̂_ij²)) · g_j
    φ̂_ij ← (1 − β) φ̂_ij + β φ,                              update = Σ_i g_i'.

The paper applies this per parameter group (layer); we apply it to the whole shared gradient
(one group) so that it works from the Gramian (coefficient tracking as in PCGrad). With β = 0 and
φ̂ = 0 it reduces to PCGrad.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtljax.optim.base import Method
from mtljax.optim.dtypes import working_dtype


def gradvac(*, beta: float = 0.01, eps: float = 1e-8) -> Method:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"gradvac: beta must be in [0, 1], got {beta}")

    def weights(losses, state, key, *, gramian=None):
        del losses
        gram = jnp.asarray(gramian, working_dtype(gramian))
        t = gram.shape[0]
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
        order = jax.vmap(lambda k: jax.random.permutation(k, t))(jax.random.split(key, t))
        eye = jnp.eye(t, dtype=gram.dtype)

        def one(i, perm, targets):
            def visit(k, carry):
                c, targets = carry
                j = perm[k]
                norm_c = jnp.sqrt(jnp.maximum(c @ gram @ c, 0.0))
                denom = norm_c * norms[j]
                phi = jnp.where(denom > eps, (c @ gram[:, j]) / jnp.maximum(denom, eps), 0.0)
                target = targets[j]
                root = jnp.sqrt(jnp.maximum(1.0 - target ** 2, eps))
                coef = norm_c * (target * jnp.sqrt(jnp.maximum(1.0 - phi ** 2, 0.0)) - phi * root) / (
                    jnp.maximum(norms[j], eps) * root)
                active = (j != i) & (phi < target) & (denom > eps)
                c = jnp.where(active, c + coef * eye[j], c)
                ema = ((1 - beta) * target + beta * phi).astype(targets.dtype)  # the state's dtype
                targets = jnp.where(j != i, targets.at[j].set(ema), targets)
                return c, targets

            return jax.lax.fori_loop(0, t, visit, (eye[i], targets))

        coefs, new_targets = jax.vmap(one)(jnp.arange(t), order, state)
        return jnp.sum(coefs, axis=0), new_targets

    return Method("gradvac", "gramian", init=lambda num_tasks: jnp.zeros((num_tasks, num_tasks), jnp.float32),
                  weights=weights, stochastic=True)
