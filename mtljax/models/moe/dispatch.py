"""How routed tokens reach their experts and come back: on one device, or across a device mesh.

A router (:mod:`mtljax.models.moe.routing`) decides which token fills which slot of which expert; a
*dispatcher* moves the tokens: :class:`EinsumDispatch` multiplies by one-hot ``[G, S, E, C]`` tensors
(the TPU-friendly form), :class:`GatherDispatch` gathers each slot's token and gathers (tokens choose)
or scatter-adds (experts choose) the outputs back, with gradients that are gathers too.
:func:`grouped_moe` runs route → dispatch → experts → combine, under ``jax.shard_map`` when a mesh is
in context: every device routes its own groups, and with an ``expert`` axis the slots travel to the
devices that hold their experts and back by two ``all_to_all``s (expert weights are never gathered).
:func:`sharded_ragged_moe` is the dropless path through ``jax.lax.ragged_dot``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

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
    """A :class:`GatherDispatch` from :func:`~mtljax.models.moe.routing.tokens_choose_slots`."""
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
    """A :class:`GatherDispatch` from :func:`~mtljax.models.moe.routing.experts_choose_slots` (``token [G, E, C]``)."""
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
