"""TaskExpert (Ye & Xu, ICCV 2023): memorial mixture-of-experts decoding of task-specific features.

The official code was never released; this follows the paper's description, and the choices it
leaves open are marked *(choice)*.

A ViT backbone runs **once** for all tasks. After each block ``l`` in ``layers`` a *memorial MoE*
(MMoE) module reads the block's output ``X_l`` (a *tap* of :class:`~mtljax.models.vit.ViT`: the
memorial MoEs read the residual stream and never write to it, so they run beside the ViT's one block
loop, not inside it):

1. ``N`` expert networks decompose it into task-generic features ``E_i = Expert_i(LN(X_l))``
   ``[B, S, D]``; *(choice)* every expert is a residual bottleneck MLP,
   ``E_i = LN(X_l) + W_2^i·gelu(W_1^i·LN(X_l))``, so that any mixture of experts still carries the
   backbone feature. (Plain bottleneck MLPs start as random projections of it: on multi-digits a
   single-task TaskExpert then reached 25 % accuracy on the left digit after 800 steps where the dense
   ViT reaches 88 %; with residual experts it reaches 88 % too.)
2. For every task ``t`` a gating network gives per-token softmax weights over the ``N`` experts **and**
   the task's memory: ``g^t = softmax(LN(X_l)·W_g^t) ∈ Δ^{N+1}``.
3. The task feature is ``F_l^t = Σ_i g_i^t·E_i + g_mem^t·M_{l−1}^t``; the memory is then written,
   ``M_l^t = F_l^t`` *(choice: the paper "updates the memory at each layer" with the newly assembled
   task feature; we store it as is, so the memory slot is a learned, per-token gated skip over
   layers)*. *(choice)* Before the first MMoE layer the memory of every task is the normalised backbone
   feature the experts read, ``M_0^t = LN(X_{l_0})``. (Starting from the raw residual stream ``X_{l_0}``
   instead, whose norm dwarfs the experts' outputs, let one task of multi-digits lock onto the memory —
   65–76 % of its gate weight — and never learn: 11 % accuracy after 1,500 steps, chance level.)
4. After the last MMoE layer each task's memory, through its own LayerNorm, is that task's
   representation: ``tokens[t]`` ``[B, N_patches, D]`` for dense decoders and ``pooled[t]`` (mean over
   patches, or the class token) for classification heads.

The experts carry the logical axis ``task_exp`` (replicated by default: every token uses every
expert, so there is nothing to route between devices). The mean gate weight of every task on every
expert (and on its memory, the last column) is ``sow``-n as ``usage`` for routing heatmaps.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.layers import Dtype, layer_norm
from mtljax.models.plugs import Context, Encoding
from mtljax.models.vit import ViT

_init = nn.initializers.xavier_uniform(batch_axis=(0,))


class MemorialMoE(nn.Module):
    """One MMoE module: ``(X_l [B, S, D], memory [T, B, S, D]) -> new memory [T, B, S, D]``."""

    num_tasks: int
    num_experts: int
    expert_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, memory: jax.Array | None = None) -> jax.Array:
        """``memory=None`` (the first MMoE layer): every task's memory starts as ``LN(x)``."""
        d = x.shape[-1]
        e, h, pd = self.num_experts, self.expert_dim, self.param_dtype
        z = layer_norm(name="ln", dtype=self.dtype, param_dtype=pd)(x)
        if memory is None:
            memory = jnp.broadcast_to(z, (self.num_tasks, *z.shape))
        w1 = self.param("w1", nn.with_logical_partitioning(_init, ("task_exp", "embed", "mlp")), (e, d, h), pd)
        b1 = self.param("b1", nn.with_logical_partitioning(nn.initializers.zeros, ("task_exp", "mlp")), (e, h), pd)
        w2 = self.param("w2", nn.with_logical_partitioning(_init, ("task_exp", "mlp", "embed")), (e, h, d), pd)
        b2 = self.param("b2", nn.with_logical_partitioning(nn.initializers.zeros, ("task_exp", "embed")), (e, d), pd)
        c = lambda a: a.astype(self.dtype)  # noqa: E731
        hid = nn.gelu(jnp.einsum("bsd,edh->bseh", z, c(w1)) + c(b1))
        experts = z[:, :, None, :] + jnp.einsum("bseh,ehd->bsed", hid, c(w2)) + c(b2)  # residual: [B, S, E, D]
        gate = self.param("gate", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed", None)),
                          (self.num_tasks, d, e + 1), pd)
        g = jax.nn.softmax(jnp.einsum("bsd,tdo->tbso", z.astype(jnp.float32), gate.astype(jnp.float32)), axis=-1)
        self.sow("intermediates", "usage", jnp.mean(g, axis=(1, 2)))  # [T, E + 1]
        g = g.astype(self.dtype)
        return jnp.einsum("tbse,bsed->tbsd", g[..., :e], experts) + g[..., e:] * memory


class TaskExpert(nn.Module):
    """TaskExpert's backbone: ``vit`` (built with ``final_norm=False``) plus MMoE modules on its taps.

    ``(images [B, H, W, C], ctx) -> Encoding(pooled {task: [B, D]}, tokens {task: [B, N, D]}, aux)``.
    ``vit`` shares this module's parameter scope, so the tree is ``embedding``, ``block<i>``,
    ``mmoe<l>``, ``ln_<task>`` side by side (as a ViT's own parameters would be).
    """

    vit: ViT
    task_names: Sequence[str]
    num_experts: int = 4
    expert_dim: int = 64
    layers: Sequence[int] = ()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    per_task_output = True

    def setup(self):
        nn.share_scope(self, self.vit)

    @property
    def tapped(self) -> tuple[int, ...]:
        """The blocks whose outputs the MMoE modules read (the last block when ``layers`` is empty)."""
        return tuple(sorted(set(self.layers))) or (self.vit.depth - 1,)

    @nn.compact
    def __call__(self, images: jax.Array, ctx: Context = Context()) -> Encoding:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        layers, depth = self.tapped, self.vit.depth
        if layers[0] < 0 or layers[-1] >= depth:
            raise ValueError(f"config.model.task_expert.layers={tuple(self.layers)} must index blocks 0..{depth - 1}")
        if set(layers) - set(self.vit.taps) or self.vit.final_norm:
            raise ValueError(f"TaskExpert needs a ViT that taps blocks {layers} and has no final norm")
        enc = self.vit(images, ctx)
        n = enc.tokens.shape[1]
        memory = None
        for i in layers:
            memory = MemorialMoE(len(self.task_names), self.num_experts, self.expert_dim, name=f"mmoe{i}",
                                 **kw)(enc.taps[i], memory)
        pooled, tokens = {}, {}
        for t, name in enumerate(self.task_names):
            m = layer_norm(name=f"ln_{name}", **kw)(memory[t])
            tokens[name] = m[:, -n:]
            pooled[name] = m[:, 0] if self.vit.pool == "cls" else jnp.mean(m[:, -n:], axis=1)
        return Encoding(pooled, tokens, enc.aux)
