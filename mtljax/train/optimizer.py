"""The parameter optimizer from ``config.optim``: gradient clipping, then Adam(W)/SGD on a schedule.

With ``config.optim.sam='sam'`` the whole optimizer is wrapped in ``optax.contrib.sam`` (opaque mode:
the train step passes it the multi-task gradient function). Multi-task methods act before it, in the
train step.
"""

from __future__ import annotations

import optax

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


def build_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    lr = learning_rate_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    elif cfg.name == "adam":
        opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2)
    elif cfg.name == "sgd":
        opt = optax.sgd(lr, momentum=cfg.b1)
    else:
        raise ValueError(f"config.optim.name: unknown optimizer {cfg.name!r}; choose from {OPTIMIZERS}")
    if cfg.grad_clip:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    if cfg.get("sam", "none") == "sam":
        # Foret et al. (2021): one normalised ascent step of size rho, then the real step at θ + e.
        adversary = optax.chain(optax.contrib.normalize(), optax.sgd(cfg.sam_rho))
        opt = optax.contrib.sam(opt, adversary, sync_period=2, opaque_mode=True)
    return opt
