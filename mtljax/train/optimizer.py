"""The optax chain of a run, from ``config.optim``: the multi-task transform first, then gradient
clipping and Adam(W)/SGD on a schedule; SAM or flat-region SAM around it when asked.

    optax.chain(as_optax(method, T), clip_by_global_norm(c), adamw(schedule))
    flat_sam(as_optax(method, T), rho) followed by the same clipping and optimizer   (sam='flat')
    sam(<the chain>, adversary=chain(as_optax(method, T), normalize(), sgd(rho)))     (sam='sam')
"""

from __future__ import annotations

import optax

from mtljax.optim import as_optax
from mtljax.optim.base import Method
from mtljax.optim.flat_sam import flat_sam
from mtljax.optim.sam import sam, sam_adversary

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
    warmup = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, cfg.learning_rate, warmup, max(total_steps, warmup + 1), end_value=0.0
        )
    if cfg.schedule == "constant":
        if warmup:
            return optax.join_schedules(
                [optax.linear_schedule(0.0, cfg.learning_rate, warmup), optax.constant_schedule(cfg.learning_rate)],
                [warmup],
            )
        return optax.constant_schedule(cfg.learning_rate)
    raise ValueError(f"config.optim.schedule: unknown schedule {cfg.schedule!r}; choose from {SCHEDULES}")


def parameter_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    """Clipping (``grad_clip`` > 0) and the optimizer: what follows the multi-task transform."""
    lr = learning_rate_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    elif cfg.name == "adam":
        opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2)
    elif cfg.name == "sgd":
        opt = optax.sgd(lr, momentum=cfg.b1)
    else:
        raise ValueError(f"config.optim.name: unknown optimizer {cfg.name!r}; choose from {OPTIMIZERS}")
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt) if cfg.grad_clip else opt


def build_optimizer(cfg, method: Method, num_tasks: int, total_steps: int) -> optax.GradientTransformationExtraArgs:
    """The whole chain of ``config.optim`` for ``method`` over ``num_tasks`` tasks."""
    mt = as_optax(method, num_tasks, heads=cfg.get("head_grads", "") or "")
    rest = parameter_optimizer(cfg, total_steps)
    mode = cfg.get("sam", "none")
    if mode == "flat":
        return optax.chain(flat_sam(mt, cfg.sam_rho, adaptive=cfg.sam_adaptive, balls=cfg.get("sam_balls", "separate")),
                           rest)
    tx = optax.chain(mt, rest)
    if mode == "sam":
        return sam(tx, sam_adversary(mt, cfg.sam_rho))
    return tx
