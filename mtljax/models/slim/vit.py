"""The slimmable ViT encoder of the slim model: the one :class:`~mtljax.models.vit.ViT` with slim plugs.

It slims what carries a transformer's width-dependent compute, as DynaBERT and HAT do: the number of
attention heads (per-head width fixed) and the MLP hidden width, in every block, by the same
multiplier (:class:`~mtljax.models.slim.layers.SlimAttention`, :class:`~mtljax.models.slim.layers.SlimMlp`).
The residual stream (``D``), patch embedding and position embeddings are shared by all widths, so the
representation width does not depend on the multiplier (why that matters: :mod:`mtljax.models.slim.conv`);
its LayerNorms (:class:`~mtljax.models.slim.layers.SlimNorm`, ``slim=False``) normalise the fixed ``D``
channels, with private affine rows per width when ``switchable_norm``. Per-block FLOPs therefore scale
linearly in the multiplier. The width comes with the call: ``ctx.width_index`` and ``ctx.masked``.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax.numpy as jnp

from mtljax.models.layers import Dtype
from mtljax.models.plugs import BlockPlugs
from mtljax.models.slim.layers import SlimAttention, SlimMlp, SlimNorm
from mtljax.models.vit import ViT


def slim_vit(*, patch_size: int, width: int, depth: int, num_heads: int, head_dim: int, mlp_dim: int,
             widths: Sequence[float], pool: str = "gap", switchable_norm: bool = True, dropout: float = 0.0,
             attention_impl: str | None = None, dtype: Dtype = jnp.float32,
             param_dtype: Dtype = jnp.float32) -> ViT:
    """A ViT ``images [B, H, W, C] -> Encoding(pooled [B, width], tokens [B, N, width])`` with slimmable
    attention heads, MLP width and (switchable) norms at the trained width multipliers ``widths``."""
    widths = tuple(widths)
    norm = functools.partial(SlimNorm, features=width, slim=False, switchable=switchable_norm, widths=widths)
    plugs = BlockPlugs(
        attention=functools.partial(SlimAttention, num_heads=num_heads, head_dim=head_dim, embed=width,
                                    attention_impl=attention_impl, widths=widths),
        mlp=functools.partial(SlimMlp, hidden=mlp_dim, embed=width, dropout=dropout, widths=widths))
    return ViT(patch_size=patch_size, width=width, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim, pool=pool,
               dropout=dropout, blocks=plugs, norm=norm, head_dim=head_dim, attention_impl=attention_impl,
               dtype=dtype, param_dtype=param_dtype)
