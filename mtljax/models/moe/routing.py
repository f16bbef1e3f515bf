"""Routers for mixture-of-experts layers: who computes what, and the auxiliary losses that keep it balanced.

Tokens are routed in *groups* (``[G, S, D]``: G groups of S tokens; mtljax uses one example's tokens
per group by default, so routing never depends on how the batch is split over devices). A router turns
gate probabilities ``p [G, S, E]`` into two tensors of shape ``[G, S, E, C]`` (C slots per expert and
group):

* ``dispatch[g, s, e, c]``: how much of token ``s`` goes into slot ``c`` of expert ``e``;
* ``combine[g, s, e, c]``: how much of that slot's output comes back to token ``s``.

The MoE layer computes ``slots = einsum(x, dispatch)``, runs every expert on its C slots and returns
``y = einsum(expert_out, combine)``. A token that lost every slot gets ``y = 0`` and so passes the
block unchanged through the residual connection.

Routing algorithms
------------------
* :func:`tokens_choose` (Shazeer et al., 2017; Switch/GShard; V-MoE): every token picks its top-k
  experts; each expert takes at most ``C = ceil(k·S·capacity_factor / E)`` tokens per group, filled
  first-come-first-served over (choice rank, token): all first choices before any second choice
  (GShard/V-MoE order). With **batch-priority routing** (Riquelme et al., 2021, V-MoE §4.1) tokens are
  taken in order of decreasing top-1 probability, so under a tight capacity the tokens the router is
  surest about are kept. Combine weights are the gate probabilities (not renormalised, as in M³ViT and
  Mod-Squad; ``renormalize=True`` divides by the top-k sum).
* :func:`experts_choose` (Zhou et al., 2022): every expert picks its top-C tokens of the group by
  gate probability, ``C = ceil(S·capacity_factor / E)``; every expert is exactly full, and a token may
  be taken by 0..E experts.
Both also come in *index form* (:func:`tokens_choose_slots`, :func:`experts_choose_slots`): which token
fills which slot, for dispatch by gather and combine by scatter-add — the same routing at O(E·C·D)
per group instead of the one-hot einsums' O(S·E·C·D).

* Soft MoE (Puigcerver et al., 2024) lives in :class:`mtljax.models.moe.MoeMlp` (``router='soft'``):
  ``dispatch`` is a softmax over tokens for every slot and ``combine`` a softmax over slots for every
  token, both from the same logits; nothing is dropped and no balancing loss is needed.

Auxiliary losses (unweighted here; the layer multiplies by its config weights)
------------------------------------------------------------------------------
* :func:`importance_loss`: CV² over experts of ``Importance(X) = Σ_x G(x)``, the per-expert sum of the
  gates (Shazeer et al., 2017, Eq. 6). Shazeer's ``G(x)`` is the *sparse* gate vector the layer mixes
  experts with: zero outside the token's top-k (:func:`top_k_gates`), and M³ViT (Liang et al., 2022)
  uses that; V-MoE (Riquelme et al., 2021) instead sums the dense softmax over all experts. Which of the
  two a layer sums is the caller's choice (``MoeMlp.importance``); the renormalisation follows the
  combine weights: Shazeer's ``G = softmax(KeepTopK(h, k))`` is the top-k probabilities renormalised to
  sum 1 (``renormalize=True``), M³ViT's code keeps the top-k probabilities of the softmax over all
  experts, as its combine weights do (``renormalize=False``, the default). CV² here is the population
  variance over the squared mean (Shazeer's TensorFlow code, vmoe); M³ViT's PyTorch code uses the
  unbiased variance, larger by ``E / (E − 1)``.
* :func:`load_loss`: CV² of the smooth per-expert load, ``P(x, e) = Φ((h_e(x) − kth_excluding(e)) / σ)``,
  the probability that expert ``e`` would stay in the noisy top-k when its noise is re-drawn (Shazeer
  et al., 2017, Eqs. 8–10). Needs gate noise (σ > 0); without noise it is the CV² of the hard
  per-expert counts (no gradient reaches the gate through it).
* :func:`z_loss`: mean of ``logsumexp(logits)²`` (ST-MoE, Zoph et al., 2022, Eq. 5).
* :func:`mutual_information_loss`: ``−I(task; expert)`` of Mod-Squad (Chen et al., 2023, Eq. 2).

Each is 0 at perfectly uniform routing (z-loss excepted: it measures logit size, not balance).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array
_EPS = 1e-9


def top_k(x: Array, k: int) -> tuple[Array, Array]:
    """``jax.lax.top_k`` over the last axis, in k rounds of max-reductions when that axis is short.

    XLA:CPU lowers ``lax.top_k`` to a full comparator sort of every row, which for the few experts of a
    router costs more than the experts' matmuls at small widths; k rounds of (max, first index of the
    max) over a short axis are plain reductions. Same values, same indices (ties: lowest index first,
    as ``lax.top_k``), same gradient (into the chosen entries). Long axes or large k use ``lax.top_k``.
    Elementwise ops and reductions over the last axis only, so a batch-sharded input stays sharded.
    """
    n = x.shape[-1]
    if k > 8 or n > 64:
        return jax.lax.top_k(x, k)
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    taken = jnp.zeros(x.shape, bool)
    vals, idxs = [], []
    for _ in range(k):
        masked = jnp.where(taken, -jnp.inf, x)
        m = jnp.max(masked, axis=-1, keepdims=True)
        # the first untaken entry equal to the max (a NaN max: the first NaN, as top_k's order puts it first)
        hit = ((masked == m) | jnp.isnan(masked)) & ~taken
        i = jnp.min(jnp.where(hit, iota, n), axis=-1, keepdims=True)
        pick = iota == i
        vals.append(jnp.sum(jnp.where(pick, x, jnp.zeros_like(x)), axis=-1))
        idxs.append(i[..., 0])
        taken = taken | pick
    return jnp.stack(vals, axis=-1), jnp.stack(idxs, axis=-1)


def tokens_choose_capacity(k: int, group_size: int, num_experts: int, capacity_factor: float) -> int:
    """Slots per expert and group for top-k tokens-choose routing."""
    return max(1, min(k * group_size, math.ceil(k * group_size * capacity_factor / num_experts)))


def experts_choose_capacity(group_size: int, num_experts: int, capacity_factor: float) -> int:
    """Tokens each expert takes per group for experts-choose routing."""
    return max(1, min(group_size, math.ceil(group_size * capacity_factor / num_experts)))


PAIRWISE_PRIORITY = True
PAIRWISE_PRIORITY_MAX = 128  # groups up to this many tokens: batch priority by pairwise comparison, no sort


def _priority_positions(priority: Array, top_idx: Array, num_experts: int, capacity: int) -> dict:
    """Batch-priority slot positions by comparing every pair of a group's tokens (O(S²), no sort).

    Token ``u`` is served before ``t`` when ``priority[u] > priority[t]``, ties to the lower index (the
    order of a stable ``argsort(-priority)``); all first choices come before any second choice. The
    position of choice ``j`` of token ``t`` is then the number of earlier choices ``j' < j`` of its
    expert plus the number of tokens served before ``t`` whose choice ``j`` is the same expert: what the
    cumulative sum over the sorted order gives.
    """
    g, s, k = top_idx.shape
    iota = jnp.arange(s)
    p_t, p_u = priority[:, :, None], priority[:, None, :]
    before = (p_u > p_t) | ((p_u == p_t) & (iota[None, None, :] < iota[:, None]))  # [G, t, u]
    counts = jnp.zeros((g, num_experts), jnp.int32)  # choices j' < j per expert
    positions = []
    for j in range(k):
        same = top_idx[:, None, :, j] == top_idx[:, :, None, j]  # [G, t, u]
        earlier = jnp.sum(before & same, axis=-1, dtype=jnp.int32)
        positions.append(jnp.take_along_axis(counts, top_idx[..., j], axis=1) + earlier)
        counts = counts + jnp.sum(jax.nn.one_hot(top_idx[..., j], num_experts, dtype=jnp.int32), axis=1)
    position = jnp.stack(positions, axis=-1)
    return {"position": position, "kept": position < capacity}


def tokens_choose_slots(probs: Array, k: int, capacity: int, *, batch_priority: bool = True,
                        renormalize: bool = False) -> dict:
    """Top-k tokens-choose routing in index form.

    ``probs``: ``[G, S, E]`` gate probabilities (rows may sum to less than 1 when some experts are masked
    out). Returns ``top_idx``/``top_val``/``position``/``kept``, each ``[G, S, k]``: the chosen experts,
    their gate values, the slot each choice got in its expert's buffer, and whether it got one
    (``position < capacity``).
    """
    g, s, e = probs.shape
    top_val, top_idx = top_k(probs, k)  # [G, S, k]
    if renormalize:
        top_val = top_val / jnp.maximum(jnp.sum(top_val, axis=-1, keepdims=True), _EPS)
    if batch_priority and s <= PAIRWISE_PRIORITY_MAX and PAIRWISE_PRIORITY:
        return {"top_idx": top_idx, "top_val": top_val, **_priority_positions(top_val[..., 0], top_idx, e, capacity)}
    if batch_priority:
        order = jnp.argsort(-top_val[..., 0], axis=1, stable=True)  # [G, S], most confident first
        idx_o = jnp.take_along_axis(top_idx, order[..., None], axis=1)
    else:
        order, idx_o = None, top_idx
    onehot = jax.nn.one_hot(idx_o, e, dtype=jnp.int32)  # [G, S, k, E]
    # slot index: how many tokens took this expert before, counting all first choices before any second
    by_choice = onehot.transpose(0, 2, 1, 3).reshape(g, k * s, e)
    position = jnp.cumsum(by_choice, axis=1) - by_choice  # tokens already in the expert's buffer
    position = jnp.sum(position * by_choice, axis=-1).reshape(g, k, s).transpose(0, 2, 1)  # [G, S, k]
    if order is not None:  # back to token order
        inverse = jnp.zeros_like(order).at[jnp.arange(g)[:, None], order].set(jnp.arange(s, dtype=order.dtype))
        position = jnp.take_along_axis(position, inverse[..., None], axis=1)
    return {"top_idx": top_idx, "top_val": top_val, "position": position, "kept": position < capacity}


def slot_tensors(slots: dict, num_experts: int, capacity: int, dtype=jnp.float32) -> tuple[Array, Array]:
    """One-hot ``(dispatch, combine)`` tensors ``[G, S, E, C]`` from :func:`tokens_choose_slots`."""
    kept = slots["kept"]
    slot = jax.nn.one_hot(jnp.where(kept, slots["position"], capacity), capacity, dtype=dtype)  # dropped: 0
    expert = jax.nn.one_hot(slots["top_idx"], num_experts, dtype=dtype)
    dispatch = jnp.einsum("gske,gskc->gsec", expert, slot)
    combine = jnp.einsum("gske,gskc->gsec", expert * slots["top_val"][..., None].astype(dtype), slot)
    return dispatch, combine


def tokens_choose(probs: Array, k: int, capacity: int, *, batch_priority: bool = True,
                  renormalize: bool = False) -> tuple[Array, Array, dict]:
    """Top-k tokens-choose routing with a per-expert capacity; returns ``(dispatch, combine, slots)``."""
    slots = tokens_choose_slots(probs, k, capacity, batch_priority=batch_priority, renormalize=renormalize)
    dispatch, combine = slot_tensors(slots, probs.shape[-1], capacity, probs.dtype)
    return dispatch, combine, slots


def experts_choose_slots(probs: Array, capacity: int) -> dict:
    """Every expert takes its ``capacity`` highest-probability tokens of the group (index form).

    Returns ``token [G, E, C]`` (which token fills each slot) and ``weight [G, E, C]`` (its gate value).
    """
    weight, token = jax.lax.top_k(jnp.swapaxes(probs, 1, 2), capacity)
    return {"token": token, "weight": weight}


def experts_choose(probs: Array, capacity: int) -> tuple[Array, Array, dict]:
    """Experts-choose routing as ``(dispatch, combine, slots)`` tensors ``[G, S, E, C]``."""
    slots = experts_choose_slots(probs, capacity)
    onehot = jax.nn.one_hot(slots["token"], probs.shape[1], dtype=probs.dtype)  # [G, E, C, S]
    dispatch = jnp.transpose(onehot, (0, 3, 1, 2))
    return dispatch, dispatch * slots["weight"][:, None, :, :], slots


# --------------------------------------------------------------------------------------- aux losses
def cv_squared(x: Array) -> Array:
    """Squared coefficient of variation ``var(x) / mean(x)²`` (0 for a constant vector)."""
    x = x.astype(jnp.float32)
    return jnp.var(x) / (jnp.mean(x) ** 2 + _EPS)


def top_k_gates(probs: Array, k: int, renormalize: bool = False) -> Array:
    """Sparse gates ``G [..., E]``: each token's top-k probabilities in place, zeros elsewhere.

    ``probs [..., E]`` (a softmax over experts); with ``renormalize`` the kept probabilities are divided
    by their sum (Shazeer et al., 2017: ``G = softmax(KeepTopK(h, k))``).
    """
    e = probs.shape[-1]
    if e > 64 or k > 8:
        # the k-th largest value by a sort and ties taken lowest index first: jax.lax.top_k's choice, in
        # elementwise ops that a batch-sharded array keeps sharded (top_k itself would be all-gathered)
        kth = jnp.sort(probs, axis=-1)[..., -k:-k + 1 or None]
        above, tie = probs > kth, probs == kth
        room = k - jnp.sum(above, axis=-1, keepdims=True)
        keep = above | (tie & (jnp.cumsum(tie, axis=-1) <= room))
    else:  # the same choice by :func:`top_k`'s reductions (no sort)
        idx = top_k(probs, k)[1]
        keep = jnp.any(idx[..., None, :] == jnp.arange(e)[:, None], axis=-1)
    gates = jnp.where(keep, probs, 0.0)
    if renormalize:
        gates = gates / jnp.maximum(jnp.sum(gates, axis=-1, keepdims=True), _EPS)
    return gates


def importance_loss(gates: Array) -> Array:
    """``CV²(Σ_x G(x))`` over experts for gates ``[..., E]`` of every token (sparse or dense; module docs)."""
    return cv_squared(jnp.sum(gates.reshape(-1, gates.shape[-1]), axis=0))


def expected_load(clean_logits: Array, noisy_logits: Array, noise_std: float, k: int) -> Array:
    """Per token and expert, the probability that the expert stays in the noisy top-k (``[..., E]``).

    ``P(x, e) = Φ((clean_e − t_e) / σ)`` where ``t_e`` is the k-th largest *noisy* logit among the other
    experts: the (k+1)-th largest overall when ``e`` is in the noisy top-k, the k-th largest otherwise
    (Shazeer et al., 2017, Eqs. 8–9). With ``σ = 0`` (or ``k ≥ E``) it is the hard top-k indicator.
    """
    e = clean_logits.shape[-1]
    clean, noisy = clean_logits.astype(jnp.float32), noisy_logits.astype(jnp.float32)
    if noise_std <= 0 or k >= e:
        return jnp.sum(jax.nn.one_hot(top_k(noisy, k)[1], e), axis=-2)
    top = top_k(noisy, k + 1)[0]  # [..., k+1], descending
    kth, kplus1 = top[..., k - 1:k], top[..., k:k + 1]
    threshold = jnp.where(noisy >= kth, kplus1, kth)
    return jax.scipy.stats.norm.cdf((clean - threshold) / noise_std)


def load_loss(clean_logits: Array, noisy_logits: Array, noise_std: float, k: int) -> Array:
    """CV² over experts of the summed :func:`expected_load` (Shazeer et al., 2017, Eq. 10)."""
    e = clean_logits.shape[-1]
    return cv_squared(jnp.sum(expected_load(clean_logits, noisy_logits, noise_std, k).reshape(-1, e), axis=0))


def z_loss(logits: Array) -> Array:
    """Router z-loss: mean over tokens of ``logsumexp(logits)²``."""
    lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    return jnp.mean(jnp.square(lse))


def task_expert_joint(probs: Array, task_ids: Array, num_tasks: int) -> Array:
    """``P(t, e)``: the share of all tokens' gate mass that task ``t``'s tokens give expert ``e``.

    ``probs [B, S, E]`` (rows sum to 1), ``task_ids [B]``; the result sums to 1.
    """
    onehot = jax.nn.one_hot(task_ids, num_tasks, dtype=jnp.float32)
    mass = jnp.einsum("bse,bt->te", probs.astype(jnp.float32), onehot)
    return mass / jnp.maximum(jnp.sum(mass), _EPS)


def mutual_information_loss(probs: Array, task_ids: Array, num_tasks: int) -> Array:
    """``−I(T; E) = −Σ_{t,e} P(t,e)·log(P(t,e) / (P(t)·P(e)))`` (Mod-Squad's MI loss; minimise it)."""
    joint = task_expert_joint(probs, task_ids, num_tasks)
    p_t = jnp.sum(joint, axis=1, keepdims=True)
    p_e = jnp.sum(joint, axis=0, keepdims=True)
    mi = jnp.sum(joint * (jnp.log(joint + _EPS) - jnp.log(p_t * p_e + _EPS)))
    return -mi
