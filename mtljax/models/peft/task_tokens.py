"""Task tokens: one backbone pass, each task's head reading its own learned token (after TPO's task tokens,
"learnable task tokens placed at special positions; the model's hidden state there feeds task heads";
the same idea as MultiTab-Net's per-task tokens, Sinodinos et al., 2025, on a ViT).

Every example's sequence gets the tokens of *all* ``T`` tasks, ``n`` per task, after the class token
(if any) and before the patch tokens, in task order::

    [cls, τ_0,1 … τ_0,n, τ_1,1 … τ_T−1,n, patches]          (no position embedding, as VPT's prompts)

The blocks update them like any token; after the final norm, task ``t``'s classification head reads
the mean of its ``n`` tokens' final states instead of the pooled patches. All tasks share this one
pass (``B`` sequences of ``[1 +] T·n + N`` tokens), where per-task prompts (VPT) need one pass per
task (``T·B`` sequences of ``[1 +] n + N``).

What changes and what does not:

* Pooling never reads a task token: the ViT pools the class token (position 0) or the mean of the last
  ``N`` tokens (the patches), and dense heads read exactly those ``N`` patch tokens. With attention,
  patches *attend to* the task tokens, so the patch states (and a dense head's output) do depend on them.
* Task ``t``'s output depends on its own token through its head, and on the *other* tasks' tokens
  through attention (token ``t`` attends to them, and to patches that attended to them). Nothing masks
  this (MultiTab-Net optionally forbids task tokens to attend to each other; the plug interface carries
  no attention masks). Marking the tokens task-specific in the objective therefore leaves them out of
  Gramian methods although other tasks' losses do reach them (their summed gradient still trains them).
* Dense tasks get a token too (uniform indexing) that acts only through attention.

Deviation from TPO: TPO places task tokens in an LLM's text stream and decodes them with task-specific
heads (boxes, segments); here they are image-sequence tokens read by the usual heads. Initialisation
``N(0, 0.02²)`` (the ViT's position embeddings' scale).

Works with a frozen backbone: train ``config.optim.trainable = ("task_token", "^heads_")``.

Parameters: ``task_tokens [T, n, D]`` under the ViT's ``prompt`` plug (``backbone/prompt/task_tokens``):
``T·n·D``. ``n = 0`` (``config.model.peft.task_tokens``) is the base model (no plug, no wrapper).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.layers import Dtype
from mtljax.models.plugs import Context, Encoding
from mtljax.models.vit import ViT

SCOPE = "task_token"  # the parameter's name contains it (freeze / mark by this pattern)


class TaskTokens(nn.Module):
    """The ViT's ``prompt`` plug: insert all tasks' ``length`` tokens at ``start``,
    ``[B, S, D] -> [B, S + T·length, D]`` (the same tokens for every example; no task ids needed).
    ``param_name``: the parameter's name (MULTI-LANE's lane class tokens: ``lane_cls``)."""

    num_tasks: int
    length: int
    start: int = 0
    param_name: str = "task_tokens"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, ctx: Context | None = None) -> jax.Array:
        b, _, d = x.shape
        init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed"))
        tokens = self.param(self.param_name, init, (self.num_tasks, self.length, d), self.param_dtype)
        tokens = jnp.broadcast_to(tokens.reshape(1, -1, d).astype(x.dtype), (b, self.num_tasks * self.length, d))
        return jnp.concatenate([x[:, :self.start], tokens, x[:, self.start:]], axis=1)


class TaskTokenViT(nn.Module):
    """A ViT whose ``prompt`` plug is :class:`TaskTokens`, read out per task:
    ``(images, ctx) -> Encoding(pooled {task: [B, D]}, tokens [B, N, D], aux)``.

    ``vit`` shares this module's parameter scope, so the parameter tree is the ViT's own (a pretrained
    ViT's checkpoint loads into it; the tokens add ``prompt/task_tokens``).
    """

    vit: ViT
    task_names: Sequence[str]
    length: int

    per_task_output = True  # every task reads its own representation (no shared rep for rep-level methods)

    def setup(self):
        nn.share_scope(self, self.vit)

    def __call__(self, images: jax.Array, ctx: Context = Context()) -> Encoding:
        t, n = len(self.task_names), self.length
        enc = self.vit(images, ctx)
        start = 1 if self.vit.pool == "cls" else 0
        lead = enc.leading
        if lead is None or lead.shape[1] != start + t * n:
            raise ValueError(f"TaskTokenViT: expected {start + t * n} tokens before the patches, got "
                             f"{None if lead is None else lead.shape[1]} (is the ViT's prompt plug TaskTokens?)")
        b, d = lead.shape[0], lead.shape[-1]
        states = jnp.mean(lead[:, start:].reshape(b, t, n, d), axis=2)  # [B, T, D]
        pooled = {name: states[:, i] for i, name in enumerate(self.task_names)}
        return enc._replace(pooled=pooled)
