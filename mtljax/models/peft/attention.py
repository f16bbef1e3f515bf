"""The ViT's ``attention`` plug with the per-task modules that live inside attention: LoRA on its
projections (:mod:`~mtljax.models.peft.lora`), key/value prefixes (:mod:`~mtljax.models.peft.prefix`)
and soft injection of task embeddings into the heads (:mod:`~mtljax.models.peft.inject`).

Without any of them it is exactly :class:`~mtljax.models.layers.SelfAttention`: the same projections
(``query``, ``key``, ``value``, ``out``) under the same names and shapes, so the base ViT's parameters
— a pretrained checkpoint's — keep their paths. Per task ``t`` (the example's ``ctx.task_ids``)::

    q = W_q x + Δ_q,t(x)        k = [P_k,t ; W_k x + Δ_k,t(x)]        v = [P_v,t ; W_v x + Δ_v,t(x)]
    a = inject_t(attend(q, k, v))        y = W_o a + Δ_o,t(a)

with ``Δ`` the LoRA update of a targeted projection (zero otherwise), ``P`` the ``L`` prefix
positions (none for ``L = 0``) and ``inject_t`` each head's soft injection (the identity
without it). ``[B, S, D] -> [B, S, D]``. With ``poly`` (Polytropon / MHR,
:mod:`~mtljax.models.peft.poly`) the projections in ``poly.targets`` add their routed skill update too. With ``lora_routing='phatgoose'`` every ``Δ`` mixes all
tasks' LoRA per token (:mod:`~mtljax.models.peft.phatgoose`) and needs no task ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.layers import (
    Dtype,
    attend,
    attention_head_dim,
    heads_projection,
    output_projection,
)
from mtljax.models.peft.inject import SCOPE as INJECT
from mtljax.models.peft.inject import SoftInject
from mtljax.models.peft.lora import PREFIX, LoraDelta
from mtljax.models.peft.poly import PREFIX as POLY_PREFIX
from mtljax.models.peft.poly import PolyDelta, PolySettings
from mtljax.models.peft.prefix import Prefix
from mtljax.models.peft.select import task_ids_of
from mtljax.models.plugs import Context


class PeftAttention(nn.Module):
    """Multi-head self-attention with per-task LoRA on ``lora_targets`` (of ``query``, ``key``,
    ``value``, ``out``; rank ``lora_rank``, scale ``lora_alpha / lora_rank``) and per-task key/value
    prefixes of length ``prefix_length``; ``inject``: soft injection of task embeddings into every head
    (gate logits initialised to ``inject_logit_init``); see the module docstring."""

    num_heads: int
    num_tasks: int
    head_dim: int | None = None
    attention_impl: str | None = None
    lora_rank: int = 0
    lora_alpha: float = 1.0
    lora_targets: Sequence[str] = ()
    prefix_length: int = 0
    inject: bool = False
    inject_logit_init: float = -20.0
    lora_routing: str = ""
    lora_top_k: int = 2
    poly: PolySettings | None = None  # Polytropon / MHR routed skills (mtljax.models.peft.poly) on poly.targets
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:
        width = x.shape[-1]
        head_dim = attention_head_dim(width, self.num_heads, self.head_dim)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        routed = self.lora_routing == "phatgoose"  # LoRA then routes every token itself: no task ids
        poly = self.poly.targets if self.poly else ()
        per_task = (bool(self.lora_targets) and not routed) or self.prefix_length > 0 or self.inject or bool(poly)
        ids = task_ids_of(ctx, x.shape[0], "PeftAttention") if per_task else None
        heads = (self.num_heads, head_dim)

        def project(name, layer, h, in_axes, out_axes, out_features):
            y = layer(h)
            if name in self.lora_targets:
                y = y + LoraDelta(self.num_tasks, self.lora_rank, self.lora_alpha, out_features, in_axes, out_axes,
                                  self.lora_routing, self.lora_top_k, name=PREFIX + name, **kw)(h, ids)
            if name in poly:
                y = y + PolyDelta(self.num_tasks, self.poly, out_features, in_axes, out_axes, name=POLY_PREFIX + name,
                                  **kw)(h, ids, ctx.train)
            return y

        q, k, v = (project(n, heads_projection(*heads, name=n, **kw), x, ("embed",), ("heads", "kv"), heads)
                   for n in ("query", "key", "value"))
        if self.prefix_length > 0:
            pk, pv = Prefix(self.num_tasks, self.prefix_length, *heads, name="prefix", **kw)(ids)
            k = jnp.concatenate([pk.astype(k.dtype), k], axis=1)
            v = jnp.concatenate([pv.astype(v.dtype), v], axis=1)
        out = attend(q, k, v, self.attention_impl)  # [B, S, H, h]
        if self.inject:
            out = SoftInject(self.num_tasks, self.inject_logit_init, name=INJECT, **kw)(out, ids)
        return project("out", output_projection(width, name="out", **kw), out, ("heads", "kv"), ("embed",), (width,))
