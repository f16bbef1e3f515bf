"""Router gates of the MoE layers: logits over experts from tokens and, for task-aware gates, task ids.

``Gate(num_outputs, mode)(x [B, S, D], task_ids [B] | None) -> logits [B, S, num_outputs]`` (float32).

* ``shared``: one linear gate for every token (V-MoE, Riquelme et al., 2021).
* ``task``: one gate per task; example ``b`` uses the gate of ``task_ids[b]`` (M³ViT's per-task gates,
  Liang et al., 2022; Mod-Squad, Chen et al., 2023). Kernel ``[T, D, O]``.
* ``task_conditioned``: one gate whose input is the token concatenated with ``MLP(onehot(task))``
  (M³ViT's task-conditioned variant); the embedding MLP has two layers of ``task_embed_dim``.

``normalize=True`` (Soft MoE, Puigcerver et al., 2024): l2-normalised tokens and gate columns times a
learned scalar scale. ``zero_init``: zero kernels, so every expert starts equally likely (Mod-Squad).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
GATES = ("shared", "task", "task_conditioned")


class Gate(nn.Module):
    """Router logits ``[B, S, num_outputs]`` (float32) from tokens and, for task gates, task ids."""

    num_outputs: int
    mode: str = "shared"
    num_tasks: int = 1
    zero_init: bool = False
    task_embed_dim: int = 64
    normalize: bool = False  # Soft MoE: l2-normalised tokens and gate columns, learned scale
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, task_ids: jax.Array | None = None) -> jax.Array:
        """``x [B, S, D]``, ``task_ids [B]`` (task gates) -> logits ``[B, S, num_outputs]`` (float32)."""
        if self.mode not in GATES:
            raise ValueError(f"gate: unknown mode {self.mode!r}; choose from {GATES}")
        x = x.astype(jnp.float32)
        init = nn.initializers.zeros if self.zero_init else nn.initializers.normal(0.02)
        if self.mode == "task_conditioned":
            if task_ids is None:
                raise ValueError("a task-conditioned gate needs task ids")
            onehot = jax.nn.one_hot(task_ids, self.num_tasks, dtype=jnp.float32)
            dense = lambda name: nn.Dense(  # noqa: E731
                self.task_embed_dim, param_dtype=self.param_dtype, name=name,
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None)),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))
            emb = dense("task_mlp1")(nn.gelu(dense("task_mlp0")(onehot)))
            x = jnp.concatenate([x, jnp.broadcast_to(emb[:, None, :], (*x.shape[:2], emb.shape[-1]))], axis=-1)
        if self.mode == "task":
            if task_ids is None:
                raise ValueError("per-task gates need task ids")
            kernel = self.param("kernel", nn.with_logical_partitioning(init, (None, "embed", None)),
                                (self.num_tasks, x.shape[-1], self.num_outputs), self.param_dtype)
            kernel = jnp.take(kernel.astype(jnp.float32), task_ids, axis=0)  # [B, D, O]
            if self.normalize:
                x, kernel = _l2(x, -1), _l2(kernel, -2)
            logits = jnp.einsum("bsd,bdo->bso", x, kernel)
        else:
            kernel = self.param("kernel", nn.with_logical_partitioning(init, ("embed", None)),
                                (x.shape[-1], self.num_outputs), self.param_dtype).astype(jnp.float32)
            if self.normalize:
                x, kernel = _l2(x, -1), _l2(kernel, 0)
            logits = jnp.einsum("bsd,do->bso", x, kernel)
        if self.normalize:
            logits = logits * self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ()), (),
                                         self.param_dtype)
        return logits


def _l2(x, axis):
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True) + 1e-6)
