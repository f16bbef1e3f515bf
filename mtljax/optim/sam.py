"""Sharpness-aware minimisation (Foret, Kleiner, Mobahi, Neyshabur, 2021) around a multi-task chain.

One ascent step, then the real step at the perturbed point, as ``optax.contrib.sam`` in opaque mode
with ``sync_period=2``:

    e = ρ · d/‖d‖        (d: the multi-task direction at θ, from ``adversary``)
    update = optimizer(per-task gradients at θ + e)

Both ``optimizer`` and ``adversary`` start with the same multi-task transform, so SAM perturbs along
the direction the method would take and the method aggregates the gradients at the perturbed point.
Unlike ``optax.contrib.sam`` it forwards extra arguments to both chains (keys, losses) and keeps the
adversary's state between steps (a stateful method's copy in the adversary evolves at θ). Its input is
a :class:`~mtljax.optim.task_grads.TaskGradients` (recomputed at ``θ + e`` by ``.at``) or, for plain
stacked gradients, a ``grad_fn(params) -> stacked gradients`` extra argument.

    mt = as_optax(pcgrad(), T)
    tx = sam(optax.chain(mt, optax.adamw(1e-3)),
             optax.chain(mt, optax.contrib.normalize(), optax.sgd(0.05)))
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

import optax

from mtljax.optim.task_grads import TaskGradients


class SAMState(NamedTuple):
    opt_state: Any
    adv_state: Any


def sam(optimizer: optax.GradientTransformation,
        adversary: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """SAM: ``adversary`` gives the ascent step (an optax update, applied with its sign flipped),
    ``optimizer`` the update from the gradients at the perturbed parameters."""
    optimizer = optax.with_extra_args_support(optimizer)
    adversary = optax.with_extra_args_support(adversary)

    def init(params):
        return SAMState(optimizer.init(params), adversary.init(params))

    def update(grads, state, params=None, *, grad_fn=None, **extra):
        if params is None:
            raise ValueError("sam: update needs params")
        descent, adv_state = adversary.update(grads, state.adv_state, params, **extra)
        perturbed = jax.tree.map(lambda p, d: p - d.astype(p.dtype), params, descent)
        if isinstance(grads, TaskGradients):
            grads = grads.at(perturbed)
        elif grad_fn is not None:
            grads = grad_fn(perturbed)
        else:
            raise ValueError("sam: pass TaskGradients from mtljax.optim.task_gradients, or grad_fn=... with plain "
                             "gradients")
        updates, opt_state = optimizer.update(grads, state.opt_state, params, **extra)
        return updates, SAMState(opt_state, adv_state)

    return optax.GradientTransformationExtraArgs(init, update)


def sam_adversary(multitask: optax.GradientTransformation, rho: float) -> optax.GradientTransformation:
    """The usual adversary: the multi-task direction, normalised, times ``rho``."""
    if not rho > 0:
        raise ValueError(f"rho: must be > 0, got {rho}")
    return optax.chain(multitask, optax.contrib.normalize(), optax.sgd(rho))


__all__ = ["SAMState", "sam", "sam_adversary"]


