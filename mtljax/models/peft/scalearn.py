"""ScaLearn: a target task combines frozen source-task adapters with learned scales (Frohmann et al.,
2024, "ScaLearn: Simple and Highly Parameter-Efficient Task Transfer by Learning to Scale", ACL
Findings, sec. 3; code CPJKU/ScaLearn, ``adapters/modeling.py``, ``adapters/layer.py``).

At every adapter position ``l`` of the source run (a run of ``configs/adapt_adapter.py``: bottleneck
adapters per task, :mod:`mtljax.models.peft.adapter`), with ``h`` the branch output the adapter reads
and ``a_l^s(h) = W_up,s · gelu(W_down,s · h + b_down,s) + b_up,s`` the *delta* of source task ``s``'s
adapter (its output without the adapter's own skip connection; the reference scales the adapters'
``up`` outputs), a target task ``t`` computes (eq. 2 of the paper, with the residual the reference adds
back)::

    h' = h + Σ_{s=1..S} ω_l^{t,s} ⊙ a_l^s(h)

=================  ===========================  =====================================================
``variant``        ``ω_l^{t,s}``                trained per target task (``P`` positions per block,
                                                ``L`` blocks, ``D`` the width)
=================  ===========================  =====================================================
``scalearn``       a vector in ``R^D`` per       ``S·D·L·P``
                   position and block
``uniform``        a scalar per position and     ``S·L·P``
                   block (ScaLearnUniform)
``scalearn++``     one vector per position,      ``S·D·P``
                   shared by all blocks
``uniform++``      one scalar per position,      ``S·P``
                   shared by all blocks
``fusion``         AdapterFusion (below), for    ``3·D²·L·P``
                   comparison
=================  ===========================  =====================================================

``fusion`` is AdapterFusion (Pfeiffer et al., 2021, "AdapterFusion: Non-Destructive Task Composition for
Transfer Learning", sec. 3.2) over the same frozen source adapters: per token, an attention over the
sources, ``h' = h + Σ_s softmax_s((h W_Q)·(a^s W_K)) · a^s W_V`` with ``W_Q, W_K ~ N(0, 0.02²)`` and
``W_V = I`` at initialisation (adapter-transformers' ``BertFusion``: keys and values are the adapters'
``up`` outputs, the residual added after; no temperature, no √D scaling). Left out: its
``‖I − W_V‖²`` regulariser.

Initialisation ``ω ~ N(2/S, 10⁻³)`` (the paper's; the reference draws ``N(omega_init_scale / S, 0.001)``),
no normalisation of the scales (no softmax, no sum-to-one: the paper's ablations show they hurt).
The source adapters are frozen: they are parameters of the model (``source_down_kernel [S, D, m]``,
``source_down_bias [S, m]``, ``source_up_kernel [S, m, D]``, ``source_up_bias [S, D]``) filled from the
source run's checkpoint by task name (:mod:`mtljax.trainer.scalearn_source`), kept out of training by
``config.optim.trainable`` (only ``scalearn_omega`` and the heads) and wrapped in ``stop_gradient``.
Zero sources (never loaded) give a zero delta: the base model.

Per target task its own ω (a leading task axis ``[T, ...]`` selected per example by ``ctx.task_ids``,
:mod:`~mtljax.models.peft.select`), so several target tasks train at once in one pass. The ``++``
variants keep their ω in :class:`SharedScalesViT`, a wrapper around the ViT that puts them into
``ctx.shared["scalearn"]`` once per pass; every block's :class:`ScaLearn` plug reads its position's.

Deviations: the reference places one adapter after the feed-forward block (Pfeiffer); here the
positions are the source run's (``attention`` and/or ``mlp``, each with its own ω; ``++`` shares one ω
per position across blocks). The ViT is pre-LN (see :mod:`~mtljax.models.peft.adapter`), so ``h'``
enters the residual stream directly. Reference options left out: dropout on ω, ``take_mean`` /
``take_softmax`` ablations.

Parameter paths: per-block ω ``blockN/{attn,mlp}_adapter/scalearn_omega [T, S, D or 1]``; shared ω
``scalearn_omega_{attention,mlp} [T, S, D or 1]`` at the backbone's top; sources under the plug's scope.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.config import require
from mtljax.models.layers import Dtype
from mtljax.models.peft.select import per_example, task_ids_of
from mtljax.models.plugs import Context, Encoding
from mtljax.models.vit import ViT

VARIANTS = ("scalearn", "uniform", "scalearn++", "uniform++", "fusion")
SCOPE = "scalearn"  # ω's name contains it (train with config.optim.trainable = ("scalearn_", "^heads_"))
SOURCE_NAMES = ("source_down_kernel", "source_down_bias", "source_up_kernel", "source_up_bias")
OMEGA_STD = 1e-3


def is_uniform(variant: str) -> bool:
    return variant.startswith("uniform")


def is_shared(variant: str) -> bool:
    return variant.endswith("++")


def omega_init(num_sources: int):
    """``N(2/S, 10⁻³)`` (the reference's default)."""
    mean = 2.0 / num_sources

    def init(key, shape, dtype=jnp.float32):
        return (mean + OMEGA_STD * jax.random.normal(key, shape)).astype(dtype)

    return init


def source_deltas(h, down_kernel, down_bias, up_kernel, up_bias):
    """Every source adapter's delta ``a^s(h)``: ``h [B, N, D]`` and the stacks ``[S, ...]`` ->
    ``[B, N, S, D]``."""
    z = nn.gelu(jnp.einsum("bnd,sdm->bnsm", h, down_kernel) + down_bias)
    return jnp.einsum("bnsm,smd->bnsd", z, up_kernel) + up_bias


def omega_shape(num_tasks: int, num_sources: int, width: int, uniform: bool) -> tuple[int, int, int]:
    return num_tasks, num_sources, 1 if uniform else width


class ScaLearn(nn.Module):
    """The ``attention_adapter`` / ``mlp_adapter`` plug: ``h + Σ_s ω^s ⊙ a^s(h)`` with the example's
    task's ω (module docstring). ``shared``: the position whose ω :class:`SharedScalesViT` passes in
    ``ctx.shared["scalearn"]`` (``++`` variants); ``None``: this plug's own ω."""

    num_tasks: int
    num_sources: int
    dim: int
    uniform: bool = False
    shared: str | None = None
    fusion: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, ctx: Context) -> jax.Array:
        ids = task_ids_of(ctx, h.shape[0], "ScaLearn")
        s, d, m = self.num_sources, h.shape[-1], self.dim
        zeros = nn.initializers.zeros

        def source(name, axes, shape):  # frozen: filled from the source run's checkpoint
            p = self.param(name, nn.with_logical_partitioning(zeros, axes), shape, self.param_dtype)
            return jax.lax.stop_gradient(p).astype(self.dtype)

        stacks = (source("source_down_kernel", (None, "embed", None), (s, d, m)),
                  source("source_down_bias", (None, None), (s, m)),
                  source("source_up_kernel", (None, None, "embed"), (s, m, d)),
                  source("source_up_bias", (None, "embed"), (s, d)))
        deltas = source_deltas(h.astype(self.dtype), *stacks)  # [B, N, S, D]
        if self.fusion:
            return h + self._fuse(h.astype(self.dtype), deltas, ids).astype(h.dtype)
        if self.shared is None:
            omega = self.param("scalearn_omega", nn.with_logical_partitioning(omega_init(s), (None, None, None)),
                               omega_shape(self.num_tasks, s, d, self.uniform), self.param_dtype)
        else:
            if not isinstance(ctx.shared, dict) or self.shared not in ctx.shared.get(SCOPE, {}):
                raise ValueError(f"ScaLearn: shared scales for position {self.shared!r} are missing from "
                                 "ctx.shared['scalearn'] (is the ViT wrapped in SharedScalesViT?)")
            omega = ctx.shared[SCOPE][self.shared]
        w = per_example(omega, ids, self.dtype)  # [B, S, D or 1]
        return h + jnp.sum(deltas * w[:, None], axis=2).astype(h.dtype)

    def _fuse(self, x, deltas, ids):
        """AdapterFusion's attention over the sources (module docstring): ``[B, N, D]``."""
        t, d = self.num_tasks, x.shape[-1]

        def weight(name, init):
            p = self.param(name, nn.with_logical_partitioning(init, (None, "embed", None)), (t, d, d), self.param_dtype)
            return per_example(p, ids, self.dtype)  # [B, D, D]

        def eye(key, shape, dtype=jnp.float32):
            return jnp.broadcast_to(jnp.eye(shape[-1], dtype=dtype), shape)

        q = jnp.einsum("bnd,bde->bne", x, weight("scalearn_fusion_query", nn.initializers.normal(0.02)))
        k = jnp.einsum("bnsd,bde->bnse", deltas, weight("scalearn_fusion_key", nn.initializers.normal(0.02)))
        v = jnp.einsum("bnsd,bde->bnse", deltas, weight("scalearn_fusion_value", eye))
        attention = jax.nn.softmax(jnp.einsum("bne,bnse->bns", q, k), axis=-1)
        return jnp.einsum("bns,bnse->bne", attention, v)


class SharedScalesViT(nn.Module):
    """ScaLearn++ / ScaLearnUniform++: one ω per adapter position for all blocks, created here and
    passed to every block's :class:`ScaLearn` plug in ``ctx.shared["scalearn"]``. ``vit`` shares this
    module's scope (its parameter tree is the ViT's plus ``scalearn_omega_<position>``)."""

    vit: ViT
    num_tasks: int
    num_sources: int
    positions: tuple[str, ...]
    uniform: bool = False

    def setup(self):
        nn.share_scope(self, self.vit)
        shape = omega_shape(self.num_tasks, self.num_sources, self.vit.width, self.uniform)
        init = nn.with_logical_partitioning(omega_init(self.num_sources), (None, None, None))
        self.omegas = {p: self.param(f"scalearn_omega_{p}", init, shape, self.vit.param_dtype) for p in self.positions}

    def __call__(self, images: jax.Array, ctx: Context = Context()) -> Encoding:
        shared = dict(ctx.shared or {})
        shared[SCOPE] = dict(self.omegas)
        return self.vit(images, ctx.replace(shared=shared))


def num_sources(p) -> int:
    """The number of source adapters of ``p = config.model.peft`` (``scalearn.source_tasks``, which the
    trainer fills from the source run when it is empty: :mod:`mtljax.trainer.scalearn_source`)."""
    n = len(p.scalearn.source_tasks)
    require(n > 0, "scalearn.source_tasks", "is empty: name the source tasks (the trainer fills it with all of the "
                                            "source run's tasks before it builds the model)")
    return n


def scalearn_plugs(p, num_tasks: int) -> dict:
    """``{position: plug factory}`` of ``p = config.model.peft`` for ``num_tasks`` target tasks."""
    variant, s = p.scalearn.variant, num_sources(p)
    return {pos: functools.partial(ScaLearn, num_tasks, s, p.adapter_dim, is_uniform(variant),
                                   pos if is_shared(variant) else None, variant == "fusion")
            for pos in p.adapter_positions}


def shared_scales(p, vit: ViT, num_tasks: int) -> nn.Module:
    """``vit`` wrapped in :class:`SharedScalesViT` for the ``++`` variants of ScaLearn, else ``vit``."""
    if "scalearn" not in str(p.method).split("+") or not is_shared(p.scalearn.variant):
        return vit
    return SharedScalesViT(vit, num_tasks, num_sources(p), tuple(p.adapter_positions), is_uniform(p.scalearn.variant))


__all__ = ["OMEGA_STD", "SCOPE", "SOURCE_NAMES", "VARIANTS", "ScaLearn", "SharedScalesViT", "is_shared", "is_uniform",
           "num_sources", "omega_init", "omega_shape", "scalearn_plugs", "shared_scales", "source_deltas"]
