"""Prefix tuning: per-task learned key/value prefixes in every attention layer (Li & Liang, 2021,
"Prefix-Tuning: Optimizing Continuous Prompts for Generation", sec. 4.1-4.3).

Each block's attention attends over ``L`` extra positions whose keys and values are parameters of
the example's task, placed before the sequence's own: ``attend(q, [P_k; k], [P_v; v])`` — queries stay
the sequence's, so the output has the input's length. The prefixes are per layer (the paper's
``P_θ[i]`` for every layer's activations) and per task.

Deviation: the paper trains ``P_θ = MLP_θ(P'_θ)`` (a smaller matrix through an MLP, for optimisation
stability on GPT-2/BART) and keeps only ``P_θ`` afterwards; we train ``P_θ`` directly — the form the
paper deploys — initialised ``N(0, 0.02²)``, small next to the projected keys so the base attention
is only diluted at initialisation. ``L = 0`` adds no parameters and leaves the attention exactly the
base one (:class:`~mtljax.models.peft.attention.PeftAttention` then creates no prefix at all).

Parameters: ``keys`` and ``values`` ``[T, L, K, h]`` (``K`` key/value heads, ``h`` per head) under the
attention's scope ``prefix``: ``T·2·L·K·h`` per block.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.layers import Dtype
from mtljax.models.peft.select import per_example


class Prefix(nn.Module):
    """Each example's key and value prefixes: ``task_ids [B] -> (keys, values)``, each ``[B, L, K, h]``."""

    num_tasks: int
    length: int
    num_heads: int
    head_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, task_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        shape = (self.num_tasks, self.length, self.num_heads, self.head_dim)
        init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "heads", "kv"))
        keys = self.param("keys", init, shape, self.param_dtype)
        values = self.param("values", init, shape, self.param_dtype)
        return per_example(keys, task_ids, self.dtype), per_example(values, task_ids, self.dtype)
