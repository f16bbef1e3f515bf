"""GradDrop — Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov, "Just Pick a Sign: Optimizing Deep
Multitask Models with Gradient Sign Dropout" (NeurIPS 2020, arXiv 2010.06808).

Per gradient entry, the sign purity P = ½ (1 + Σ_t g_t / Σ_t |g_t|) ∈ [0, 1] is the probability of
keeping the positive components; with U ~ Uniform(0, 1) drawn per entry, task t's entry is kept when
(P > U and g_t > 0) or (P < U and g_t < 0). The update is Σ_t m_t ⊙ g_t with
m_t = mask + leak·(1 − mask) (``leak`` = 0 in the paper's default). Not linear in the gradients, so it
needs the per-task gradients themselves (``needs='jacobian'``). The paper applies it to activation
gradients before a shared layer; we apply it to the shared parameter gradients (LibMTL applies it to
representation gradients). With one task every entry is kept.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtljax.optim.base import Method


def graddrop(*, leak: float = 0.0, eps: float = 1e-12) -> Method:
    if not 0.0 <= leak <= 1.0:
        raise ValueError(f"graddrop: leak must be in [0, 1], got {leak}")

    def aggregate(jacobian, losses, state, key):
        del losses
        leaves, tree = jax.tree.flatten(jacobian)
        keys = jax.random.split(key, len(leaves))

        def one(g, k):
            purity = 0.5 * (1.0 + jnp.sum(g, axis=0) / (jnp.sum(jnp.abs(g), axis=0) + eps))
            u = jax.random.uniform(k, purity.shape, jnp.float32)  # float32 draws in every mode
            keep = ((purity > u)[None] & (g > 0)) | ((purity < u)[None] & (g < 0))
            mask = keep.astype(g.dtype)
            return jnp.sum((mask + leak * (1.0 - mask)) * g, axis=0)

        return jax.tree.unflatten(tree, [one(g, k) for g, k in zip(leaves, keys)]), state

    return Method("graddrop", "jacobian", init=lambda num_tasks: (), aggregate=aggregate, stochastic=True)
