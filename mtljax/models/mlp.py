"""MLP backbone for tabular inputs ``[B, D]``: Dense · GELU (· LayerNorm · dropout) per hidden layer.

``MLP(hidden)(x, ctx) -> Encoding(pooled [B, hidden[-1]], tokens None, aux)``: the representation is
the last hidden layer; there are no tokens, so dense (per-pixel) heads cannot read it.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.layers import Dtype, dense, layer_norm
from mtljax.models.plugs import Context, Encoding, empty_aux


class MLP(nn.Module):
    hidden: Sequence[int]
    dropout: float = 0.0
    use_layer_norm: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, ctx: Context = Context()) -> Encoding:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = x.reshape(x.shape[0], -1).astype(self.dtype)
        axes_in = "features"
        for i, width in enumerate(self.hidden):
            x = dense(width, (axes_in, "hidden"), name=f"fc{i}", **kw)(x)
            x = nn.gelu(x)
            if self.use_layer_norm:
                x = layer_norm(name=f"ln{i}", axis="hidden", **kw)(x)
            x = nn.Dropout(self.dropout, deterministic=not ctx.train)(x)
            x = nn.with_logical_constraint(x, ("act_batch", "hidden"))
            axes_in = "hidden_in"  # a kernel may not name the same logical axis twice
        return Encoding(x, None, empty_aux())
