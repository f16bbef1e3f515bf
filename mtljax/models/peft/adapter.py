"""Bottleneck adapters per task (Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP",
sec. 2.1 and fig. 2; Pfeiffer et al., 2021, "AdapterFusion": one adapter after the MLP only).

``h -> h + W_up,t · gelu(W_down,t · h + b_down,t) + b_up,t`` for the task ``t`` of the example: a
down-projection to ``m`` dimensions, a nonlinearity, an up-projection back, and the adapter's own
skip connection. ``W_up`` and ``b_up`` start at zero, so every adapter is the identity at
initialisation and the adapted model equals the base model (Houlsby et al. start near the identity
with small random weights; zero makes it exact). ``W_down`` is Xavier-uniform per task.

Where: the ViT's ``attention_adapter`` / ``mlp_adapter`` plugs (:mod:`mtljax.models.plugs`), i.e. on
the output of a block's attention and/or MLP branch, before dropout and the residual add — Houlsby's
place for both sub-layers (``positions=("attention", "mlp")``), Pfeiffer's with ``("mlp",)``.
Deviation: both papers use post-LN transformers (the adapter's output enters add & LayerNorm); the ViT
is pre-LN, so it enters the residual stream directly. GELU is the ViT's nonlinearity.

Parameters under the plug's scope (``blockN/attn_adapter``, ``blockN/mlp_adapter``): ``down_kernel
[T, D, m]``, ``down_bias [T, m]``, ``up_kernel [T, m, D]``, ``up_bias [T, D]`` — ``T·(2·D·m + m + D)``
per adapter.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.layers import Dtype
from mtljax.models.peft.select import per_example, task_ids_of
from mtljax.models.plugs import Context

POSITIONS = ("attention", "mlp")


class Adapter(nn.Module):
    """A per-task residual bottleneck of width ``dim``: ``[B, S, D] -> [B, S, D]`` (module docstring)."""

    num_tasks: int
    dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, ctx: Context) -> jax.Array:
        ids = task_ids_of(ctx, h.shape[0], "Adapter")
        t, d, m = self.num_tasks, h.shape[-1], self.dim
        xavier = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=1, out_axis=2, batch_axis=(0,))
        zeros = nn.initializers.zeros

        def param(name, init, axes, shape):
            return per_example(self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype),
                               ids, self.dtype)

        w_down = param("down_kernel", xavier, (None, "embed", None), (t, d, m))  # [B, D, m]
        b_down = param("down_bias", zeros, (None, None), (t, m))  # [B, m]
        w_up = param("up_kernel", zeros, (None, None, "embed"), (t, m, d))  # [B, m, D]
        b_up = param("up_bias", zeros, (None, "embed"), (t, d))  # [B, D]
        x = h.astype(self.dtype)
        z = nn.gelu(jnp.einsum("bsd,bdm->bsm", x, w_down) + b_down[:, None])
        return h + (jnp.einsum("bsm,bmd->bsd", z, w_up) + b_up[:, None]).astype(h.dtype)
