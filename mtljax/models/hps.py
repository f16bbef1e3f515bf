"""Hard parameter sharing (Caruana, 1997): one shared backbone, one head per task.

``apply(params, inputs, *, task=None, train, rngs) -> (outputs_by_task, aux)``. With ``task`` set, only
that task's head runs. ``aux`` is a dict with ``losses`` (auxiliary losses the train step adds to the
objective; none for HPS, MoE models put load-balancing losses there) and ``metrics`` (diagnostics).

The model also exposes its two halves, so that optimizers can work at the representation level:
``encode`` (inputs -> ``(rep, aux)``, the shared representation dict with ``pooled`` and ``tokens``)
and ``decode`` (representation -> per-task outputs).

The backbone is called as ``backbone(inputs, ctx)`` with a :class:`~mtljax.models.plugs.Context` and
returns an :class:`~mtljax.models.plugs.Encoding` (``pooled``, ``tokens`` and its ``aux``: MoE
balancing losses and routing metrics). Task-routed backbones (M³ViT, Mod-Squad: gates that depend on
the task) set ``task_passes=True``: the backbone then runs once per task — the batch is repeated, one
copy per task, each example carrying its task index in ``ctx.task_ids`` — and the representation holds
one entry per task (``rep["pooled"][task]``). With ``task=`` given only that task's pass and head run.
A backbone may also return per-task representations itself (TaskExpert).

Per-task modules (LoRA, adapters, prefixes, prompts: :mod:`mtljax.models.peft`) also set
``task_passes``. When every example belongs to one task (heterogeneous mixtures) the caller may pass
``task_ids [B]`` instead: the backbone then runs once with ``ctx.task_ids = task_ids`` — each example
through its own task's modules or gates — and all heads read that one representation (an example's
output under its own task's head equals that task's pass). Ids known before tracing are checked to
lie in ``[0, T)``; traced ones cannot be, and per-task modules give NaN for ids outside it
(:mod:`mtljax.models.peft.select`).

Task-specific parameters live under ``heads_<task>`` and, for per-task modules, under scopes whose
name contains one of ``specific_scopes`` (:func:`task_specific_mask`); everything else is shared.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtljax.models.heads import ClassificationHead, DenseHead
from mtljax.models.plugs import Context
from mtljax.tasks import Task


class MultiTaskModel(nn.Module):
    backbone: nn.Module
    tasks: tuple[Task, ...]
    head_hidden: int = 0
    dense_grid: tuple[int, int] | None = None  # patch grid, for dense heads on ViT tokens
    patch_size: int = 1
    task_passes: bool = False  # run the backbone once per task, passing task ids (task-gated MoE)
    routing_group: int = 1  # examples per MoE routing group (task passes are repeated in blocks of it)
    dense_upsample: bool = False  # dense heads: progressive upsampling instead of linear unpatchify
    specific_scopes: tuple[str, ...] = ()  # per-task modules: parameter scopes containing one of these are specific
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        kw = dict(hidden=self.head_hidden, dtype=self.dtype, param_dtype=self.param_dtype)
        heads = {}
        for t in self.tasks:
            if t.is_dense:
                if self.dense_grid is None:
                    raise ValueError(f"task {t.name!r} is dense but the backbone gives no patch tokens")
                heads[t.name] = DenseHead(t, self.dense_grid, self.patch_size, upsample=self.dense_upsample, **kw)
            else:
                heads[t.name] = ClassificationHead(t, **kw)
        self.heads = heads

    def _names(self, task: str | None) -> list[str]:
        names = [t.name for t in self.tasks]
        if task is None:
            return names
        if task not in names:
            raise ValueError(f"task={task!r}: unknown task; the model has {names}")
        return [task]

    def _check_task_ids(self, task_ids, batch: int) -> jax.Array:
        """``task_ids`` as ``int32[B]``; ids known before tracing must lie in ``[0, T)``."""
        task_ids = jnp.asarray(task_ids)
        if task_ids.shape != (batch,) or not jnp.issubdtype(task_ids.dtype, jnp.integer):
            raise ValueError(f"task_ids: expected integers of shape ({batch},), got {task_ids.dtype}{task_ids.shape}")
        try:
            ids = np.asarray(task_ids)
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
            return task_ids.astype(jnp.int32)  # traced: out-of-range ids give NaN in per-task modules
        bad = sorted({int(i) for i in ids if not 0 <= i < len(self.tasks)})
        if bad:
            raise ValueError(f"task_ids: {bad} outside [0, {len(self.tasks)}) (the model's tasks are "
                             f"{[t.name for t in self.tasks]})")
        return task_ids.astype(jnp.int32)

    def encode(self, inputs: jax.Array, *, task: str | None = None, train: bool = False,
               task_ids: jax.Array | None = None) -> tuple[dict, dict]:
        """``({"pooled": [B, D], "tokens": [B, N, D]}, aux)``; per-task dicts of them with task passes
        (unless ``task_ids [B]`` are given: one pass, each example as its own task)."""
        names = self._names(task)
        if task_ids is not None:
            ids = self._check_task_ids(task_ids, inputs.shape[0])
            out = self.backbone(inputs, Context(train=train, task_ids=ids))
            pooled, tokens = out.pooled, out.tokens
        elif self.task_passes:
            # The batch is repeated once per task in blocks of one routing group: [g0 task0, g0 task1, ...,
            # g1 task0, ...]. Every routing group (capacity, batch priority) then holds one task's pass, so
            # a task's output does not depend on which other tasks ran beside it (``task=`` gives exactly
            # its entry of the all-tasks output), and each device's examples stay on that device.
            index = {t.name: i for i, t in enumerate(self.tasks)}
            b, t = inputs.shape[0], len(names)
            blk = math.gcd(b, self.routing_group)
            rest = inputs.shape[1:]
            x = jnp.broadcast_to(inputs.reshape(b // blk, 1, blk, *rest), (b // blk, t, blk, *rest)).reshape(b * t, *rest)
            ids = jnp.asarray([index[n] for n in names], jnp.int32)
            task_ids = jnp.broadcast_to(ids[None, :, None], (b // blk, t, blk)).reshape(b * t)
            out = self.backbone(x, Context(train=train, task_ids=task_ids, group_size=blk))

            def per_task(a):
                a = a.reshape(b // blk, t, blk, *a.shape[1:])
                return {n: a[:, i].reshape(b, *a.shape[3:]) for i, n in enumerate(names)}

            pooled, tokens = per_task(out.pooled), per_task(out.tokens)
        else:
            out = self.backbone(inputs, Context(train=train))
            pooled, tokens = out.pooled, out.tokens
        return {"pooled": pooled, "tokens": tokens}, out.aux

    def decode(self, rep: dict, *, task: str | None = None) -> dict:
        """Outputs by task from a representation (``pooled`` for classification heads, ``tokens`` for dense)."""
        out = {}
        for name in self._names(task):
            head = self.heads[name]
            src = rep["tokens"] if isinstance(head, DenseHead) else rep["pooled"]
            out[name] = head(src[name] if isinstance(src, dict) else src)
        return out

    def __call__(self, inputs: jax.Array, *, task: str | None = None, train: bool = False,
                 task_ids: jax.Array | None = None) -> tuple[dict, dict]:
        """``(outputs by task, aux)``: ``[B, head_dim]`` per classification task, ``[B, H, W, C]`` per dense one.

        ``task_ids [B]`` (optional): the task of every example, for one backbone pass in which each
        example uses its own task's modules (see the module docstring)."""
        rep, aux = self.encode(inputs, task=task, train=train, task_ids=task_ids)
        return self.decode(rep, task=task), aux


def per_task_representation(model) -> bool:
    """Whether ``model.encode`` gives every task its own representation (no shared ``rep``)."""
    return bool(getattr(model, "task_passes", False)) or bool(getattr(model.backbone, "per_task_output", False))


HEAD_PREFIX = "heads_"


def heads_mask(params):
    """Which parameters are task-specific (a boolean pytree like ``params``): the ``heads_<task>`` entries."""
    return {k: jax.tree.map(lambda _, h=k.startswith(HEAD_PREFIX): h, v) for k, v in params.items()}


def task_specific_mask(params, scopes=()):
    """:func:`heads_mask` plus every parameter whose path has a key containing one of ``scopes``
    (per-task modules: ``("lora", "adapter", "prefix", "prompt")``, :data:`mtljax.models.peft.SCOPES`)."""
    heads = heads_mask(params)
    if not scopes:
        return heads

    def marked(path, head):
        return head or any(s in str(getattr(k, "key", k)) for k in path for s in scopes)

    return jax.tree_util.tree_map_with_path(marked, heads)
