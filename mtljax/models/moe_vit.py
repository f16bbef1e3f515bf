"""A ViT whose MLPs (and optionally attention) are mixtures of experts, routed per task if asked.

One backbone serves three families:

* **V-MoE** (Riquelme et al., 2021): ``gate='shared'``; MoE MLPs in ``moe_layers``; one pass for all
  tasks (hard parameter sharing over an MoE trunk).
* **M³ViT** (Liang et al., 2022): MoE MLP in every other block; ``gate='task'`` (one gate per task) or
  ``'task_conditioned'`` (one gate fed ``token ⊕ MLP(onehot(task))``). The gate depends on the task, so
  in training the backbone runs once per task (the model repeats the batch, one copy per task), and
  inference for one task runs one pass through only the experts that task's gate picks.
* **Mod-Squad** (Chen et al., 2023): additionally MoE attention (:class:`MoeAttention`) in
  ``attn_moe_layers``, per-task zero-initialised gates without noise, and the mutual-information loss.

``__call__(images, task_ids=None, *, train) -> (pooled [B, D], tokens [B, N, D], aux)`` where
``task_ids [B]`` is every example's task index (needed by task gates) and ``aux`` carries the summed
auxiliary losses and averaged routing metrics of all MoE layers.

``experts_kept`` (per block: ``(mlp_kept, attn_kept)``, each a tuple of expert indices or ``None``)
describes a task sub-model with fewer experts (:mod:`mtljax.models.moe.submodel`).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mtljax.models.layers import Dtype, MlpBlock, SelfAttention, layer_norm
from mtljax.models.moe.mlp import MoeMlp, merge_aux
from mtljax.models.moe.attention import MoeAttention
from mtljax.models.vit import embed_patches, pool_tokens


class MoeEncoderBlock(nn.Module):
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    moe: Any = None  # tuple of (name, value) MoeMlp settings, or None for a dense MLP
    attn_moe: Any = None  # tuple of (name, value) MoeAttention settings, or None for dense attention
    experts_kept: Any = (None, None)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, task_ids=None, *, train: bool = False, group_size: int | None = None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = nn.Dropout(self.dropout, deterministic=not train)
        auxes = []
        h = layer_norm(name="ln1", **kw)(x)
        if self.attn_moe is not None:
            h, aux = MoeAttention(**dict(self.attn_moe), experts_kept=self.experts_kept[1], name="attn", **kw)(
                h, task_ids, train=train)
            auxes.append(aux)
        else:
            h = SelfAttention(self.num_heads, name="attn", **kw)(h)
        x = x + drop(h)
        h = layer_norm(name="ln2", **kw)(x)
        if self.moe is not None:
            h, aux = MoeMlp(**dict(self.moe), experts_kept=self.experts_kept[0], name="mlp", **kw)(
                h, task_ids, train=train, group_size=group_size)
            auxes.append(aux)
        else:
            h = MlpBlock(self.mlp_dim, self.dropout, name="mlp", **kw)(h, train=train)
        x = x + drop(h)
        return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed")), merge_aux(*auxes)


class MoeViT(nn.Module):
    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    moe: Any  # (name, value) pairs for MoeMlp
    moe_layers: Sequence[int] = ()
    attn_moe: Any = None  # (name, value) pairs for MoeAttention
    attn_moe_layers: Sequence[int] = ()
    experts_kept: Any = None  # per block (mlp_kept, attn_kept); None = all experts everywhere
    pool: str = "gap"
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def task_gated(self) -> bool:
        """Whether any gate depends on the task (then every task needs its own backbone pass)."""
        gates = [dict(self.moe).get("gate", "shared")] if self.moe_layers else []
        if self.attn_moe is not None and self.attn_moe_layers:
            gates.append(dict(self.attn_moe).get("gate", "task"))
        return any(g != "shared" for g in gates)

    @property
    def routing_group(self) -> int:
        """Examples per routing group of the MoE MLPs (1 without them)."""
        return int(dict(self.moe).get("group_size", 1)) if self.moe_layers else 1

    @nn.compact
    def __call__(self, images, task_ids=None, *, train: bool = False, group_size: int | None = None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x, n = embed_patches(self, images, self.patch_size, self.width, self.pool, **kw)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        auxes = []
        for i in range(self.depth):
            kept = self.experts_kept[i] if self.experts_kept is not None else (None, None)
            block = MoeEncoderBlock(
                self.num_heads, self.mlp_dim, self.dropout,
                moe=self.moe if i in self.moe_layers else None,
                attn_moe=self.attn_moe if i in self.attn_moe_layers else None,
                experts_kept=kept, name=f"block{i}", **kw)
            x, aux = block(x, task_ids, train=train, group_size=group_size)
            auxes.append(aux)
        pooled, tokens = pool_tokens(self, x, n, self.pool, **kw)
        return pooled, tokens, merge_aux(*auxes)
