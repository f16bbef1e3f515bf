"""Slimmable layers: one set of weights, run at any width multiplier of a trained set.

A slimmable layer (Yu et al., 2019, "Slimmable Neural Networks"; Yu & Huang, 2019, "Universally
Slimmable Networks") at width multiplier ``w`` uses only the first ``n(w) = max(1, round(w·C))`` of
its ``C`` output channels (attention: the first ``round(w·H)`` heads), and reads only the active
channels of its input. Every sub-network is therefore a *prefix* of the full one, which is what makes
the exported sub-network a plain slice of the weights (:func:`mtljax.models.slim.export.export`).

Every layer is called as ``layer(x, ctx)`` (a ViT plug, :mod:`mtljax.models.plugs`): the width comes
as ``ctx.width_index``, an index into the layer's trained set ``widths`` (ascending, in (0, 1]), in one
of two modes (``ctx.masked``), both computing the same function:

* **sliced** (``masked=False``, the index a Python int): the kernels are sliced to the active
  channels, so a smaller width really computes less (inference, FLOPs, export). One compiled
  function per width.
* **masked** (``masked=True``, the index a traced integer): the full-width computation runs and the
  channels (heads) at or beyond ``n(w)`` are multiplied by zero. The width can change from step to
  step *without recompiling*, which is what sandwich training needs (random configurations every
  step, one compilation). Inactive channels are exactly zero at every layer boundary, so the active
  channels equal the sliced computation up to float summation order (tested).

Normalisation: :class:`SlimNorm` is a LayerNorm over the active channels only (statistics per
example, so they are correct at every width: the running-statistics problem that makes Slimmable
Networks switch BatchNorm per width does not arise). With ``switchable=True`` it keeps *private*
scale and bias per trained width (the affine part of switchable BN); the statistics need no switching.

Every parameter carries logical axis names (``embed``, ``mlp``, ``heads``, ``kv``, and ``conv_in``/
``conv_out`` for convolution channels, replicated unless ``config.mesh.rules`` maps them).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.layers import attend, default_init, gelu
from mtljax.models.plugs import Context

Dtype = Any


def active_count(n: int, width: float) -> int:
    """Channels (or heads) active at multiplier ``width`` out of ``n``: ``max(1, round(width·n))``."""
    return max(1, int(math.floor(width * n + 0.5 + 1e-9)))


def counts(n: int, widths: Sequence[float]) -> tuple[int, ...]:
    return tuple(active_count(n, w) for w in widths)


def check_widths(widths, name: str) -> tuple[float, ...]:
    """A trained width set: non-empty, ascending, distinct, each in (0, 1]. Raises naming ``name``."""
    try:
        ws = tuple(float(w) for w in widths)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers in (0, 1], got {widths!r}") from None
    if not ws:
        raise ValueError(f"{name} is empty; give at least one width multiplier in (0, 1]")
    for w in ws:
        if not 0.0 < w <= 1.0:
            raise ValueError(f"{name}: width multiplier {w} is outside (0, 1]")
    if list(ws) != sorted(set(ws)):
        raise ValueError(f"{name} must be strictly increasing, got {ws}")
    return ws


def width_index(width, widths: Sequence[float], name: str) -> int:
    """Position of ``width`` in the trained set ``widths``; a clear error naming ``name`` otherwise."""
    try:
        w = float(width)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: width multiplier must be a number in (0, 1], got {width!r}") from None
    if not 0.0 < w <= 1.0:
        raise ValueError(f"{name}: width multiplier {w} is outside (0, 1]")
    for i, trained in enumerate(widths):
        if abs(trained - w) < 1e-6:
            return i
    raise ValueError(f"{name}: width multiplier {w} is not in the trained set {tuple(widths)}")


def channel_mask(n_full: int, widths: Sequence[float], index) -> jax.Array:
    """``float32[n_full]``: 1 for the channels active at ``widths[index]`` (``index`` may be traced)."""
    n = jnp.asarray(counts(n_full, widths), jnp.int32)[index]
    return (jnp.arange(n_full) < n).astype(jnp.float32)


class _Slim(nn.Module):
    """Common attribute ``widths``; ``n_active(n, index, masked)`` is the static count (``None`` masked)."""

    widths: tuple[float, ...] = (1.0,)

    def n_active(self, n: int, index, masked: bool):
        return None if masked else counts(n, self.widths)[index]


class SlimDense(_Slim):
    """Dense ``[..., in] → [..., features]``; the output is slimmed when ``slim_out`` (else fixed).

    The input may already be slimmed: only its ``x.shape[-1]`` leading kernel rows are read.
    """

    features: int = 1
    in_features: int = 1
    slim_out: bool = True
    use_bias: bool = True
    axes: tuple[str | None, str | None] = ("embed", "mlp")
    kernel_init: Any = default_init
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, ctx: Context = Context()) -> jax.Array:
        index, masked = ctx.width_index, ctx.masked
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.axes),
                            (self.in_features, self.features), self.param_dtype)
        bias = (self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.axes[1],)),
                           (self.features,), self.param_dtype) if self.use_bias else None)
        n_in = x.shape[-1]
        n_out = self.features if masked or not self.slim_out else self.n_active(self.features, index, False)
        k = kernel[:n_in, :n_out].astype(self.dtype)
        y = jnp.dot(x.astype(self.dtype), k)
        if bias is not None:
            y = y + bias[:n_out].astype(self.dtype)
        if masked and self.slim_out:
            y = y * channel_mask(self.features, self.widths, index).astype(y.dtype)
        return y


class SlimConv(_Slim):
    """2-D convolution ``[B, H, W, in] → [B, H/s, W/s, features]`` (SAME padding); output channels
    slimmed when ``slim_out``."""

    features: int = 1
    in_features: int = 1
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    slim_out: bool = True
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, ctx: Context = Context()) -> jax.Array:
        index, masked = ctx.width_index, ctx.masked
        shape = (*self.kernel_size, self.in_features, self.features)
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")), shape, self.param_dtype)
        bias = (self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
                           (self.features,), self.param_dtype) if self.use_bias else None)
        n_in = x.shape[-1]
        n_out = self.features if masked or not self.slim_out else self.n_active(self.features, index, False)
        k = kernel[:, :, :n_in, :n_out].astype(self.dtype)
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), k, self.strides, "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if bias is not None:
            y = y + bias[:n_out].astype(self.dtype)
        if masked and self.slim_out:
            y = y * channel_mask(self.features, self.widths, index).astype(y.dtype)
        return y


class SlimNorm(_Slim):
    """LayerNorm over the active channels of the last axis.

    ``slim``: the channels are slimmed (statistics over the active ones; masked mode zeroes the rest);
    otherwise the layer normalises a fixed number of channels at every width. ``switchable``: private
    ``scale``/``bias`` rows per trained width (shape ``[len(widths), C]``), selected by the index.
    """

    features: int = 1
    slim: bool = True
    switchable: bool = True
    epsilon: float = 1e-6
    axis_name: str = "embed"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, ctx: Context = Context()) -> jax.Array:
        index, masked = ctx.width_index, ctx.masked
        rows = (len(self.widths),) if self.switchable else ()
        axes = ((None,) if self.switchable else ()) + (self.axis_name,)
        prefix = "switch_" if self.switchable else ""
        scale = self.param(f"{prefix}scale", nn.with_logical_partitioning(nn.initializers.ones, axes),
                           (*rows, self.features), self.param_dtype)
        bias = self.param(f"{prefix}bias", nn.with_logical_partitioning(nn.initializers.zeros, axes),
                          (*rows, self.features), self.param_dtype)
        if self.switchable:
            scale, bias = scale[index], bias[index]
        n = x.shape[-1]
        xf = x.astype(jnp.float32)
        if masked and self.slim:
            mask = channel_mask(self.features, self.widths, index)
            count = jnp.sum(mask)
            mean = jnp.sum(xf * mask, axis=-1, keepdims=True) / count
            var = jnp.sum(jnp.square((xf - mean) * mask), axis=-1, keepdims=True) / count
        else:
            mask = None
            mean = jnp.mean(xf, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
        y = y * scale[:n].astype(jnp.float32) + bias[:n].astype(jnp.float32)
        if mask is not None:
            y = y * mask
        return y.astype(self.dtype)


class SlimAttention(_Slim):
    """Multi-head self-attention ``[B, L, embed] → [B, L, embed]`` whose number of heads is slimmed.

    Query/key/value kernels are ``[embed, heads, kv]`` and the output kernel ``[heads, kv, embed]``;
    at width ``w`` the first ``round(w·heads)`` heads run (sliced) or all run and the others are
    zeroed before the output projection (masked). ``head_dim`` is explicit so that a sub-network
    exported with fewer heads keeps the per-head width.
    """

    num_heads: int = 1
    head_dim: int = 1
    embed: int = 1
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, ctx: Context = Context()) -> jax.Array:
        index, masked = ctx.width_index, ctx.masked
        h_full, hd = self.num_heads, self.head_dim
        h = h_full if masked else self.n_active(h_full, index, False)

        def param(name, shape, axes, init=default_init):
            return self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)

        def proj(name):
            k = param(f"{name}_kernel", (self.embed, h_full, hd), ("embed", "heads", "kv"))[:, :h]
            b = param(f"{name}_bias", (h_full, hd), ("heads", "kv"), nn.initializers.zeros)[:h]
            return jnp.einsum("bld,dhk->blhk", x.astype(self.dtype), k.astype(self.dtype)) + b.astype(self.dtype)

        out = attend(proj("query"), proj("key"), proj("value"), self.attention_impl)  # [B, L, h, hd]
        if masked:
            out = out * channel_mask(h_full, self.widths, index).astype(out.dtype)[:, None]
        w_out = param("out_kernel", (h_full, hd, self.embed), ("heads", "kv", "embed"))[:h]
        b_out = param("out_bias", (self.embed,), ("embed",), nn.initializers.zeros)
        return jnp.einsum("blhk,hkd->bld", out, w_out.astype(self.dtype)) + b_out.astype(self.dtype)


class SlimMlp(_Slim):
    """Transformer MLP ``[B, L, embed] → hidden·w → [B, L, embed]`` (GELU); only the hidden width is slimmed."""

    hidden: int = 1
    embed: int = 1
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, ctx: Context = Context()) -> jax.Array:
        kw = dict(widths=self.widths, dtype=self.dtype, param_dtype=self.param_dtype)
        h = SlimDense(features=self.hidden, in_features=self.embed, axes=("embed", "mlp"), name="fc1", **kw)(x, ctx)
        h = nn.with_logical_constraint(gelu(h), ("act_batch", "act_len", "mlp"))
        h = nn.Dropout(self.dropout, deterministic=not ctx.train)(h)
        return SlimDense(features=self.embed, in_features=self.hidden, slim_out=False, axes=("mlp", "embed"),
                         name="fc2", **kw)(h, ctx)
