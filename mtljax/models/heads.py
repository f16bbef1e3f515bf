"""Per-task heads on a shared representation.

* :class:`ClassificationHead` (binary, multiclass, multilabel, regression): reads the pooled
  representation ``[B, D]``; optional hidden layer; outputs ``[B, task.head_dim]``.
* :class:`DenseHead` (dense, per pixel): reads patch tokens ``[B, N, D]`` of a ``grid × grid`` patch
  layout, predicts ``patch² × head_dim`` values per token and rearranges them into a
  ``[B, H, W, head_dim]`` map (a linear "unpatchify" decoder, as in SETR-naive / MAE's decoder output).
  With ``upsample=True`` it is a progressive-upsampling decoder instead (SETR-PUP, Zheng et al., 2021):
  the tokens become a ``grid`` feature map, then ``log2(patch)`` stages of 3×3 convolution (``hidden``
  channels, default the token width), GELU and 2× nearest upsampling, and a 1×1 convolution to the
  outputs; neighbouring patches then share information and the map is smooth across patch borders.
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
    upsample: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, n, d = tokens.shape
        gh, gw = self.grid
        if n != gh * gw:
            raise ValueError(f"DenseHead for {self.task.name!r}: {n} tokens do not form a {gh}x{gw} grid")
        p, c = self.patch_size, self.task.head_dim
        if self.upsample:
            stages = p.bit_length() - 1
            if p != 1 << stages:
                raise ValueError(f"config.model.dense_head='upsample' needs a power-of-two patch size, got {p}")
            x, width = tokens.reshape(b, gh, gw, d), self.hidden or d
            for i in range(stages):
                x = nn.gelu(conv(width, 3, ("conv_in", "mlp"), name=f"conv{i}", **kw)(x))
                x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            return conv(c, 1, ("mlp" if stages else "conv_in", "classes"), name="out", **kw)(x).astype(jnp.float32)
        x = tokens
        if self.hidden:
            x = nn.gelu(dense(self.hidden, ("embed", "mlp"), name="hidden", **kw)(x))
        out = dense(p * p * c, ("embed" if not self.hidden else "mlp", "classes"), name="out", **kw)(x)
        out = out.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * p, gw * p, c)
        return out.astype(jnp.float32)


def conv(features: int, size: int, axes, *, dtype, param_dtype, name=None):
    """A same-padded ``size × size`` convolution whose kernel's channel axes are ``axes``."""
    return nn.Conv(features, (size, size), padding="SAME", dtype=dtype, param_dtype=param_dtype, name=name,
                   kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, *axes)),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[-1],)))
