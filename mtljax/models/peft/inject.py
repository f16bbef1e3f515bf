"""Soft injection of task embeddings at attention heads (SITE: Park, Kim, Choi, Rhee, 2025, "Soft Head
Selection for Injecting ICL-Derived Task Embeddings" / "Soft Injection of Task Embeddings Outperforms
Prompt-Based In-Context Learning", arXiv 2507.20906).

Per task ``t``, block and attention head ``j``: an embedding ``e_t,j [h]`` and a gate logit ``θ_t,j``.
Inside the attention, after the per-head attention output ``a_j = softmax(q_j k_jᵀ/√h) v_j`` and before
the output projection, every head's activation is mixed with its embedding::

    a'_j = (1 − α_t,j) · a_j + α_t,j · e_t,j,        α_t,j = σ(θ_t,j)          (the "soft head selection")

``α → 1`` makes head ``j`` output ``e_t,j`` whatever its input; ``α → 0`` leaves it as it was. The
example's task ``t`` comes from ``ctx.task_ids`` (one gather, as every per-task module: one pass per
task by default, or one mixed pass with ``task_ids``).

Initialisation: ``e = 0`` and ``θ = θ_0`` (``config.model.peft.inject_logit_init``, default −20):
``σ(−20) ≈ 2·10⁻⁹``, so ``1 − α`` rounds to exactly 1 in float32 and ``α·e = 0``: the model starts
*equal* to the base model. Fill ``e`` with :func:`init_from_mean` (then the model is the base model up
to ``α·e ≈ 2·10⁻⁹·e``) and train the gates. A very negative ``θ_0`` learns slowly (``dα/dθ = α(1−α)``;
Adam moves ``θ`` by about the learning rate per step whatever the gradient's scale): raise ``θ_0``
(−6: ``α ≈ 0.0025``) to trade exactness at initialisation for speed.

Deviations from the paper (an LLM method): (1) the paper injects at the last token of the query
prompt, whose state generates the answer; a ViT's heads read every position (mean pooling) or the
class token, so we inject at *every* position. (2) The paper's ``e`` is the mean head activation at the
last token over few-shot ICL prompts and stays fixed while ``θ`` is optimised; ours is the mean over all
positions and a batch of the task's examples (:func:`init_from_mean`), and it is a parameter like ``θ``:
train only the gates with ``config.optim.trainable = ("inject/logits", "^heads_")``, both with
``("inject", "^heads_")``. (3) The paper optimises ``θ`` per task on a few examples with the LLM's
own loss; here any task head's loss trains it.

Parameters under each block's ``attn/inject`` scope: ``embeddings [T, H, h]``, ``logits [T, H]`` —
``T·H·(h + 1)`` per block. The module also sows the pre-injection head activations, averaged over
positions (``intermediates``: ``.../inject/heads``, ``[B, H, h]``), which :func:`init_from_mean` reads.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from mtljax.models.layers import Dtype
from mtljax.models.peft.select import per_example

SCOPE = "inject"


class SoftInject(nn.Module):
    """``(a [B, S, H, h], task_ids [B]) -> a' [B, S, H, h]``, each head mixed with its task's embedding."""

    num_tasks: int
    logit_init: float = -20.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, a: jax.Array, task_ids: jax.Array) -> jax.Array:
        _, _, heads, head_dim = a.shape
        e = self.param("embeddings", nn.with_logical_partitioning(nn.initializers.zeros, (None, "heads", "kv")),
                       (self.num_tasks, heads, head_dim), self.param_dtype)
        theta = self.param("logits",
                           nn.with_logical_partitioning(nn.initializers.constant(self.logit_init), (None, "heads")),
                           (self.num_tasks, heads), self.param_dtype)
        self.sow("intermediates", "heads", jnp.mean(a.astype(jnp.float32), axis=1))
        alpha = jax.nn.sigmoid(per_example(theta, task_ids, jnp.float32))[:, None, :, None]  # [B, 1, H, 1]
        e_ex = per_example(e, task_ids, jnp.float32)[:, None]  # [B, 1, H, h]
        return ((1.0 - alpha) * a.astype(jnp.float32) + alpha * e_ex).astype(a.dtype)


def init_from_mean(model: nn.Module, params: Any, inputs: jax.Array, task_ids: jax.Array) -> Any:
    """``params`` with every ``inject/embeddings [T, H, h]`` set to the mean head activation of each task.

    Runs ``model`` (a :class:`~mtljax.models.hps.MultiTaskModel` with soft injection) once on
    ``inputs [B, ...]`` with ``task_ids [B]`` (every example as its own task's) and reads the head
    activations before injection, averaged over positions; task ``t``'s embedding at block ``l``, head
    ``j`` becomes their mean over the examples of task ``t`` (tasks without examples keep theirs).
    With the gates at their initial ``θ_0`` the activations are the frozen base model's (the paper's
    "few-shot prompts" are here a batch of the task's examples; see the module docstring). Pure and
    jit-able (``model`` static); ``params`` unboxed.
    """
    _, state = model.apply({"params": params}, inputs, task_ids=task_ids, mutable=["intermediates"])
    sown = traverse_util.flatten_dict(state["intermediates"])
    num_tasks = None
    flat = traverse_util.flatten_dict(params)
    out = dict(flat)
    for path, value in flat.items():
        if len(path) < 2 or path[-2:] != (SCOPE, "embeddings"):
            continue
        num_tasks = value.shape[0]
        acts = sown[path[:-1] + ("heads",)][0]  # [B, H, h]
        onehot = jax.nn.one_hot(task_ids, num_tasks, dtype=jnp.float32)  # [B, T]
        counts = onehot.sum(0)  # [T]
        means = jnp.einsum("bt,bjk->tjk", onehot, acts) / jnp.maximum(counts, 1.0)[:, None, None]
        out[path] = jnp.where(counts[:, None, None] > 0, means, value).astype(value.dtype)
    if num_tasks is None:
        raise ValueError("init_from_mean: the parameters have no inject/embeddings (config.model.peft.method "
                         "without 'inject'?)")
    return traverse_util.unflatten_dict(out)
