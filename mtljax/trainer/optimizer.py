"""The optax chain and the objective of a run, from ``config.optim``.

The multi-task transform comes first, then gradient clipping and Adam(W)/SGD on a schedule; SAM or
flat-region SAM around it when asked:

    optax.chain(as_optax(method, T), clip_by_global_norm(c), adamw(schedule))
    optax.chain(flat_sam(as_optax(method, T), rho), clip_by_global_norm(c), adamw(schedule))   (sam='flat')
    sam(<the chain>, adversary=chain(as_optax(method, T), normalize(), sgd(rho)))                (sam='sam')

Every function here reads its section of the config and raises :class:`~mtljax.config.ConfigError`
with the key relative to ``config.optim``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import optax

from mtljax.config import ConfigError, one_of, require
from mtljax.models.hps import HEAD_PREFIX
from mtljax.optim import as_optax
from mtljax.optim.autogram import count_dense_kernels
from mtljax.optim.base import HEADS, Method
from mtljax.optim.flat_sam import BALLS, flat_sam
from mtljax.optim.rep_mtl import with_rep_mtl
from mtljax.optim.sam import sam, sam_adversary
from mtljax.optim.task_grads import LEVELS
from mtljax.optim.trainable import freeze_tasks, trainable_mask

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")
SAM_MODES = ("none", "sam", "flat")


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
    one_of(cfg.schedule, SCHEDULES, "schedule", "schedule")
    require(cfg.learning_rate > 0, "learning_rate", f"must be > 0, got {cfg.learning_rate}")
    warmup = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, cfg.learning_rate, warmup, max(total_steps, warmup + 1), end_value=0.0
        )
    if warmup:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.learning_rate, warmup), optax.constant_schedule(cfg.learning_rate)],
            [warmup],
        )
    return optax.constant_schedule(cfg.learning_rate)


def parameter_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    """Clipping (``grad_clip`` > 0) and the optimizer: what follows the multi-task transform."""
    one_of(cfg.name, OPTIMIZERS, "name", "optimizer")
    require(cfg.grad_clip >= 0, "grad_clip", f"must be >= 0 (0 disables clipping), got {cfg.grad_clip}")
    lr = learning_rate_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    elif cfg.name == "adam":
        opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2)
    else:
        opt = optax.sgd(lr, momentum=cfg.b1)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt) if cfg.grad_clip else opt


def training_level(cfg, method: Method) -> str:
    """Where the per-task gradients are taken (``param`` for loss weightings: they never form them)."""
    one_of(cfg.level, LEVELS, "level", "level")
    chunk = cfg.chunk_size
    require(isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 0, "chunk_size",
            f"must be an integer >= 0 (0: all tasks at once), got {chunk!r}")
    if method.needs == "losses":
        return "param"
    require(method.needs != "jacobian" or cfg.level == "param", "level",
            f"{cfg.level!r}: method {method.name!r} needs the per-task gradients themselves; use 'param'")
    require(cfg.get("sam", "none") != "flat" or cfg.level == "param", "level",
            f"{cfg.level!r}: sam='flat' needs the per-task gradients themselves; use 'param'")
    return cfg.level


def check_autogram(forward, params, excluded=None, model_name: str = "this model") -> None:
    """Level ``'autogram'`` needs at least one shared dense kernel in ``forward(params)`` (traced, not run);
    ``excluded``: boolean pytree of the parameters that are not shared (task-specific or frozen)."""
    try:
        found = count_dense_kernels(forward, params, excluded)
    except Exception:  # noqa: BLE001 - a model this probe cannot call: the step itself checks when traced
        return
    require(found > 0, "level",
            f"'autogram' needs a dense layer (a kernel used only in matrix products) among the shared parameters, "
            f"but config.model.name={model_name!r} has none; use 'param' or 'gramian'")


def build_objective(cfg, objective, level: str, model_name: str = "this model", params=None):
    """The model's objective with the training terms of ``config.optim`` (Rep-MTL) and its trainable
    parameters (``trainable``: path patterns checked against ``params``, the model's parameter shapes)."""
    objective = _with_trainable(cfg, objective, params)
    if "rep" in (level, cfg.level):
        require(objective.has_representation, "level",
                f"'rep' needs one representation shared by all tasks, but config.model.name={model_name!r} "
                "gives every task its own; use 'param' or 'gramian'")
    if not cfg.rep_mtl:
        return objective
    require("rep" not in (level, cfg.level), "rep_mtl", "cannot be combined with config.optim.level='rep'; use 'param' or 'gramian'")
    try:
        return with_rep_mtl(objective, **dict(cfg.rep_mtl_kwargs))
    except ValueError as e:
        key = "rep_mtl_kwargs" if "argument" in str(e) or "must be" in str(e) else "rep_mtl"
        raise ConfigError(str(e).removeprefix("rep_mtl: "), key) from None


def _with_trainable(cfg, objective, params):
    patterns = tuple(cfg.get("trainable", ()) or ())
    if not patterns:
        return objective
    try:
        mask = trainable_mask(params, patterns)
    except ValueError as e:
        raise ConfigError(str(e), "trainable") from None
    require(any(jax.tree.leaves(mask)), "trainable", f"{patterns} selects no parameter")
    return dataclasses.replace(objective, trainable=functools.partial(trainable_mask, patterns=patterns, check=False))


def task_freezer(cfg, task_names, specific) -> optax.GradientTransformation | None:
    """``config.optim.frozen_tasks``: :func:`~mtljax.optim.trainable.freeze_tasks` for those tasks, or None."""
    frozen = tuple(cfg.get("frozen_tasks", ()) or ())
    if not frozen:
        return None
    names = list(task_names)
    require(not isinstance(cfg.frozen_tasks, str), "frozen_tasks",
            f"must be a sequence of task names, got the string {cfg.frozen_tasks!r}")
    for name in frozen:
        require(name in names, "frozen_tasks", f"no task {name!r}; tasks are {names}")
    require(len(set(frozen)) < len(names), "frozen_tasks", f"{frozen} freezes every task: nothing would train")
    return freeze_tasks([names.index(n) for n in frozen], names, specific, HEAD_PREFIX)


def build_optimizer(cfg, method: Method, num_tasks: int, total_steps: int,
                    freeze: optax.GradientTransformation | None = None) -> optax.GradientTransformationExtraArgs:
    """The whole chain of ``config.optim`` for ``method`` over ``num_tasks`` tasks; ``freeze``
    (:func:`task_freezer`) goes right after the multi-task transform and again at the end."""
    heads = cfg.get("head_grads", "") or ""
    one_of(heads, ("",) + HEADS, "head_grads", "value")
    mode = one_of(cfg.get("sam", "none"), SAM_MODES, "sam", "mode")
    if mode != "none":
        require(cfg.sam_rho > 0, "sam_rho", f"must be > 0 when config.optim.sam={mode!r}, got {cfg.sam_rho}")
    balls = one_of(cfg.get("sam_balls", "separate"), BALLS, "sam_balls", "value")
    mt = as_optax(method, num_tasks, heads=heads)
    rest = parameter_optimizer(cfg, total_steps)
    if freeze is not None:
        rest = optax.chain(freeze, rest, freeze)
    if mode == "flat":
        return optax.chain(flat_sam(mt, cfg.sam_rho, adaptive=cfg.sam_adaptive, balls=balls), rest)
    tx = optax.chain(mt, rest)
    if mode == "sam":
        return sam(tx, sam_adversary(mt, cfg.sam_rho))
    return tx
