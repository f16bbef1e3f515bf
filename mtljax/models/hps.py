"""Hard parameter sharing (Caruana, 1997): one shared backbone, one head per task.

``apply(params, inputs, *, task=None, train, rngs) -> (outputs_by_task, aux)``. With ``task`` set, only
that task's head runs. ``aux`` is a dict with ``losses`` (auxiliary losses the train step adds to the
objective; none for HPS, MoE models put load-balancing losses there) and ``metrics`` (diagnostics).

The model also exposes its two halves, so that optimizers can work at the representation level:
``encode`` (inputs -> ``(rep, aux)``, the shared representation dict with ``pooled`` and ``tokens``)
and ``decode`` (representation -> per-task outputs). Task-specific parameters live under
``heads_<task>``; everything else is shared (:func:`split_params`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mtljax.models.heads import ClassificationHead, DenseHead
from mtljax.tasks import Task


class MultiTaskModel(nn.Module):
    backbone: nn.Module
    tasks: tuple[Task, ...]
    head_hidden: int = 0
    dense_grid: tuple[int, int] | None = None  # patch grid, for dense heads on ViT tokens
    patch_size: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        kw = dict(hidden=self.head_hidden, dtype=self.dtype, param_dtype=self.param_dtype)
        heads = {}
        for t in self.tasks:
            if t.is_dense:
                if self.dense_grid is None:
                    raise ValueError(f"task {t.name!r} is dense but the backbone gives no patch tokens")
                heads[t.name] = DenseHead(t, self.dense_grid, self.patch_size, **kw)
            else:
                heads[t.name] = ClassificationHead(t, **kw)
        self.heads = heads

    def encode(self, inputs, *, train: bool = False):
        pooled, tokens = self.backbone(inputs, train=train)
        return {"pooled": pooled, "tokens": tokens}, {"losses": {}, "metrics": {}}

    def decode(self, rep, *, task: str | None = None):
        names = [t.name for t in self.tasks] if task is None else [task]
        out = {}
        for name in names:
            if name not in self.heads:
                raise ValueError(f"unknown task {name!r}; the model has {[t.name for t in self.tasks]}")
            head = self.heads[name]
            out[name] = head(rep["tokens"] if isinstance(head, DenseHead) else rep["pooled"])
        return out

    def __call__(self, inputs, *, task: str | None = None, train: bool = False):
        rep, aux = self.encode(inputs, train=train)
        return self.decode(rep, task=task), aux


HEAD_PREFIX = "heads_"


def split_params(params):
    """``(shared, task_specific)`` top-level parameter dicts (heads are ``heads_<task>``)."""
    shared = {k: v for k, v in params.items() if not k.startswith(HEAD_PREFIX)}
    specific = {k: v for k, v in params.items() if k.startswith(HEAD_PREFIX)}
    return shared, specific
