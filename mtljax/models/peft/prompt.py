"""Visual prompt tuning per task (Jia et al., 2022, "Visual Prompt Tuning", sec. 3.2).

``L`` learned tokens of the example's task join the token sequence after the class token (if any)
and before the patch tokens: ``[cls, P_t, patches]``.

* **Shallow VPT**: the ViT's ``prompt`` plug inserts ``P_t`` once, after the position
  embeddings; every block then updates them like any token.
* **Deep VPT**: in addition, block ``i >= 1``'s ``prompt`` plug *replaces* the ``L`` prompt
  positions of the residual stream with that block's own ``P_t^i`` — the previous block's outputs at
  those positions are dropped, so the sequence length stays ``[1 +] L + N`` throughout (block 0 reads
  the inserted ones).

Pooling never reads a prompt: the ViT pools the class token (position 0: prompts go after it) or the
mean of the last ``N`` tokens (the patches). Prompts get no position embedding (as in VPT).
Initialisation: ``N(0, 0.02²)``, the scale of the ViT's position embeddings (VPT draws Xavier-uniform
over the patch dimension: for ViT-B/16 a bound of 0.0625, a std of 0.036). ``L = 0`` is the identity
without parameters (the builder then creates no plug at all).

Parameters: ``tokens [T, L, D]`` under the scope ``prompt`` (the ViT's, and each deep block's
``blockN/prompt``): ``T·L·D`` each.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.layers import Dtype
from mtljax.models.peft.select import per_example, task_ids_of
from mtljax.models.plugs import Context


class PromptTokens(nn.Module):
    """Insert (``replace=False``) or replace (``replace=True``) ``length`` per-task tokens at position
    ``start`` (1 after a class token, else 0): ``[B, S, D] -> [B, S + L, D]`` or ``[B, S, D]``."""

    num_tasks: int
    length: int
    start: int = 0
    replace: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:
        if self.length == 0:
            return x
        b, s, d = x.shape
        if self.replace and s < self.start + self.length:
            raise ValueError(f"PromptTokens: {s} tokens cannot hold {self.length} prompts after position {self.start}")
        ids = task_ids_of(ctx, b, "PromptTokens")
        tokens = self.param("tokens", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed")),
                            (self.num_tasks, self.length, d), self.param_dtype)
        p = per_example(tokens, ids, x.dtype)  # [B, L, D]
        rest = x[:, self.start + self.length:] if self.replace else x[:, self.start:]
        return jnp.concatenate([x[:, :self.start], p, rest], axis=1)
