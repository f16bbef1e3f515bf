"""PHATGOOSE: routing every token among independently trained LoRA experts (Muqeeth et al., 2024,
"Learning to Route Among Specialized Experts for Zero-Shot Generalization"; reference code r-three/phatgoose).

The method has two steps after each expert (here: task ``t``'s LoRA of a projection, ``A_t``, ``B_t``)
has been trained:

1. **Gate training** (``config.model.peft.routing = "gate"``). Each expert and projection gets a gate
   vector ``v_t`` over the projection's input features (``d_in``), trained for a short while with the
   expert frozen. The expert's contribution is scaled per token by ``σ(v_tᵀ x)``::

       y = W x + (α/r) B_t A_t (x · σ(v_tᵀ x))   =   W x + σ(v_tᵀ x) · (α/r) B_t A_t x

   (the two are equal since the LoRA update is linear in ``x``). As in the reference code ``v_t``
   starts at zero, so the gate starts at ``σ(0) = 1/2`` and the expert's update at half its size;
   ``x`` enters the gate as it is, not standardised.

2. **Routing** (``routing = "phatgoose"``, no task ids). The trained gates of all ``T`` experts become
   the router of that projection. Per token ``x`` and projection::

       s_t = ⟨std(x), std(v_t)⟩ / √d_in          std(u) = (u − mean(u)) / √(var(u) + ε),  ε = 1e-5
       p   = softmax(s)                          (over the T experts)
       w_t = p_t / Σ_{j ∈ top-k} p_j  for the k largest p_t, 0 for the others
       y   = W x + Σ_t w_t (α/r) B_t A_t x

   ``std`` is the reference code's parameter-free layer norm (zero mean and unit *variance* over the
   features, so ``‖std(u)‖ = √d_in``; the paper's "standardise"); ``k = config.model.peft.top_k``
   (the paper's 2). Ties among the scores keep the experts with the lower index.

Deviation from the paper: there every expert and its gate come from a separate single-task run and
the gate is trained on that task's data alone. Here the ``T`` experts share one ``[T, ...]`` tree;
trained in one multi-task run with ``routing = "gate"`` each example's loss reaches only its own task's
gate, which is the same thing. Experts trained in separate single-task runs (each with a task axis of
1) are joined with :func:`stack_lora_experts`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

ROUTINGS = ("", "gate", "phatgoose")
GATE = "gate"  # the gate vector's name under a projection's lora_<projection> scope
EPSILON = 1e-5  # of std (the reference code's layer norm default)


def standardise(u: jax.Array, eps: float = EPSILON) -> jax.Array:
    """``(u − mean(u)) / √(var(u) + eps)`` over the last axis (zero mean, unit variance per row)."""
    u = u.astype(jnp.float32)
    centred = u - jnp.mean(u, axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + eps)


def phatgoose_scores(x: jax.Array, gates: jax.Array, eps: float = EPSILON) -> jax.Array:
    """``s [..., T]``: ``⟨std(x), std(v_t)⟩ / √d`` for tokens ``x [..., d]`` and gates ``[T, d]`` (float32)."""
    d = x.shape[-1]
    if gates.ndim != 2 or gates.shape[-1] != d:
        raise ValueError(f"phatgoose_scores: gates must be [T, {d}], got {gates.shape}")
    return jnp.einsum("...d,td->...t", standardise(x, eps), standardise(gates, eps),
                      precision=jax.lax.Precision.HIGHEST) / math.sqrt(d)


def top_k_weights(scores: jax.Array, top_k: int) -> jax.Array:
    """``softmax(scores)`` over the last axis, kept at its ``top_k`` largest entries and renormalised;
    zero elsewhere. Exactly ``top_k`` nonzeros per row (ties: lower index first); rows sum to 1."""
    num = scores.shape[-1]
    if not 1 <= top_k <= num:
        raise ValueError(f"top_k_weights: top_k must lie in [1, {num}], got {top_k}")
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
    kept, index = jax.lax.top_k(probs, top_k)  # [..., k]
    kept = kept / jnp.sum(kept, axis=-1, keepdims=True)
    return jnp.sum(jax.nn.one_hot(index, num, dtype=kept.dtype) * kept[..., None], axis=-2)


def phatgoose_weights(x: jax.Array, gates: jax.Array, top_k: int = 2, eps: float = EPSILON) -> jax.Array:
    """Routing weights ``[..., T]`` of tokens ``x [..., d]`` among ``T`` experts with gates ``[T, d]``:
    top-``k`` of the softmax of :func:`phatgoose_scores`, renormalised (module docstring, step 2)."""
    return top_k_weights(phatgoose_scores(x, gates, eps), top_k)


def gate_scale(x: jax.Array, gates: jax.Array) -> jax.Array:
    """``σ(v_bᵀ x_bs)`` ``[B, S]`` for tokens ``x [B, S, d]`` and each example's gate ``[B, d]`` (float32)."""
    logits = jnp.einsum("bsd,bd->bs", x.astype(jnp.float32), gates.astype(jnp.float32),
                        precision=jax.lax.Precision.HIGHEST)
    return jax.nn.sigmoid(logits)


def expert_mask(params) -> Any:
    """Boolean pytree like ``params``: the leaves under a ``lora_<projection>`` scope (every expert's
    ``a``, ``b`` and ``gate``, slot ``t`` task ``t``'s), for freezing or loading experts by task."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(str(getattr(k, "key", "")).startswith("lora_") for k in path), params)


def stack_lora_experts(trees: Sequence[Mapping[str, Any]]) -> dict:
    """One parameter tree with ``T = len(trees)`` experts from ``T`` trees of the same model shape.

    Every leaf under a ``lora_<projection>`` scope (``a``, ``b`` and, when there, ``gate``: a leading
    task axis, usually of 1 for a single-task run) is concatenated along axis 0, in the order of
    ``trees``; every other leaf (the frozen base ViT) is taken from ``trees[0]`` — the experts are
    meant to share it. Heads and other per-task modules are not experts: they are taken from
    ``trees[0]`` too, so replace them as needed. Unboxed trees (nested dicts) only.
    """
    if not trees:
        raise ValueError("stack_lora_experts: no trees given")

    def walk(nodes, in_lora):
        first = nodes[0]
        if not isinstance(first, Mapping):
            return jnp.concatenate([jnp.asarray(n) for n in nodes], axis=0) if in_lora else first
        for n in nodes[1:]:
            if not isinstance(n, Mapping) or set(n) != set(first):
                raise ValueError(f"stack_lora_experts: the trees differ in their keys ({sorted(first)})")
        return {k: walk([n[k] for n in nodes], in_lora or (isinstance(k, str) and k.startswith("lora_")))
                for k in first}

    return walk(list(trees), False)


__all__ = ["EPSILON", "GATE", "ROUTINGS", "expert_mask", "gate_scale", "phatgoose_scores", "phatgoose_weights", "stack_lora_experts",
           "standardise", "top_k_weights"]
