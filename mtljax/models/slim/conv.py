"""The slimmable conv-net encoder of the slim model, run at an encoder width multiplier.

``SlimConvNet(...)(images [B, H, W, C], ctx) -> Encoding(pooled [B, D], tokens [B, N, D], aux)`` with
the width from ``ctx.width_index`` / ``ctx.masked`` (:mod:`mtljax.models.slim.layers`). Like the slim
ViT (:mod:`mtljax.models.slim.vit`) it gives a representation width ``D`` that does **not** depend on
the width multiplier. That is a deliberate choice (a slimmable CNN encoder usually hands
its decoders a feature map whose channel count changes with the width): with a fixed ``D``

* the Configuration-Invariant KD loss compares student and teacher features in the same space, with
  no choice of which teacher channels to match;
* every decoder width pairs with every encoder width, and a decoder's FLOPs do not depend on the
  encoder width, so a configuration's FLOPs are exactly ``enc(w_e) + Σ_t dec_t(w_t)``.

:class:`SlimConvNet` is a small ResNet-like net: a 3×3 stem, then per further stage a stride-2 3×3
conv and a residual 3×3 conv, each followed by channel LayerNorm and GELU; every conv's input and
output channels are slimmed (interior FLOPs scale as ``w²``). A final fixed-output projection (the
"neck", ``c_last·w → D``) gives the shared representation; tokens are the positions of the last
feature map (a ``2^(stages−1)``-pixel "patch" each, for dense decoders).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.plugs import Context, Encoding, empty_aux
from mtljax.models.slim.layers import SlimConv, SlimDense, SlimNorm

Dtype = Any
_ACT = ("act_batch", "act_len", "act_embed")


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
    def __call__(self, images: jax.Array, ctx: Context = Context()) -> Encoding:
        b, h, w, c = images.shape
        if h % self.stride or w % self.stride:
            raise ValueError(f"image size {h}x{w} is not a multiple of the conv net's stride {self.stride}")
        kw = dict(widths=self.widths, dtype=self.dtype, param_dtype=self.param_dtype)

        def conv_norm_act(x, name, features, in_features, strides):
            x = SlimConv(features=features, in_features=in_features, strides=strides, name=f"{name}_conv", **kw)(
                x, ctx)
            x = SlimNorm(features=features, slim=True, switchable=self.switchable_norm, axis_name="conv_out",
                         name=f"{name}_norm", **kw)(x, ctx)
            return nn.gelu(x)

        x = conv_norm_act(images.astype(self.dtype), "stem", self.channels[0], c, (1, 1))
        for i in range(1, len(self.channels)):
            x = conv_norm_act(x, f"stage{i}_down", self.channels[i], self.channels[i - 1], (2, 2))
            y = conv_norm_act(x, f"stage{i}_res", self.channels[i], self.channels[i], (1, 1))
            x = x + nn.Dropout(self.dropout, deterministic=not ctx.train)(y)
        gh, gw = x.shape[1], x.shape[2]
        x = x.reshape(b, gh * gw, x.shape[-1])
        x = SlimDense(features=self.width, in_features=self.channels[-1], slim_out=False,
                      axes=("conv_out", "embed"), name="neck", **kw)(x, ctx)
        tokens = SlimNorm(features=self.width, slim=False, switchable=self.switchable_norm, name="neck_norm",
                          **kw)(x, ctx)
        tokens = nn.with_logical_constraint(tokens, _ACT)
        return Encoding(jnp.mean(tokens, axis=1), tokens, empty_aux())
