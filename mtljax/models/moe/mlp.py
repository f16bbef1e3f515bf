"""Mixture-of-experts MLP layer with task-aware gates and expert parallelism over a device mesh.

``MoeMlp(...)(x [B, S, D], ctx) -> (y [B, S, D], aux)``, a ViT ``mlp`` plug (:mod:`mtljax.models.plugs`)
that reads ``ctx.task_ids [B]`` (task gates), ``ctx.train`` (gate noise) and ``ctx.group_size``. Every
expert is a two-layer MLP ``W_o·gelu(W_i·x + b_i) + b_o``; the weights of all experts are stacked with the logical
axis ``exp`` first (``wi [E, D, H]``, ``wo [E, H, D]``), which the default rules map to the ``expert``
mesh axis.

Gates (:class:`~mtljax.models.moe.gate.Gate`)
    ``shared``: one linear gate (V-MoE); ``task``: one gate per task, chosen by each example's task id
    (M³ViT's per-task gates, Mod-Squad); ``task_conditioned``: one gate whose input is the token
    concatenated with ``MLP(onehot(task))`` (M³ViT's task-conditioned variant). In training the logits
    get Gaussian noise of std ``noise_std / E`` (V-MoE, M³ViT).

Routers (``router=``; see :mod:`mtljax.models.moe.routing`)
    ``tokens_choose`` (top-k, capacity, batch-priority routing), ``experts_choose``, ``soft`` (Soft MoE:
    ``slots_per_expert`` slots per expert, dispatch softmax over tokens, combine softmax over slots).

Dispatch (``dispatch=``)
    ``einsum``: one-hot dispatch/combine tensors ``[G, S, E, C]`` and einsums, with capacity (tokens over
    capacity get nothing back, so the residual carries them unchanged); the TPU-friendly form, but its
    cost grows with the group size S. ``gather``: the same routing, capacity and drops, with slots
    filled by a gather and outputs returned by a gather (tokens choose) or scatter-add (experts choose):
    O(E·C·D) per group, the better choice on CPU and GPU. Tokens choose with ``pack_slots`` packs
    every expert's filled slots first and runs the experts only on the row blocks that hold tokens, so
    most empty slots of a capacity factor > 1 cost no matmuls (same slots, same outputs; without an
    ``expert`` or ``model`` mesh axis). Off by default: the row-block loops have dynamic trip counts,
    which XLA's cost analysis cannot see, so compiled FLOP counts (``mtljax.cost``) would miss them. ``ragged``: dropless
    tokens-choose: token copies are sorted by expert and every expert multiplies its contiguous rows
    with ``jax.lax.ragged_dot`` (no capacity, nothing dropped; experts are not sharded in this mode).

Expert parallelism (:mod:`mtljax.models.moe.dispatch`)
    When the mesh in context (``jax.set_mesh``) has an ``expert`` axis of size > 1, the expert part runs
    under ``jax.shard_map``: each device builds its slots ``[E, G_local, C, D]`` from its own tokens,
    one ``all_to_all`` over ``expert`` sends every expert's slots to the device that holds that
    expert's weights, the experts run on ``[E/n, n·G_local, C, D]``, and a second ``all_to_all`` brings
    the outputs home, where they are combined. Expert weights are never gathered; with a ``model`` axis
    the expert hidden width is split over it too (one ``psum``). Groups are one example's tokens
    (``group_size`` examples), so the result does not depend on the mesh.

Auxiliary losses (``aux["losses"]``, already weighted): ``moe_importance``, ``moe_load``, ``moe_z``
(weights ``importance_weight``, ``load_weight``, ``z_loss_weight``; the importance sums the sparse
top-k gates, Shazeer et al. and M³ViT, or with ``importance='dense'`` the full softmax, V-MoE: see
:mod:`~mtljax.models.moe.routing`) and, with task gates,
``moe_mutual_info`` (``mi_weight``, Mod-Squad). Metrics: ``moe_dropped`` (share of token choices that
found no slot). Per-task expert usage (selection counts ``[T, E]``) is ``sow``-n into the
``intermediates`` collection as ``usage`` for routing heatmaps.

Sub-models: ``experts_kept`` lists which experts of the full layer this layer still has (Mod-Squad
extraction). The gate keeps all ``num_experts`` outputs, so the probabilities and the top-k choice are
those of the full layer whenever the chosen experts were kept; ``capacity`` then pins the full layer's
slot count.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.moe import routing as rt
from mtljax.models.moe.dispatch import (EinsumDispatch, experts_choose_gather, grouped_moe, packed_block,
                                        sharded_ragged_moe, tokens_choose_gather)
from mtljax.models.moe.gate import Gate
from mtljax.models.plugs import Context

Dtype = Any
ROUTERS = ("tokens_choose", "experts_choose", "soft")
DISPATCH = ("einsum", "gather", "ragged")
IMPORTANCE = ("sparse", "dense")
_expert_init = nn.initializers.xavier_uniform(batch_axis=(0,))


class MoeMlp(nn.Module):
    """MoE MLP plug ``(x [B, S, D], ctx) -> (y [B, S, D], aux)``: routers, dispatch and losses as in the
    module docstring; ``expert_dim`` is each expert's hidden width, ``k`` the experts per token."""

    num_experts: int
    expert_dim: int
    router: str = "tokens_choose"
    k: int = 2
    capacity_factor: float = 1.25
    capacity: int = 0  # slots per expert and group; 0 = from capacity_factor
    batch_priority: bool = True
    renormalize: bool = False
    noise_std: float = 1.0  # gate noise std in training = noise_std / num_experts
    slots_per_expert: int = 1  # soft router
    dispatch: str = "einsum"
    pack_slots: bool = False  # gather + tokens choose: skip most empty slots (dispatch.run_packed_experts)
    group_size: int = 1  # examples per routing group
    num_tasks: int = 1
    gate: str = "shared"
    gate_zero_init: bool = False
    experts_kept: Sequence[int] | None = None
    importance_weight: float = 0.0
    importance: str = "sparse"  # sum of the top-k gates (Shazeer et al., M³ViT) | "dense" softmax (V-MoE)
    load_weight: float = 0.0
    z_loss_weight: float = 0.0
    mi_weight: float = 0.0
    expert_axis: str = "expert"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _check(self):
        if self.router not in ROUTERS:
            raise ValueError(f"config.model.moe.router: unknown router {self.router!r}; choose from {ROUTERS}")
        if self.dispatch not in DISPATCH:
            raise ValueError(f"config.model.moe.dispatch: unknown {self.dispatch!r}; choose from {DISPATCH}")
        if self.router == "tokens_choose" and not 1 <= self.k <= self.num_experts:
            raise ValueError(f"config.model.moe.top_k={self.k} must be in [1, num_experts={self.num_experts}]")
        if self.router != "soft" and not self.capacity_factor > 0:
            raise ValueError(f"config.model.moe.capacity_factor must be > 0, got {self.capacity_factor}")
        if self.importance not in IMPORTANCE:
            raise ValueError(f"MoeMlp.importance: unknown {self.importance!r}; choose from {IMPORTANCE}")
        if self.dispatch == "ragged" and self.router != "tokens_choose":
            raise ValueError("config.model.moe.dispatch='ragged' (dropless) needs router 'tokens_choose'")

    @nn.compact
    def __call__(self, x: jax.Array, ctx: Context = Context()) -> tuple[jax.Array, dict]:
        """``ctx.group_size`` (examples per routing group) overrides the attribute for this call; it must
        divide the batch (a task-passes model uses it to keep every group within one task's pass)."""
        self._check()
        task_ids, train, group_size = ctx.task_ids, ctx.train, ctx.group_size
        b, s, d = x.shape
        kept = tuple(self.experts_kept) if self.experts_kept is not None else None
        e = len(kept) if kept is not None else self.num_experts
        kw = dict(param_dtype=self.param_dtype)
        wi = self.param("wi", nn.with_logical_partitioning(_expert_init, ("exp", "embed", "mlp")), (e, d, self.expert_dim), self.param_dtype)
        bi = self.param("bi", nn.with_logical_partitioning(nn.initializers.zeros, ("exp", "mlp")), (e, self.expert_dim), self.param_dtype)
        wo = self.param("wo", nn.with_logical_partitioning(_expert_init, ("exp", "mlp", "embed")), (e, self.expert_dim, d), self.param_dtype)
        bo = self.param("bo", nn.with_logical_partitioning(nn.initializers.zeros, ("exp", "embed")), (e, d), self.param_dtype)
        soft = self.router == "soft"
        n_out = self.num_experts * (self.slots_per_expert if soft else 1)
        logits = Gate(n_out, self.gate, self.num_tasks, self.gate_zero_init, normalize=soft, name="gate", **kw)(x, task_ids)
        losses, metrics = {}, {}
        noisy = logits
        sigma = self.noise_std / self.num_experts
        if train and sigma > 0 and not soft:
            noisy = logits + sigma * jax.random.normal(self.make_rng("dropout"), logits.shape, logits.dtype)
        if self.z_loss_weight:
            losses["moe_z"] = self.z_loss_weight * rt.z_loss(noisy)
        if self.group_size < 1:
            raise ValueError(f"config.model.moe.group_size must be >= 1, got {self.group_size}")
        # a batch that group_size does not divide (initialisation, a single image) is routed in groups of
        # gcd(batch, group_size) examples; training batches are checked to divide by the config
        per_group = math.gcd(b, self.group_size) if group_size is None else group_size
        if b % per_group:
            raise ValueError(f"group_size={per_group} does not divide the batch of {b} examples")
        groups, gs = b // per_group, per_group * s
        xg = x.astype(self.dtype).reshape(groups, gs, d)

        if soft:
            sl = self.slots_per_expert

            def route(lg, _):
                lg = lg.reshape(*lg.shape[:2], self.num_experts, sl)
                combine = jax.nn.softmax(lg.reshape(*lg.shape[:2], -1), axis=-1).reshape(lg.shape)
                dispatch = jax.nn.softmax(lg, axis=1)
                return EinsumDispatch(dispatch, combine), {"chosen": jnp.sum(dispatch, axis=-1)}

            y, stats = grouped_moe(route, xg, noisy.reshape(groups, gs, -1), {}, wi, bi, wo, bo,
                                   dtype=self.dtype, expert_axis=self.expert_axis)
            self._sow_usage(stats["chosen"].reshape(b, s, -1), task_ids)
            return y.reshape(b, s, d).astype(x.dtype), {"losses": losses, "metrics": metrics}

        probs_full = jax.nn.softmax(noisy, axis=-1)
        probs = probs_full[..., list(kept)] if kept is not None else probs_full
        if self.importance_weight:
            gates = probs_full if self.importance == "dense" else rt.top_k_gates(probs_full, self.k, self.renormalize)
            losses["moe_importance"] = self.importance_weight * rt.importance_loss(gates)
        if self.mi_weight and task_ids is not None and self.num_tasks > 1:
            losses["moe_mutual_info"] = self.mi_weight * rt.mutual_information_loss(probs_full, task_ids, self.num_tasks)
        want_load = bool(self.load_weight) and self.router == "tokens_choose"
        load_sigma = sigma if train else 0.0

        if self.dispatch == "ragged":
            y, top_idx = sharded_ragged_moe(x.astype(self.dtype), probs, self.k, self.renormalize, wi, bi, wo, bo,
                                            dtype=self.dtype, expert_axis=self.expert_axis)
            if want_load:
                losses["moe_load"] = self.load_weight * rt.cv_squared(
                    jnp.sum(rt.expected_load(logits, noisy, load_sigma, self.k).reshape(-1, e), axis=0))
            self._sow_usage(jax.nn.one_hot(top_idx, e).sum(-2), task_ids)
            metrics["moe_dropped"] = jnp.zeros((), jnp.float32)
            return y.astype(x.dtype), {"losses": losses, "metrics": metrics}

        k, router = self.k, self.router
        if router == "tokens_choose":
            cap = self.capacity or rt.tokens_choose_capacity(k, gs, self.num_experts, self.capacity_factor)
        else:
            cap = self.capacity or rt.experts_choose_capacity(gs, self.num_experts, self.capacity_factor)

        gather = self.dispatch == "gather"

        def route(pg, extra):
            if router == "tokens_choose":
                sl = rt.tokens_choose_slots(pg, k, cap, batch_priority=self.batch_priority,
                                            renormalize=self.renormalize)
                block = packed_block(d, self.expert_dim) if self.pack_slots else 0
                disp = tokens_choose_gather(sl, e, cap, block) if gather else EinsumDispatch(*rt.slot_tensors(sl, e, cap))
                stats = {"chosen": jax.nn.one_hot(sl["top_idx"], e).sum(-2),
                         "kept": jnp.mean(sl["kept"].astype(jnp.float32), axis=(1, 2))}
            else:
                sl = rt.experts_choose_slots(pg, cap)
                chosen = jnp.sum(jax.nn.one_hot(sl["token"], pg.shape[1]), axis=2).transpose(0, 2, 1)  # [G, S, E]
                disp = experts_choose_gather(sl, pg.shape[1]) if gather else EinsumDispatch(*rt.experts_choose(pg, cap)[:2])
                stats = {"chosen": chosen, "kept": jnp.mean((jnp.sum(chosen, -1) > 0).astype(jnp.float32), axis=1)}
            if "clean" in extra:  # per-group expected load (the top-k over experts stays on the device)
                stats["load"] = jnp.sum(rt.expected_load(extra["clean"], extra["noisy"], load_sigma, k), axis=1)
            return disp, stats

        extra = {}
        if want_load:
            extra = {"clean": logits.reshape(groups, gs, -1), "noisy": noisy.reshape(groups, gs, -1)}
        y, stats = grouped_moe(route, xg, probs.reshape(groups, gs, e), extra, wi, bi, wo, bo, dtype=self.dtype,
                               expert_axis=self.expert_axis)
        if want_load:
            losses["moe_load"] = self.load_weight * rt.cv_squared(jnp.sum(stats["load"], axis=0))
        metrics["moe_dropped"] = 1.0 - jnp.mean(stats["kept"])
        self._sow_usage(stats["chosen"].reshape(b, s, e), task_ids)
        return y.reshape(b, s, d).astype(x.dtype), {"losses": losses, "metrics": metrics}

    def _sow_usage(self, chosen, task_ids):
        """Per-task expert selection counts ``[T, E]`` (for routing heatmaps; a no-op unless collected)."""
        tid = jnp.zeros((chosen.shape[0],), jnp.int32) if task_ids is None else task_ids
        onehot = jax.nn.one_hot(tid, max(self.num_tasks, 1), dtype=jnp.float32)
        self.sow("intermediates", "usage", jnp.einsum("bse,bt->te", chosen.astype(jnp.float32), onehot))
