"""Task-based flat-region SAM (Phan, Tran, Hoang, Tran, Nguyen, Le, 2022 — "Improving Multi-task
Learning via Seeking Task-based Flat Regions", arXiv 2211.13723; code VietHoang1512/FS-MTL), as a
wrapper around a multi-task transform.

SAM (Foret et al., 2021) minimises ``max_{‖e‖≤ρ} L(θ + e)`` with the first-order ascent step
``e = ρ g/‖g‖``. The multi-task version perturbs every task separately:

    g_t      = ∇L_t(θ)                                 (shared parameters and task t's own modules)
    e_t      = ρ · g_t / ‖g_t‖  per ρ-ball              (adaptive: ρ · θ² ⊙ g_t / ‖|θ| ⊙ g_t‖, ASAM)
    g_t^SAM  = ∇L_t(θ + e_t)
    shared   ← Agg({g_t}) + Agg({g_t^SAM − g_t})         ("low-loss" part + "flat" part)
    task t   ← g_t^SAM                                  (with the method's head weights)

``Agg`` is the wrapped multi-task transform (any mtljax method): the method state is advanced by the
first call only; the second call reuses the incoming state with an independent key. Loss weightings
weight both sets by the same ``w``, so their shared update is ``Σ_t w_t g_t^SAM``. With ``ρ = 0`` the
flat part vanishes and the update equals the base method's.

ρ-balls (``balls``): ``"separate"`` (default, as the reference implementation) normalises the shared
part of ``g_t`` and task t's specific part (its head) each by its own norm, so both move by ρ;
``"joint"`` normalises them together by ``‖g_t‖`` over shared and specific parameters (mtljax before
0.2).

Cost: ``T`` extra forward/backward passes (vmapped over tasks), memory ``O(T · #params)``: it needs
the per-task gradients themselves (level ``param``).

    tx = optax.chain(flat_sam(as_optax(pcgrad(), T), rho=0.05), optax.adamw(1e-3))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtljax.optim.task_grads import TaskGradients

BALLS = ("separate", "joint")


def _row_norm(rows: list) -> jax.Array:
    """``[T]`` Euclidean norms of stacked rows over all leaves of a list."""
    if not rows:
        return None
    t = rows[0].shape[0]
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.reshape(t, -1).astype(jnp.float32)), axis=1) for x in rows))


def _scaled(rows: list, params: list, norm, rho: float, adaptive: bool, eps: float) -> list:
    out = []
    for g, p in zip(rows, params):
        n = norm.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype) + eps
        out.append(rho * (jnp.square(p)[None] * g if adaptive else g) / n)
    return out


def perturbations(shared_rows: list, specific_rows: list, shared: list, specific: list, rho: float, *,
                  adaptive: bool = False, balls: str = "separate", eps: float = 1e-12) -> tuple[list, list]:
    """``e_t`` for every task row: ``(shared part, specific part)``, each a list of ``[T, ...]`` leaves."""
    if balls not in BALLS:
        raise ValueError(f"balls: unknown {balls!r}; choose from {BALLS}")
    def norm_rows(rows, params):
        return [g * jnp.abs(p)[None] for g, p in zip(rows, params)] if adaptive else rows

    n_s, n_h = _row_norm(norm_rows(shared_rows, shared)), _row_norm(norm_rows(specific_rows, specific))
    if balls == "joint" and n_h is not None:
        joint = jnp.sqrt(jnp.square(n_s) + jnp.square(n_h)) if n_s is not None else n_h
        n_s = n_h = joint
    return (_scaled(shared_rows, shared, n_s, rho, adaptive, eps),
            _scaled(specific_rows, specific, n_h, rho, adaptive, eps))


def flat_sam(multitask: optax.GradientTransformationExtraArgs, rho: float, *, adaptive: bool = False,
             balls: str = "separate") -> optax.GradientTransformationExtraArgs:
    """Wrap a multi-task transform (:func:`mtljax.optim.as_optax`) in task-based flat-region SAM.

    Its input must be a :class:`TaskGradients` built at level ``param`` by
    :func:`mtljax.optim.task_gradients` (it needs the rows and the loss function).
    """
    if not rho >= 0:
        raise ValueError(f"rho: must be >= 0, got {rho}")
    if balls not in BALLS:
        raise ValueError(f"balls: unknown {balls!r}; choose from {BALLS}")

    def update(grads: TaskGradients, state, params=None, **extra):
        if not isinstance(grads, TaskGradients):
            raise ValueError("flat_sam: needs TaskGradients from mtljax.optim.task_gradients (the per-task loss "
                             "function), not plain stacked gradients")
        rows, part = grads.rows(), grads.part
        shared, specific = part.split(params)
        e_s, e_h = perturbations(rows.shared, rows.specific, shared, specific, rho, adaptive=adaptive, balls=balls)
        loss_fn = grads.loss_fn

        def one(t, es, eh):
            moved = part.merge([p + e for p, e in zip(shared, es)], [p + e for p, e in zip(specific, eh)])
            return part.split(jax.grad(lambda p: loss_fn(p)[t])(moved))

        sam_s, sam_h = jax.vmap(one)(jnp.arange(grads.num_tasks), e_s, e_h)
        out, new_state = multitask.update(grads, state, params, **extra)
        diff = TaskGradients.from_parts([a - b for a, b in zip(sam_s, rows.shared)],
                                        [a - b for a, b in zip(sam_h, rows.specific)], grads.losses, part,
                                        key=None if grads.key is None else jax.random.fold_in(grads.key, 1))
        flat, _ = multitask.update(diff, state, params, **extra)
        return jax.tree.map(jnp.add, out, flat), new_state

    return optax.GradientTransformationExtraArgs(multitask.init, update)


__all__ = ["BALLS", "flat_sam", "perturbations"]
