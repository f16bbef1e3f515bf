"""MULTI-LANE (De Min, Mancini, Lathuilière, Roy, Ricci, 2024, "Less is more: summarizing patch tokens for
efficient multi-label class-incremental learning", CoLLAs, arXiv 2405.15633; code tdemin16/multi-lane):
a frozen ViT over the patches and, per task, a *lane*: a class token that reads a few learned summaries
of the patches.

Per task ``t`` (a lane) and block ``l``, with ``X`` the block's normalised patch tokens ``[N, C]`` and
``S_t`` its ``k`` learned selectors ``[k, C]``::

    P_t = softmax(S_t · Xᵀ / √C) · X                      (k summaries of the patches)
    cls_t ← cls_t + W_o attend(q(cls_t), [K_t ; k([cls_t, P_t])], [V_t ; v([cls_t, P_t])])
    cls_t ← cls_t + MLP(LN(cls_t))

with the block's *own* (frozen) LayerNorms, projections and MLP, and per-lane key/value prefixes
``K_t, V_t`` (prefix tuning, :class:`~mtljax.models.peft.prefix.Prefix`) in the first
``prefix_blocks`` blocks. The summaries are dropped after the block and recomputed in the next one
from the patch stream, which runs through the frozen blocks exactly as in the base ViT (the patches
never attend to a lane). Task ``t``'s head reads ``cls_t`` after the final norm; dense heads read the
patch tokens (the base model's).

How it sits on the one ViT (:mod:`mtljax.models.plugs`): the ViT's ``prompt`` plug inserts the ``T``
lane class tokens after the class token (if any) and before the patches
(:class:`~mtljax.models.peft.task_tokens.TaskTokens`, parameter ``lane_cls``); every block's
``attention`` plug is :class:`LaneAttention` (the base attention on the stream, the lane rule on the
lane tokens, under the base projections' names); LayerNorms and MLPs act per token, so they already
do the right thing; :class:`~mtljax.models.peft.task_tokens.TaskTokenViT` hands each task its lane's
final state. One backbone pass serves all lanes; no task ids are needed.

Lanes share nothing trainable (freeze the ViT: ``config.optim.trainable = ("lane", "^heads_")``): lane
``t``'s output depends only on the frozen stream and lane ``t``'s own parameters, so adding a lane
leaves the others' outputs unchanged (``tests/models/test_lanes.py`` checks bit-identity).

Cost: a lane's transformer work is on ``1 + k`` tokens, not ``N``; what grows with ``N`` is the
summary ``S_t·Xᵀ`` (``2·k·N·C`` FLOPs twice per block) — linear, where the shared stream's attention
is quadratic. XLA's count (:func:`mtljax.cost.compiled_flops`, ``stage='lowered'``, backbone only; width 16,
depth 2, 2 heads, ``k = 2``, ``L = 2`` prefixes in block 0, one example): one lane (2 lanes minus 1)
costs 15,576 FLOPs at N = 4 patches and 18,888 at N = 16 (×1.21), while the frozen ViT itself goes
from 42,880 to 199,936 (×4.66); ``tests/models/test_lanes.py`` prints the numbers again.

Deviations from the reference code: (1) its selectors are one set per lane that travels through the
blocks with the class token; ours are parameters of every block (``[T, k, C]`` per block) and the
lane's residual stream holds only ``cls_t``. (2) Its lane class tokens start from the pretrained
class token; ours are learned from ``N(0, 0.02²)`` (the ViT needs no class token: ``pool='gap'`` works).
(3) Lane logits are not masked to the lane's classes (each task has its own head here). (4) No
gradient is stopped through the stream: with a frozen ViT none is computed anyway.

Parameters (``T`` lanes, ``k`` selectors, ``L`` prefix length, ``B_p`` prefixed blocks): ``lane_cls [T, 1, C]``
(``backbone/prompt``), ``lane_selectors [T, k, C]`` per block (``blockN/attn``), ``lane_prefix/{keys,values}
[T, L, H, h]`` in the first ``B_p`` blocks: ``T·(C + depth·k·C + B_p·2·L·C)`` in all.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.config import positive_int, require
from mtljax.models.layers import (
    Dtype,
    attend,
    attention_head_dim,
    heads_projection,
    output_projection,
)
from mtljax.models.peft.prefix import Prefix
from mtljax.models.peft.task_tokens import TaskTokens, TaskTokenViT
from mtljax.models.plugs import BlockPlugs, Context
from mtljax.models.vit import ViT

SCOPE = "lane"  # every lane parameter's path has a key containing it


class LaneAttention(nn.Module):
    """The attention plug of a MULTI-LANE block: ``[B, S, C] -> [B, S, C]`` where positions
    ``start .. start + num_lanes`` hold the lanes' class tokens and the others the frozen stream.

    The stream gets plain multi-head self-attention among itself (exactly the base attention); lane
    ``t`` attends from its class token over ``[prefix_t ; cls_t, P_t]`` (module docstring). The
    projections are the base attention's (``query``, ``key``, ``value``, ``out``), shared by stream
    and lanes.
    """

    num_heads: int
    num_lanes: int
    selectors: int
    start: int = 0
    prefix_length: int = 0
    head_dim: int | None = None
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, ctx: Context | None = None) -> jax.Array:
        b, _, c = x.shape
        t, k, a = self.num_lanes, self.selectors, self.start
        h = attention_head_dim(c, self.num_heads, self.head_dim)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        query, key, value = (heads_projection(self.num_heads, h, name=n, **kw) for n in ("query", "key", "value"))
        out = output_projection(c, name="out", **kw)

        lanes = x[:, a:a + t]  # [B, T, C]
        stream = jnp.concatenate([x[:, :a], x[:, a + t:]], axis=1)  # [B, S - T, C]
        y = out(attend(query(stream), key(stream), value(stream), self.attention_impl))

        patches = x[:, a + t:]  # [B, N, C]
        s = self.param(SCOPE + "_selectors", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                          (None, None, "embed")),
                       (t, k, c), self.param_dtype).astype(self.dtype)
        logits = jnp.einsum("tkc,bnc->btkn", s, patches) / jnp.sqrt(jnp.asarray(c, self.dtype))
        summaries = jnp.einsum("btkn,bnc->btkc", jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(
            patches.dtype), patches)  # [B, T, k, C]
        z = jnp.concatenate([lanes[:, :, None], summaries], axis=2)  # [B, T, 1 + k, C]
        q, kz, vz = query(lanes), key(z), value(z)  # [B, T, H, h], [B, T, 1 + k, H, h] x2
        if self.prefix_length > 0:
            pk, pv = Prefix(t, self.prefix_length, self.num_heads, h, name=SCOPE + "_prefix", **kw)(
                jnp.arange(t))  # [T, L, H, h]
            kz = jnp.concatenate([jnp.broadcast_to(pk.astype(kz.dtype), (b, *pk.shape)), kz], axis=2)
            vz = jnp.concatenate([jnp.broadcast_to(pv.astype(vz.dtype), (b, *pv.shape)), vz], axis=2)
        span = kz.shape[2]
        lane_out = attend(q.reshape(b * t, 1, self.num_heads, h), kz.reshape(b * t, span, self.num_heads, h),
                          vz.reshape(b * t, span, self.num_heads, h), self.attention_impl)
        lane_out = out(lane_out.reshape(b, t, self.num_heads, h))  # [B, T, C]
        return jnp.concatenate([y[:, :a], lane_out.astype(y.dtype), y[:, a:]], axis=1)


def check_multi_lane(m, depth: int | None) -> None:
    """``m = config.model.multi_lane`` (keys relative to it); ``depth``: the ViT's, when known."""
    positive_int(m.selectors, "selectors")
    for key in ("prefix_length", "prefix_blocks"):
        v = m[key]
        require(isinstance(v, int) and not isinstance(v, bool) and v >= 0, key, f"must be an integer >= 0, got {v!r}")
    require(depth is None or m.prefix_blocks <= depth, "prefix_blocks",
            f"{m.prefix_blocks} is more than the ViT's {depth} blocks")


def multi_lane_vit(m, task_names, **vit) -> TaskTokenViT:
    """The MULTI-LANE backbone of ``m = config.model.multi_lane`` for the tasks ``task_names``; ``vit``
    are the ViT's keyword arguments (its parameter tree stays the base ViT's plus the lanes')."""
    t, start = len(task_names), 1 if vit["pool"] == "cls" else 0
    attention = functools.partial(LaneAttention, vit["num_heads"], t, m.selectors, start,
                                  head_dim=vit.get("head_dim"), attention_impl=vit.get("attention_impl"))
    blocks = tuple(BlockPlugs(attention=functools.partial(attention, prefix_length=m.prefix_length
                                                          if i < m.prefix_blocks else 0))
                   for i in range(vit["depth"]))
    prompt = functools.partial(TaskTokens, t, 1, start, param_name=SCOPE + "_cls")
    return TaskTokenViT(ViT(blocks=blocks, prompt=prompt, **vit), tuple(task_names), 1)
