"""Task-based flat-region SAM (Phan, Tran, Hoang, Tran, Nguyen, Le, 2022 — "Improving Multi-task
Learning via Seeking Task-based Flat Regions", arXiv 2211.13723; code VietHoang1512/FS-MTL).

SAM (Foret et al., 2021) minimises ``max_{‖e‖≤ρ} L(θ + e)`` with the first-order ascent step
``e = ρ g/‖g‖``. The multi-task version perturbs every task separately:

    g_t      = ∇L_t(θ)                                 (shared parameters and task t's head)
    e_t      = ρ · g_t / ‖g_t‖                          (adaptive: ρ · θ² ⊙ g_t / ‖|θ| ⊙ g_t‖, ASAM)
    g_t^SAM  = ∇L_t(θ + e_t)
    shared   ← Agg({g_t}) + Agg({g_t^SAM − g_t})         ("low-loss" part + "flat" part)
    head t   ← g_t^SAM

``Agg`` is any mtljax method: Gramian methods compute their weights separately for the two sets of
vectors (the method state is advanced by the first call only; the second call reuses the incoming
state with an independent key), Jacobian methods aggregate each set, and loss weightings weight both
by the same ``w`` (so the shared update is ``Σ_t w_t g_t^SAM``). With ``ρ = 0`` the flat part vanishes
and the update equals the base method's. The norm ``‖g_t‖`` runs over the shared parameters and task
t's head together (the head rows of other tasks are zero), as in the reference implementation.

Cost: ``T`` extra forward/backward passes (vmapped over tasks), memory ``O(T · #params)``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def _row_norm(rows) -> jax.Array:
    """``[T]`` Euclidean norms of stacked rows over all leaves."""
    leaves = jax.tree.leaves(rows)
    t = leaves[0].shape[0]
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.reshape(t, -1).astype(jnp.float32)), axis=1) for x in leaves))


def perturbations(rows, params, rho: float, adaptive: bool = False, eps: float = 1e-12):
    """``e_t`` for every task row of ``rows`` (pytree with leading task axis, shaped like ``params``)."""
    if adaptive:
        scaled = jax.tree.map(lambda g, p: g * jnp.abs(p)[None], rows, params)
        norm = _row_norm(scaled)
        return jax.tree.map(
            lambda g, p: rho * (jnp.square(p)[None] * g) / (norm.reshape((-1,) + (1,) * (g.ndim - 1)) + eps),
            rows, params)
    norm = _row_norm(rows)
    return jax.tree.map(lambda g: rho * g / (norm.reshape((-1,) + (1,) * (g.ndim - 1)) + eps), rows)


def perturbed_task_gradients(loss_fn: Callable, shared, heads, jac_shared, jac_heads, *, rho: float,
                             adaptive: bool = False):
    """``(g^SAM_shared, g^SAM_heads)``, each stacked over tasks: ``∇L_t`` at ``θ + e_t``.

    ``loss_fn(shared, heads) -> [T(+extra)]`` is the loss vector; ``jac_*`` are the per-task gradients
    at ``θ`` (leading task axis).
    """
    if rho < 0:
        raise ValueError(f"flat-region SAM: rho must be >= 0, got {rho}")
    num = jax.tree.leaves(jac_shared)[0].shape[0]
    e_s, e_h = perturbations((jac_shared, jac_heads), (shared, heads), rho, adaptive)

    def one(t, es, eh):
        moved_s = jax.tree.map(jnp.add, shared, es)
        moved_h = jax.tree.map(jnp.add, heads, eh)
        return jax.grad(lambda s, h: loss_fn(s, h)[t], argnums=(0, 1))(moved_s, moved_h)

    return jax.vmap(one)(jnp.arange(num), e_s, e_h)
