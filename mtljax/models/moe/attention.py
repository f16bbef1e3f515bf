"""Mixture of attention heads (MoA; Zhang et al., 2022), the attention layer of Mod-Squad (Chen et al., 2023).

``MoeAttention(...)(x [B, S, D], ctx) -> (y [B, S, D], aux)``, a ViT ``attention`` plug
(:mod:`mtljax.models.plugs`) that reads ``ctx.task_ids`` (per-task gates) and ``ctx.train`` (gate noise).

Every token picks ``k`` of ``E`` attention experts with its (per-task) gate; ``k`` plays the role of
the number of heads. Expert ``e`` owns a query projection ``W_q^e: D → h`` and an output projection
``W_o^e: h → D``; keys and values come from one shared projection ``[K, V] = x·W_kv`` (``h`` each). For
token ``i`` and its chosen experts ``e_1..e_k`` with gate probabilities ``g_j``::

    q_ij = x_i·W_q^{e_j},   a_ij = softmax_t(q_ij·K_tᵀ / √h)·V,   y_i = Σ_j g_j·a_ij·W_o^{e_j} + b_o

Gates are zero-initialised and noise-free (Mod-Squad), the probabilities are not renormalised over the
chosen k, and nothing is dropped (no capacity: each token computes exactly its k heads' attention).
The chosen queries attend to the one key/value head as grouped-query attention with a single group
(``jax.nn.dot_product_attention``, the same implementation choice as the dense attention).
The query projections of all ``E`` experts are computed and the chosen ones gathered, and the outputs
are scattered back to a ``[.., E, h]`` layout for one output einsum: E/k times the projection FLOPs of a
dense layer with k heads, but no data-dependent shapes. A task sub-model (``experts_kept``) keeps
fewer experts and so computes fewer.

Auxiliary losses as in :class:`mtljax.models.moe.mlp.MoeMlp` (``moe_attn_*`` keys): Mod-Squad's mutual
information loss ``mi_weight``, and optionally importance (of the sparse top-k gates the layer mixes
heads with) and z-loss.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.layers import attend, dense
from mtljax.models.moe import routing as rt
from mtljax.models.moe.gate import Gate
from mtljax.models.plugs import Context

Dtype = Any
_init = nn.initializers.xavier_uniform(batch_axis=(0,))


class MoeAttention(nn.Module):
    """Mixture-of-attention-heads plug ``(x [B, S, D], ctx) -> (y [B, S, D], aux)`` (module docstring):
    each token's ``k`` of ``num_experts`` query/output experts of width ``head_dim`` share one K/V head."""

    num_experts: int
    k: int
    head_dim: int
    num_tasks: int = 1
    gate: str = "task"
    gate_zero_init: bool = True
    noise_std: float = 0.0
    experts_kept: Sequence[int] | None = None
    mi_weight: float = 0.0
    importance_weight: float = 0.0
    z_loss_weight: float = 0.0
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, ctx: Context = Context()) -> tuple[jax.Array, dict]:
        task_ids, train = ctx.task_ids, ctx.train
        if not 1 <= self.k <= self.num_experts:
            raise ValueError(f"config.model.moe.attn_top_k={self.k} must be in [1, attn_experts={self.num_experts}]")
        b, s, d = x.shape
        h = self.head_dim
        kept = tuple(self.experts_kept) if self.experts_kept is not None else None
        e = len(kept) if kept is not None else self.num_experts
        if e < self.k:
            raise ValueError(f"a sub-model must keep at least k={self.k} attention experts, got {e}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        wq = self.param("wq", nn.with_logical_partitioning(_init, ("attn_exp", "embed", "kv")), (e, d, h), self.param_dtype)
        wo = self.param("wo", nn.with_logical_partitioning(_init, ("attn_exp", "kv", "embed")), (e, h, d), self.param_dtype)
        bo = self.param("bo", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (d,), self.param_dtype)
        logits = Gate(self.num_experts, self.gate, self.num_tasks, self.gate_zero_init, name="gate",
                      param_dtype=self.param_dtype)(x, task_ids)
        sigma = self.noise_std / self.num_experts
        if train and sigma > 0:
            logits = logits + sigma * jax.random.normal(self.make_rng("dropout"), logits.shape, logits.dtype)
        probs_full = jax.nn.softmax(logits, axis=-1)
        probs = probs_full[..., list(kept)] if kept is not None else probs_full
        gates, idx = rt.top_k(probs, self.k)  # [B, S, k]

        x = x.astype(self.dtype)
        q_all = jnp.einsum("bsd,edh->bseh", x, wq.astype(self.dtype))
        q = jnp.take_along_axis(q_all, idx[..., None], axis=2)  # [B, S, k, h]
        kv = dense(2 * h, ("embed", "kv"), name="kv", **kw)(x)
        keys, values = kv[..., :h], kv[..., h:]
        heads = attend(q, keys[:, :, None, :], values[:, :, None, :], self.attention_impl)  # [B, S, k, h]
        onehot = jax.nn.one_hot(idx, e, dtype=self.dtype) * gates[..., None].astype(self.dtype)  # [B, S, k, E]
        per_expert = jnp.einsum("bskh,bske->bseh", heads, onehot)  # gate-weighted head outputs, by expert
        y = jnp.einsum("bseh,ehd->bsd", per_expert, wo.astype(self.dtype)) + bo.astype(self.dtype)

        losses = {}
        if self.mi_weight and task_ids is not None and self.num_tasks > 1:
            losses["moe_attn_mutual_info"] = self.mi_weight * rt.mutual_information_loss(probs_full, task_ids, self.num_tasks)
        if self.importance_weight:
            gates = rt.top_k_gates(probs_full, self.k)  # the sparse gates the heads are mixed with
            losses["moe_attn_importance"] = self.importance_weight * rt.importance_loss(gates)
        if self.z_loss_weight:
            losses["moe_attn_z"] = self.z_loss_weight * rt.z_loss(logits)
        tid = jnp.zeros((b,), jnp.int32) if task_ids is None else task_ids
        chosen = jax.nn.one_hot(idx, e, dtype=jnp.float32).sum(-2)
        self.sow("intermediates", "usage",
                 jnp.einsum("bse,bt->te", chosen, jax.nn.one_hot(tid, max(self.num_tasks, 1), dtype=jnp.float32)))
        return y.astype(x.dtype), {"losses": losses, "metrics": {}}
