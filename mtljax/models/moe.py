"""Mixture-of-experts MLP layer with task-aware gates and expert parallelism over a device mesh.

``MoeMlp(x [B, S, D], task_ids [B] | None, train) -> (y [B, S, D], aux)``. Every expert is a
two-layer MLP ``W_o·gelu(W_i·x + b_i) + b_o``; the weights of all experts are stacked with the logical
axis ``exp`` first (``wi [E, D, H]``, ``wo [E, H, D]``), which the default rules map to the ``expert``
mesh axis.

Gates (:class:`Gate`)
    ``shared``: one linear gate (V-MoE); ``task``: one gate per task, chosen by each example's task id
    (M³ViT's per-task gates, Mod-Squad); ``task_conditioned``: one gate whose input is the token
    concatenated with ``MLP(onehot(task))`` (M³ViT's task-conditioned variant). In training the logits
    get Gaussian noise of std ``noise_std / E`` (V-MoE, M³ViT).

Routers (``router=``; see :mod:`mtljax.models.routing`)
    ``tokens_choose`` (top-k, capacity, batch-priority routing), ``experts_choose``, ``soft`` (Soft MoE:
    ``slots_per_expert`` slots per expert, dispatch softmax over tokens, combine softmax over slots).

Dispatch (``dispatch=``)
    ``einsum``: one-hot dispatch/combine tensors ``[G, S, E, C]`` and einsums, with capacity (tokens over
    capacity get nothing back, so the residual carries them unchanged); the TPU-friendly form, but its
    cost grows with the group size S. ``gather``: the same routing, capacity and drops, with slots
    filled by a gather and outputs returned by a gather (tokens choose) or scatter-add (experts choose):
    O(E·C·D) per group, the better choice on CPU and GPU. ``ragged``: dropless
    tokens-choose: token copies are sorted by expert and every expert multiplies its contiguous rows
    with ``jax.lax.ragged_dot`` (no capacity, nothing dropped; experts are not sharded in this mode).

Expert parallelism
    When the mesh in context (``jax.set_mesh``) has an ``expert`` axis of size > 1, the expert part runs
    under ``jax.shard_map``: each device builds its slots ``[E, G_local, C, D]`` from its own tokens,
    one ``all_to_all`` over ``expert`` sends every expert's slots to the device that holds that
    expert's weights, the experts run on ``[E/n, n·G_local, C, D]``, and a second ``all_to_all`` brings
    the outputs home, where they are combined. Expert weights are never gathered; with a ``model`` axis
    the expert hidden width is split over it too (one ``psum``). Groups are one example's tokens
    (``group_size`` examples), so the result does not depend on the mesh.

Auxiliary losses (``aux["losses"]``, already weighted): ``moe_importance``, ``moe_load``, ``moe_z``
(weights ``importance_weight``, ``load_weight``, ``z_loss_weight``) and, with task gates,
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
from jax.sharding import PartitionSpec as P

from mtljax.models import routing as rt

Dtype = Any
ROUTERS = ("tokens_choose", "experts_choose", "soft")
GATES = ("shared", "task", "task_conditioned")
DISPATCH = ("einsum", "gather", "ragged")
_expert_init = nn.initializers.xavier_uniform(batch_axis=(0,))


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
    def __call__(self, x, task_ids=None):
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


def mesh_axes(expert_axis: str = "expert"):
    """``(mesh, batch_axes, expert_axis | None, model_axis | None)`` of the mesh in context, or ``None``.

    ``batch_axes`` are the mesh axes the batch is split over (``data`` and ``expert``, as in the default
    rules); the expert and model axes are named only when they have more than one device.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    batch_axes = tuple(a for a in ("data", expert_axis) if a in mesh.axis_names and mesh.shape[a] > 1)
    ep = expert_axis if expert_axis in mesh.axis_names and mesh.shape[expert_axis] > 1 else None
    model = "model" if "model" in mesh.axis_names and mesh.shape["model"] > 1 else None
    if not batch_axes and model is None:
        return None
    return mesh, batch_axes, ep, model


def run_experts(slots, wi, bi, wo, bo, dtype, model_axis=None):
    """Experts on their slots: ``slots [E, ..., D] -> [E, ..., D]`` (leading expert axis)."""
    shape = slots.shape
    x = slots.reshape(shape[0], -1, shape[-1])  # one [rows, D] x [D, H] matmul per expert
    h = nn.gelu(jnp.einsum("erd,edh->erh", x, wi.astype(dtype)) + bi.astype(dtype)[:, None, :])
    out = jnp.einsum("erh,ehd->erd", h, wo.astype(dtype))
    if model_axis is not None:
        out = jax.lax.psum(out, model_axis)
    return (out + bo.astype(dtype)[:, None, :]).reshape(shape)


class EinsumDispatch:
    """Dispatch/combine with one-hot ``[G, S, E, C]`` tensors."""

    def __init__(self, dispatch, combine):
        self.d, self.c = dispatch, combine

    def dispatch(self, xg):
        return jnp.einsum("gsd,gsec->egcd", xg, self.d.astype(xg.dtype))

    def combine(self, out):
        return jnp.einsum("egcd,gsec->gsd", out, self.c.astype(out.dtype))


def _pad_rows(a):
    return jnp.concatenate([a, jnp.zeros((a.shape[0], 1, a.shape[2]), a.dtype)], axis=1)


def _take_rows(a, idx):
    """``a [G, R, D]`` rows ``idx [G, ...]`` -> ``[G, ..., D]``."""
    g = a.shape[0]
    return jnp.take_along_axis(a, idx.reshape(g, -1, 1), axis=1).reshape(*idx.shape, a.shape[-1])


@jax.custom_vjp
def _fill_slots(x, token, valid, flat):
    """``slots[g, q] = x[g, token[g, q]]`` for valid slots ``q`` (``[G, E·C, D]``)."""
    return _take_rows(x, token) * valid[..., None].astype(x.dtype)


def _fill_slots_fwd(x, token, valid, flat):
    return _fill_slots(x, token, valid, flat), (token, valid, flat)


def _fill_slots_bwd(res, g_slots):
    token, valid, flat = res
    # every token's gradient sits in the (at most k) slots its choices took: a gather, not a scatter-add
    dx = jnp.sum(_take_rows(_pad_rows(g_slots), flat), axis=2)
    return dx, None, None, None


_fill_slots.defvjp(_fill_slots_fwd, _fill_slots_bwd)


@jax.custom_vjp
def _read_slots(out, weight, flat, token, choice, valid):
    """``y[g, s] = Σ_j weight[g, s, j]·out[g, flat[g, s, j]]`` (``out [G, E·C, D]``, dropped → 0)."""
    return jnp.einsum("gskd,gsk->gsd", _take_rows(_pad_rows(out), flat), weight.astype(out.dtype))


def _read_slots_fwd(out, weight, flat, token, choice, valid):
    return _read_slots(out, weight, flat, token, choice, valid), (out, weight, flat, token, choice, valid)


def _read_slots_bwd(res, g_y):
    out, weight, flat, token, choice, valid = res
    g = weight.shape[0]
    slot_w = jnp.take_along_axis(weight.reshape(g, -1), choice, axis=1) * valid  # the weight each slot returns with
    d_out = _take_rows(g_y, token) * slot_w[..., None].astype(g_y.dtype)
    d_w = jnp.einsum("gskd,gsd->gsk", _take_rows(_pad_rows(out), flat), g_y).astype(weight.dtype)
    return d_out, d_w, None, None, None, None


_read_slots.defvjp(_read_slots_fwd, _read_slots_bwd)


class GatherDispatch:
    """Dispatch by gathering each slot's token, combine by gathering (tokens choose) or scatter-add.

    ``token [G, E, C]``/``valid [G, E, C]``: which token fills each slot. Tokens choose also gives
    ``flat [G, S, k]`` (each choice's slot ``e·C + c``, ``E·C`` when dropped), ``choice [G, E, C]`` (which
    ``s·k + j`` fills each slot) and ``weight [G, S, k]``; both directions, and their gradients, are then
    gathers. Experts choose gives ``weight [G, E, C]`` per slot and combines by scatter-add.
    """

    def __init__(self, token, valid, weight, flat=None, choice=None, num_tokens=None):
        self.token, self.valid, self.weight, self.flat, self.choice = token, valid, weight, flat, choice
        self.num_tokens = num_tokens

    def dispatch(self, xg):
        g, e, c = self.token.shape
        if self.flat is not None:
            x = _fill_slots(xg, self.token.reshape(g, e * c), self.valid.reshape(g, e * c), self.flat)
        else:
            x = _take_rows(xg, self.token.reshape(g, e * c))
        return x.reshape(g, e, c, -1).transpose(1, 0, 2, 3)

    def combine(self, out):
        e, g, c, d = out.shape
        out = out.transpose(1, 0, 2, 3).reshape(g, e * c, d)
        if self.flat is not None:  # tokens choose: every token reads its k slots
            return _read_slots(out, self.weight, self.flat, self.token.reshape(g, e * c),
                               self.choice.reshape(g, e * c), self.valid.reshape(g, e * c))
        w = self.weight.astype(out.dtype)
        add = lambda o, t, ww: jnp.zeros((self.num_tokens, d), o.dtype).at[t].add(o * ww[:, None])  # noqa: E731
        return jax.vmap(add)(out, self.token.reshape(g, e * c), w.reshape(g, e * c))


def tokens_choose_gather(slots: dict, num_experts: int, capacity: int) -> GatherDispatch:
    """A :class:`GatherDispatch` from :func:`~mtljax.models.routing.tokens_choose_slots`."""
    g, s, k = slots["top_idx"].shape
    ec = num_experts * capacity
    flat = jnp.where(slots["kept"], slots["top_idx"] * capacity + slots["position"], ec)
    rows = jnp.arange(g)[:, None]
    where = flat.reshape(g, s * k)
    choice = jnp.zeros((g, ec + 1), jnp.int32).at[rows, where].set(jnp.arange(s * k, dtype=jnp.int32)[None, :])
    valid = jnp.zeros((g, ec + 1), bool).at[rows, where].set(True)[:, :ec]
    choice = jnp.where(valid, choice[:, :ec], 0)
    weight = jnp.where(slots["kept"], slots["top_val"], 0.0)
    shape = (g, num_experts, capacity)
    return GatherDispatch((choice // k).reshape(shape), valid.reshape(shape), weight, flat, choice.reshape(shape))


def experts_choose_gather(slots: dict, num_tokens: int) -> GatherDispatch:
    return GatherDispatch(slots["token"], jnp.ones(slots["token"].shape, bool), slots["weight"],
                          num_tokens=num_tokens)


def grouped_moe(route, xg, pg, extra, wi, bi, wo, bo, *, dtype, expert_axis: str = "expert"):
    """Route, dispatch, run the experts and combine, for grouped tokens ``xg [G, S, D]``.

    ``route(pg, extra) -> (dispatcher, stats)`` works group by group (``dispatcher``: an
    :class:`EinsumDispatch` or :class:`GatherDispatch`; ``stats``: arrays with a leading group axis). On
    a mesh, everything runs under ``jax.shard_map`` on each device's own groups (routing never gathers
    tokens across devices); with an ``expert`` axis the slots travel to their experts' devices and back
    with two ``all_to_all``s, and with a ``model`` axis the expert hidden width is split (one ``psum``).
    Returns ``(y [G, S, D], stats)``.
    """

    def body(xg, pg, extra, wi, bi, wo, bo, ep=None, model=None):
        disp, stats = route(pg, extra)
        slots = disp.dispatch(xg)  # [E, G, C, D]
        if ep is not None:
            slots = jax.lax.all_to_all(slots, ep, 0, 1, tiled=True)  # [E/n, n·G, C, D]
        out = run_experts(slots, wi, bi, wo, bo, dtype, model)
        if ep is not None:
            out = jax.lax.all_to_all(out, ep, 1, 0, tiled=True)  # [E, G, C, D]
        return disp.combine(out), stats

    axes = mesh_axes(expert_axis)
    shards = 1
    if axes is not None:
        for a in axes[1]:
            shards *= axes[0].shape[a]
    if axes is None or xg.shape[0] % shards:
        return body(xg, pg, extra, wi, bi, wo, bo)
    mesh, batch_axes, ep, model = axes
    if ep is not None and wi.shape[0] % mesh.shape[ep]:
        raise ValueError(f"config.model.moe.num_experts={wi.shape[0]} is not divisible by the "
                         f"{mesh.shape[ep]}-way {ep!r} mesh axis")
    tok = P(batch_axes or None)
    specs = (tok, tok, jax.tree.map(lambda _: tok, extra), P(ep, None, model), P(ep, model), P(ep, model, None),
             P(ep, None))
    _, stats_shape = jax.eval_shape(body, xg, pg, extra, wi, bi, wo, bo)
    return jax.shard_map(lambda *a: body(*a, ep=ep, model=model), mesh=mesh, in_specs=specs,
                         out_specs=(tok, jax.tree.map(lambda _: tok, stats_shape)))(xg, pg, extra, wi, bi, wo, bo)


def ragged_moe(x, top_idx, top_val, wi, bi, wo, bo, *, dtype):
    """Dropless top-k: ``x [N, D]``, choices ``[N, k]`` -> ``[N, D]`` through ``jax.lax.ragged_dot``."""
    n, k = top_idx.shape
    e = wi.shape[0]
    flat = top_idx.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    token = order // k
    expert = flat[order]
    sizes = jnp.bincount(flat, length=e).astype(jnp.int32)
    xs = x[token].astype(dtype)
    h = jax.lax.ragged_dot(xs, wi.astype(dtype), sizes) + bi.astype(dtype)[expert]
    out = jax.lax.ragged_dot(nn.gelu(h), wo.astype(dtype), sizes) + bo.astype(dtype)[expert]
    weight = top_val.reshape(-1)[order].astype(dtype)
    return jnp.zeros((n, x.shape[-1]), dtype).at[token].add(out * weight[:, None])


def sharded_ragged_moe(x, probs, k: int, renormalize: bool, wi, bi, wo, bo, *, dtype, expert_axis: str = "expert"):
    """Dropless top-k on every device's own tokens (``x [B, S, D]``, ``probs [B, S, E]``); experts replicated.

    Returns ``(y [B, S, D], top_idx [B, S, k])``.
    """

    def fn(x, probs, *w):
        top_val, top_idx = jax.lax.top_k(probs, k)
        if renormalize:
            top_val = top_val / jnp.sum(top_val, axis=-1, keepdims=True)
        y = ragged_moe(x.reshape(-1, x.shape[-1]), top_idx.reshape(-1, k), top_val.reshape(-1, k), *w, dtype=dtype)
        return y.reshape(x.shape), top_idx

    axes = mesh_axes(expert_axis)
    if axes is None:
        return fn(x, probs, wi, bi, wo, bo)
    mesh, batch_axes, ep, model = axes
    if ep is not None or model is not None:
        raise ValueError("config.model.moe.dispatch='ragged' keeps every expert whole on every device; "
                         "use dispatch 'einsum' with config.mesh.shape.expert or .model > 1")
    shards = 1
    for a in batch_axes:
        shards *= mesh.shape[a]
    if x.shape[0] % shards:
        return fn(x, probs, wi, bi, wo, bo)
    tok = P(batch_axes)
    return jax.shard_map(fn, mesh=mesh, in_specs=(tok, tok, P(), P(), P(), P()), out_specs=(tok, tok))(
        x, probs, wi, bi, wo, bo)


class MoeMlp(nn.Module):
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
    group_size: int = 1  # examples per routing group
    num_tasks: int = 1
    gate: str = "shared"
    gate_zero_init: bool = False
    experts_kept: Sequence[int] | None = None
    importance_weight: float = 0.0
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
        if self.dispatch == "ragged" and self.router != "tokens_choose":
            raise ValueError("config.model.moe.dispatch='ragged' (dropless) needs router 'tokens_choose'")

    @nn.compact
    def __call__(self, x, task_ids=None, *, train: bool = False):
        self._check()
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
        per_group = math.gcd(b, self.group_size)
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
            losses["moe_importance"] = self.importance_weight * rt.importance_loss(probs_full)
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
                disp = tokens_choose_gather(sl, e, cap) if gather else EinsumDispatch(*rt.slot_tensors(sl, e, cap))
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


def merge_aux(*auxes) -> dict:
    """Sum the losses and average the metrics of several layers' aux dicts."""
    losses, metrics, counts = {}, {}, {}
    for aux in auxes:
        for k, v in aux.get("losses", {}).items():
            losses[k] = losses.get(k, 0.0) + v
        for k, v in aux.get("metrics", {}).items():
            metrics[k] = metrics.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
    return {"losses": losses, "metrics": {k: v / counts[k] for k, v in metrics.items()}}
