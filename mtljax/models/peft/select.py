"""Per-task parameters and how an example finds its own: the leading task axis and the gather by task id.

Every parameter-efficient module of :mod:`mtljax.models.peft` stores its parameters with a leading
task axis ``[T, ...]`` and reads, for each example, the slice of that example's task
(``ctx.task_ids [B]``) with one gather — ``[T, ...] -> [B, ...]`` — followed by batched einsums, so a
batch whose examples belong to different tasks runs in one pass, never once per task.

Out-of-range ids: a task id outside ``[0, T)`` gathers NaN (``jnp.take(mode="fill")``), so the
outputs of such an example are NaN and the train step's finite guard stops the run naming the step;
:class:`~mtljax.models.hps.MultiTaskModel` refuses out-of-range ids outright whenever they are known
before tracing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtljax.models.plugs import Context


def task_ids_of(ctx: Context, batch: int, who: str) -> jax.Array:
    """``ctx.task_ids`` (``int32[B]``), checked to be there and to have one id per example."""
    if ctx.task_ids is None:
        raise ValueError(f"{who}: per-task modules need ctx.task_ids (the task of every example); "
                         "MultiTaskModel passes them (task passes, or task_ids=)")
    if ctx.task_ids.shape != (batch,):
        raise ValueError(f"{who}: ctx.task_ids has shape {ctx.task_ids.shape}, expected ({batch},)")
    return ctx.task_ids


def per_example(param: jax.Array, task_ids: jax.Array, dtype=None) -> jax.Array:
    """Each example's slice of a per-task parameter: ``[T, ...]`` -> ``[B, ...]`` (NaN for ids outside ``[0, T)``)."""
    out = jnp.take(param, task_ids, axis=0, mode="fill", fill_value=jnp.nan)
    return out if dtype is None else out.astype(dtype)
