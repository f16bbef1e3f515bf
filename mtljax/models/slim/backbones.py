"""Slimmable shared encoders: a ViT and a small conv net, both run at an encoder width multiplier.

Both return ``(pooled [B, D], tokens [B, N, D])`` with a representation width ``D`` that does **not**
depend on the width multiplier. That is a deliberate choice (a slimmable CNN encoder usually hands
its decoders a feature map whose channel count changes with the width): with a fixed ``D``

* the Configuration-Invariant KD loss compares student and teacher features in the same space, with
  no choice of which teacher channels to match;
* every decoder width pairs with every encoder width, and a decoder's FLOPs do not depend on the
  encoder width, so a configuration's FLOPs are exactly ``enc(w_e) + Σ_t dec_t(w_t)``.

:class:`SlimViT` slims what carries a transformer's width-dependent compute, as DynaBERT and HAT do:
the number of attention heads (per-head width fixed) and the MLP hidden width, in every block, by the
same multiplier. The residual stream (``D``), patch embedding and position embeddings are shared by
all widths; its LayerNorms normalise the fixed ``D`` channels (private affine rows per width when
``switchable_norm``). Per-block FLOPs therefore scale linearly in the multiplier.

:class:`SlimConvNet` is a small ResNet-like net: a 3×3 stem, then per further stage a stride-2 3×3
conv and a residual 3×3 conv, each followed by channel LayerNorm and GELU; every conv's input and
output channels are slimmed (interior FLOPs scale as ``w²``). A final fixed-output projection (the
"neck", ``c_last·w → D``) gives the shared representation; tokens are the positions of the last
feature map (a ``2^(stages−1)``-pixel "patch" each, for dense decoders).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mtljax.models.slim.layers import SlimAttention, SlimConv, SlimDense, SlimMlp, SlimNorm

Dtype = Any
_ACT = ("act_batch", "act_len", "act_embed")


class SlimBlock(nn.Module):
    num_heads: int
    head_dim: int
    mlp_dim: int
    embed: int
    widths: tuple[float, ...]
    switchable_norm: bool = True
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, index, masked: bool, *, train: bool = False):
        kw = dict(widths=self.widths, dtype=self.dtype, param_dtype=self.param_dtype)
        norm = dict(features=self.embed, slim=False, switchable=self.switchable_norm, **kw)
        h = SlimNorm(name="ln1", **norm)(x, index, masked)
        h = SlimAttention(num_heads=self.num_heads, head_dim=self.head_dim, embed=self.embed, name="attn",
                          **kw)(h, index, masked)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(h)
        h = SlimNorm(name="ln2", **norm)(x, index, masked)
        h = SlimMlp(hidden=self.mlp_dim, embed=self.embed, dropout=self.dropout, name="mlp", **kw)(
            h, index, masked, train=train)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.with_logical_constraint(x, _ACT)


class SlimViT(nn.Module):
    patch_size: int
    width: int  # D, the representation width (not slimmed)
    depth: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    widths: tuple[float, ...]
    pool: str = "gap"
    switchable_norm: bool = True
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def stride(self) -> int:
        return self.patch_size

    @nn.compact
    def __call__(self, images, index=-1, masked: bool = False, *, train: bool = False):
        b, h, w, c = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of patch_size {p}")
        kw = dict(widths=self.widths, dtype=self.dtype, param_dtype=self.param_dtype)
        x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, (h // p) * (w // p), p * p * c)
        x = SlimDense(features=self.width, in_features=p * p * c, slim_out=False, axes=("patch", "embed"),
                      name="embedding", **kw)(x)
        n = x.shape[1]
        if self.pool == "cls":
            cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.zeros, (None, None, "embed")),
                             (1, 1, self.width), self.param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)).astype(x.dtype), x], axis=1)
        pos = self.param("pos_embedding",
                         nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "tokens", "embed")),
                         (1, x.shape[1], self.width), self.param_dtype)
        x = nn.with_logical_constraint(x + pos.astype(x.dtype), _ACT)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        for i in range(self.depth):
            x = SlimBlock(self.num_heads, self.head_dim, self.mlp_dim, self.width, self.widths,
                          self.switchable_norm, self.dropout, self.dtype, self.param_dtype, name=f"block{i}")(
                x, index, masked, train=train)
        x = SlimNorm(features=self.width, slim=False, switchable=self.switchable_norm, name="ln_final", **kw)(
            x, index, masked)
        tokens = x[:, -n:]
        pooled = x[:, 0] if self.pool == "cls" else jnp.mean(tokens, axis=1)
        return pooled, tokens


class SlimConvNet(nn.Module):
    channels: tuple[int, ...]  # full-width channels per stage; stage i > 0 halves the resolution
    width: int  # D, the representation width (not slimmed)
    widths: tuple[float, ...]
    switchable_norm: bool = True
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def stride(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @nn.compact
    def __call__(self, images, index=-1, masked: bool = False, *, train: bool = False):
        b, h, w, c = images.shape
        if h % self.stride or w % self.stride:
            raise ValueError(f"image size {h}x{w} is not a multiple of the conv net's stride {self.stride}")
        kw = dict(widths=self.widths, dtype=self.dtype, param_dtype=self.param_dtype)

        def conv_norm_act(x, name, features, in_features, strides):
            x = SlimConv(features=features, in_features=in_features, strides=strides, name=f"{name}_conv", **kw)(
                x, index, masked)
            x = SlimNorm(features=features, slim=True, switchable=self.switchable_norm, axis_name="conv_out",
                         name=f"{name}_norm", **kw)(x, index, masked)
            return nn.gelu(x)

        x = conv_norm_act(images.astype(self.dtype), "stem", self.channels[0], c, (1, 1))
        for i in range(1, len(self.channels)):
            x = conv_norm_act(x, f"stage{i}_down", self.channels[i], self.channels[i - 1], (2, 2))
            y = conv_norm_act(x, f"stage{i}_res", self.channels[i], self.channels[i], (1, 1))
            x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
        gh, gw = x.shape[1], x.shape[2]
        x = x.reshape(b, gh * gw, x.shape[-1])
        x = SlimDense(features=self.width, in_features=self.channels[-1], slim_out=False,
                      axes=("conv_out", "embed"), name="neck", **kw)(x, index, masked)
        tokens = SlimNorm(features=self.width, slim=False, switchable=self.switchable_norm, name="neck_norm",
                          **kw)(x, index, masked)
        tokens = nn.with_logical_constraint(tokens, _ACT)
        return jnp.mean(tokens, axis=1), tokens
