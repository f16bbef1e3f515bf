"""Per-task heads on a shared representation.

* :class:`ClassificationHead` (binary, multiclass, multilabel, regression): reads the pooled
  representation ``[B, D]``; optional hidden layer; outputs ``[B, task.head_dim]``.
* :class:`DenseHead` (dense, per pixel): reads patch tokens ``[B, N, D]`` of a ``grid × grid`` patch
  layout, predicts ``patch² × head_dim`` values per token and rearranges them into a
  ``[B, H, W, head_dim]`` map (a linear "unpatchify" decoder, as in SETR-naive / MAE's decoder output).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mtljax.models.layers import Dtype, dense
from mtljax.tasks import Task


class ClassificationHead(nn.Module):
    task: Task
    hidden: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pooled):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = pooled
        if self.hidden:
            x = nn.gelu(dense(self.hidden, ("embed", "mlp"), name="hidden", **kw)(x))
            axes = ("mlp", "classes")
        else:
            axes = ("embed", "classes")
        out = dense(self.task.head_dim, axes, name="out", kernel_init=nn.initializers.zeros, **kw)(x)
        return out.astype(jnp.float32)


class DenseHead(nn.Module):
    task: Task
    grid: tuple[int, int]
    patch_size: int
    hidden: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, n, _ = tokens.shape
        gh, gw = self.grid
        if n != gh * gw:
            raise ValueError(f"DenseHead for {self.task.name!r}: {n} tokens do not form a {gh}x{gw} grid")
        x = tokens
        if self.hidden:
            x = nn.gelu(dense(self.hidden, ("embed", "mlp"), name="hidden", **kw)(x))
        p, c = self.patch_size, self.task.head_dim
        out = dense(p * p * c, ("embed" if not self.hidden else "mlp", "classes"), name="out", **kw)(x)
        out = out.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * p, gw * p, c)
        return out.astype(jnp.float32)
