"""How routed tokens reach their experts and come back: on one device, or across a device mesh.

A router (:mod:`mtljax.models.moe.routing`) decides which token fills which slot of which expert; a
*dispatcher* moves the tokens: :class:`EinsumDispatch` multiplies by one-hot ``[G, S, E, C]`` tensors
(the TPU-friendly form); :class:`TokensChooseGather` gathers each slot's token straight into the
expert-major buffer and each token's outputs back, with gradients that are gathers too;
:class:`GatherDispatch` (experts choose) gathers the slots and scatter-adds the outputs back.
:func:`grouped_moe` runs route → dispatch → experts → combine, under ``jax.shard_map`` when a mesh is
in context: every device routes its own groups, and with an ``expert`` axis the slots travel to the
devices that hold their experts and back by two ``all_to_all``s (expert weights are never gathered).
:func:`sharded_ragged_moe` is the dropless path through ``jax.lax.ragged_dot``.
"""

from __future__ import annotations

import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mtljax.models.layers import gelu
from mtljax.models.moe.routing import top_k


def mesh_axes(expert_axis: str = "expert") -> tuple | None:
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


def run_experts(slots: jax.Array, wi: jax.Array, bi: jax.Array, wo: jax.Array, bo: jax.Array, dtype,
                model_axis: str | None = None) -> jax.Array:
    """Experts on their slots: ``slots [E, ..., D] -> [E, ..., D]`` (leading expert axis)."""
    shape = slots.shape
    x = slots.reshape(shape[0], -1, shape[-1])  # one [rows, D] x [D, H] matmul per expert
    h = gelu(jnp.einsum("erd,edh->erh", x, wi.astype(dtype)) + bi.astype(dtype)[:, None, :])
    out = jnp.einsum("erh,ehd->erd", h, wo.astype(dtype))
    if model_axis is not None:
        out = jax.lax.psum(out, model_axis)
    return (out + bo.astype(dtype)[:, None, :]).reshape(shape)


HEAD_SHARE = 0.8  # packed slots: the first HEAD_SHARE·(G·S·k/E) rows of every expert run as one batched matmul


def packed_block(width: int, hidden: int) -> int:
    """Rows per block of :func:`run_packed_experts`: about 2^16 floats of rows in and hidden, 32 to 1024."""
    b = 1 << max(0, round(math.log2((1 << 16) / max(1, width + hidden))))
    return max(32, min(1024, b))


def run_packed_experts(slots: jax.Array, counts: jax.Array, wi, bi, wo, bo, block: int) -> jax.Array:
    """Experts on packed slots: expert ``e``'s filled rows are ``slots[e, :counts[e]]`` (``[E, R, D]``).

    Only the ``ceil(counts[e] / block)`` row blocks that hold tokens are computed (a loop with a dynamic
    trip count per expert; ``R`` a multiple of ``block``), so the empty slots a capacity factor > 1 leaves
    cost nothing; rows past ``counts[e]`` come out as garbage or zeros and must not be read (the combine
    reads only filled slots). Weights already in the compute dtype; gradients by :func:`jax.custom_vjp`,
    the same row-block loops backwards (weight gradients summed block by block).
    """
    return _packed(slots, counts, wi, bi, wo, bo, block)


def _n_blocks(count, block):
    return (count + block - 1) // block


@partial(jax.custom_vjp, nondiff_argnums=(6,))
def _packed(x, counts, wi, bi, wo, bo, block):
    return _packed_forward(x, counts, wi, bi, wo, bo, block)[0]


def _packed_forward(x, counts, wi, bi, wo, bo, block):
    e, r, d = x.shape
    ys, hs = [], []
    for i in range(e):
        def step(b, carry, i=i):
            y, h = carry
            xb = jax.lax.dynamic_slice_in_dim(x[i], b * block, block)
            hb = xb @ wi[i] + bi[i]
            yb = nn.gelu(hb) @ wo[i] + bo[i]
            return (jax.lax.dynamic_update_slice_in_dim(y, yb, b * block, 0),
                    jax.lax.dynamic_update_slice_in_dim(h, hb, b * block, 0))

        y, h = jax.lax.fori_loop(0, _n_blocks(counts[i], block), step,
                                 (jnp.zeros((r, d), x.dtype), jnp.zeros((r, wi.shape[-1]), x.dtype)))
        ys.append(y)
        hs.append(h)
    return jnp.stack(ys), jnp.stack(hs)


def _packed_fwd(x, counts, wi, bi, wo, bo, block):
    y, h = _packed_forward(x, counts, wi, bi, wo, bo, block)
    return y, (x, counts, wi, wo, h)


def _packed_bwd(block, res, gy):
    x, counts, wi, wo, h = res
    e, r, d = x.shape
    hid = wi.shape[-1]
    grads = []
    for i in range(e):
        def step(b, carry, i=i):
            dx, dwi, dbi, dwo, dbo = carry
            sl = lambda a: jax.lax.dynamic_slice_in_dim(a[i], b * block, block)  # noqa: E731
            xb, hb, gb = sl(x), sl(h), sl(gy)
            ab, gelu_vjp = jax.vjp(nn.gelu, hb)
            dhb = gelu_vjp(gb @ wo[i].T)[0]
            return (jax.lax.dynamic_update_slice_in_dim(dx, dhb @ wi[i].T, b * block, 0),
                    dwi + xb.T @ dhb, dbi + jnp.sum(dhb, axis=0), dwo + ab.T @ gb, dbo + jnp.sum(gb, axis=0))

        zeros = (jnp.zeros((r, d), x.dtype), jnp.zeros((d, hid), x.dtype), jnp.zeros((hid,), x.dtype),
                 jnp.zeros((hid, d), x.dtype), jnp.zeros((d,), x.dtype))
        grads.append(jax.lax.fori_loop(0, _n_blocks(counts[i], block), step, zeros))
    dx, dwi, dbi, dwo, dbo = (jnp.stack(t) for t in zip(*grads))
    return dx, None, dwi, dbi, dwo, dbo


_packed.defvjp(_packed_fwd, _packed_bwd)


class EinsumDispatch:
    """Dispatch/combine with one-hot ``[G, S, E, C]`` tensors."""

    def __init__(self, dispatch, combine):
        self.d, self.c = dispatch, combine

    def dispatch(self, xg):
        return jnp.einsum("gsd,gsec->egcd", xg, self.d.astype(xg.dtype))

    def combine(self, out):
        return jnp.einsum("egcd,gsec->gsd", out, self.c.astype(out.dtype))


def _take_rows(a, idx):
    """``a [G, R, D]`` rows ``idx [G, ...]`` -> ``[G, ..., D]``."""
    g = a.shape[0]
    return jnp.take_along_axis(a, idx.reshape(g, -1, 1), axis=1).reshape(*idx.shape, a.shape[-1])


class GatherDispatch:
    """Experts-choose dispatch by gathering each slot's token, combine by scatter-add.

    ``token [G, E, C]``: which token fills each slot; ``weight [G, E, C]``: its gate value.
    """

    def __init__(self, token, weight, num_tokens):
        self.token, self.weight, self.num_tokens = token, weight, num_tokens

    def dispatch(self, xg):
        g, e, c = self.token.shape
        return _take_rows(xg, self.token.reshape(g, e * c)).reshape(g, e, c, -1).transpose(1, 0, 2, 3)

    def combine(self, out):
        e, g, c, d = out.shape
        out = out.transpose(1, 0, 2, 3).reshape(g, e * c, d)
        w = self.weight.astype(out.dtype)
        add = lambda o, t, ww: jnp.zeros((self.num_tokens, d), o.dtype).at[t].add(o * ww[:, None])  # noqa: E731
        return jax.vmap(add)(out, self.token.reshape(g, e * c), w.reshape(g, e * c))


def _rows(a, idx):
    """Rows ``idx [...]`` (all in range) of ``a [R, D]`` -> ``[..., D]``."""
    return a.at[idx.reshape(-1)].get(mode="promise_in_bounds").reshape(*idx.shape, a.shape[-1])


@jax.custom_vjp
def _gather_slots(x, token, valid, where, kept):
    """``slots[q] = x[token[q]]`` for valid slots ``q``, else 0 (``x [N, D]`` -> ``[Q, D]``)."""
    return jnp.where(valid[:, None], _rows(x, token), jnp.zeros((), x.dtype))


def _gather_slots_fwd(x, token, valid, where, kept):
    return _gather_slots(x, token, valid, where, kept), (where, kept)


def _gather_slots_bwd(res, g_slots):
    where, kept = res
    # a token's gradient sits in the (at most k) slots its choices took: a gather, not a scatter-add
    dx = sum(jnp.where(kept[:, j, None], _rows(g_slots, where[:, j]), jnp.zeros((), g_slots.dtype))
             for j in range(where.shape[1]))
    return dx, None, None, None, None


_gather_slots.defvjp(_gather_slots_fwd, _gather_slots_bwd)


@jax.custom_vjp
def _combine_slots(out, weight, where, kept, token, choice, valid):
    """``y[t] = Σ_j weight[t, j]·out[where[t, j]]`` over kept choices (``out [Q, D]`` -> ``[N, D]``)."""
    w = weight.astype(out.dtype)
    return sum(jnp.where(kept[:, j, None], w[:, j, None] * _rows(out, where[:, j]), jnp.zeros((), out.dtype))
               for j in range(where.shape[1]))


def _combine_slots_fwd(out, weight, where, kept, token, choice, valid):
    return _combine_slots(out, weight, where, kept, token, choice, valid), (out, weight, where, kept, token, choice,
                                                                             valid)


def _combine_slots_bwd(res, g_y):
    out, weight, where, kept, token, choice, valid = res
    slot_w = _rows(weight.reshape(-1, 1), choice)[:, 0].astype(g_y.dtype)  # the weight each slot returns with
    d_out = jnp.where(valid[:, None], _rows(g_y, token) * slot_w[:, None], jnp.zeros((), g_y.dtype))
    d_w = jnp.stack([jnp.where(kept[:, j], jnp.sum(_rows(out, where[:, j]) * g_y, axis=-1), 0)
                     for j in range(where.shape[1])], axis=1).astype(weight.dtype)
    return d_out, d_w, None, None, None, None, None


_combine_slots.defvjp(_combine_slots_fwd, _combine_slots_bwd)


class TokensChooseGather:
    """Tokens-choose dispatch and combine by row gathers in the expert-major slot layout ``[E, G, C]``.

    Indices are global over the ``G·S`` tokens and the ``E·G·C`` slots, so the slot buffer comes out of
    one gather already expert-major (no transpose) and goes back by one gather per choice; the gradients
    of both are gathers too. ``where [G·S, k]``: each choice's slot (0 when dropped, masked by ``kept``);
    ``token``/``choice``/``valid [E·G·C]``: the token, the choice ``t·k + j`` and whether the slot is
    filled. Packed (``counts`` given, :func:`tokens_choose_gather`): the buffer is ``[E, R]``, each
    expert's filled slots first.
    """

    def __init__(self, where, kept, weight, token, choice, valid, shape, num_groups, counts=None, block=0):
        self.where, self.kept, self.weight = where, kept, weight
        self.token, self.choice, self.valid, self.shape = token, choice, valid, shape
        self.num_groups, self.counts, self.block = num_groups, counts, block

    def dispatch(self, xg):
        g, s, d = xg.shape
        slots = _gather_slots(xg.reshape(g * s, d), self.token, self.valid, self.where, self.kept)
        return slots.reshape(*self.shape, d)

    def combine(self, out):
        d = out.shape[-1]
        y = _combine_slots(out.reshape(-1, d), self.weight, self.where, self.kept, self.token, self.choice,
                           self.valid)
        return y.reshape(self.num_groups, -1, d)


def tokens_choose_gather(slots: dict, num_experts: int, capacity: int, block: int = 0) -> TokensChooseGather:
    """A :class:`TokensChooseGather` from :func:`~mtljax.models.moe.routing.tokens_choose_slots`.

    Slot ``(e, g, c)`` of the ``[E, G, C]`` buffer is ``e·G·C + g·C + c``. With ``block`` the buffer is
    *packed* instead: ``[E, R]`` with ``R = G·C`` rounded up to a multiple of ``block``, expert ``e``'s
    kept choices in rows ``0 .. counts[e] - 1`` (group by group, each group's in its slot order:
    ``e·R + Σ_{g' < g} kept[g', e] + c``) and ``counts`` set on the result, for
    :func:`run_packed_experts`. The same tokens take the same slots either way; only the rows move.
    """
    g, s, k = slots["top_idx"].shape
    kept = slots["kept"]
    if block:
        rows = -(-g * capacity // block) * block
        per_group = jnp.sum(jax.nn.one_hot(slots["top_idx"], num_experts, dtype=jnp.int32) * kept[..., None],
                            axis=(1, 2))  # [G, E] kept choices
        offset = jnp.cumsum(per_group, axis=0) - per_group  # rows the earlier groups took
        base = jnp.take_along_axis(offset, slots["top_idx"].reshape(g, s * k), axis=1).reshape(g, s, k)
        where = slots["top_idx"] * rows + base + slots["position"]
        counts, shape = jnp.sum(per_group, axis=0), (num_experts, rows)
    else:
        where = slots["top_idx"] * (g * capacity) + jnp.arange(g, dtype=jnp.int32)[:, None, None] * capacity \
            + slots["position"]
        counts, shape = None, (num_experts, g, capacity)
    q = math.prod(shape)
    where = jnp.where(kept, where, 0).reshape(g * s, k)
    kept = kept.reshape(g * s, k)
    # slot -> choice by one scatter (every kept choice has its own slot; dropped ones land on a spare q)
    target = jnp.where(kept, where, q).reshape(-1)
    choice = jnp.full((q + 1,), -1, jnp.int32).at[target].set(jnp.arange(g * s * k, dtype=jnp.int32))[:q]
    valid = choice >= 0
    choice = jnp.maximum(choice, 0)
    weight = jnp.where(kept, slots["top_val"].reshape(g * s, k), 0.0)
    disp = TokensChooseGather(where, kept, weight, choice // k, choice, valid, shape, g, counts, block)
    disp.head = min(shape[1], int(HEAD_SHARE * g * s * k / num_experts) // block * block) if block else 0
    return disp


def experts_choose_gather(slots: dict, num_tokens: int) -> GatherDispatch:
    """A :class:`GatherDispatch` from :func:`~mtljax.models.moe.routing.experts_choose_slots` (``token [G, E, C]``)."""
    return GatherDispatch(slots["token"], slots["weight"], num_tokens)


def grouped_moe(route, xg, pg, extra, wi, bi, wo, bo, *, dtype, expert_axis: str = "expert"):
    """Route, dispatch, run the experts and combine, for grouped tokens ``xg [G, S, D]``.

    ``route(pg, extra) -> (dispatcher, stats)`` works group by group (``dispatcher``: an
    :class:`EinsumDispatch`, :class:`TokensChooseGather` or :class:`GatherDispatch`; ``stats``: arrays with a leading group axis). On
    a mesh, everything runs under ``jax.shard_map`` on each device's own groups (routing never gathers
    tokens across devices); with an ``expert`` axis the slots travel to their experts' devices and back
    with two ``all_to_all``s, and with a ``model`` axis the expert hidden width is split (one ``psum``).
    Returns ``(y [G, S, D], stats)``.
    """

    def body(xg, pg, extra, wi, bi, wo, bo, ep=None, model=None):
        disp, stats = route(pg, extra)
        slots = disp.dispatch(xg)  # [E, G, C, D] (or packed [E, R, D])
        if ep is not None:
            slots = jax.lax.all_to_all(slots, ep, 0, 1, tiled=True)  # [E/n, n·G, C, D]
        counts = getattr(disp, "counts", None)  # packed slots (tokens choose, gather)
        if counts is not None and ep is None and model is None and disp.head < slots.shape[1]:
            # packed slots: only the filled row blocks
            c = lambda w: w.astype(dtype)  # noqa: E731
            h = disp.head  # rows every expert almost surely fills: one batched matmul; the rest in row blocks
            out_head = run_experts(slots[:, :h], wi, bi, wo, bo, dtype) if h else None
            out = run_packed_experts(slots[:, h:], jnp.maximum(counts - h, 0), c(wi), c(bi), c(wo), c(bo),
                                     disp.block)
            if h:
                out = jnp.concatenate([out_head, out], axis=1)
        else:
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
    out = jax.lax.ragged_dot(gelu(h), wo.astype(dtype), sizes) + bo.astype(dtype)[expert]
    weight = top_val.reshape(-1)[order].astype(dtype)
    return jnp.zeros((n, x.shape[-1]), dtype).at[token].add(out * weight[:, None])


def sharded_ragged_moe(x, probs, k: int, renormalize: bool, wi, bi, wo, bo, *, dtype, expert_axis: str = "expert"):
    """Dropless top-k on every device's own tokens (``x [B, S, D]``, ``probs [B, S, E]``); experts replicated.

    Returns ``(y [B, S, D], top_idx [B, S, k])``.
    """

    def fn(x, probs, *w):
        top_val, top_idx = top_k(probs, k)
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
