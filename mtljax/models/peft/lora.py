"""LoRA: per-task low-rank updates of the ViT's projections (Hu et al., 2022, "LoRA: Low-Rank Adaptation of
Large Language Models", eq. 3).

A projection ``y = W x`` (``W`` frozen, pretrained) becomes ``y = W x + (α/r) B_t A_t x`` for the task
``t`` of the example: ``A_t`` maps ``d_in -> r``, ``B_t`` maps ``r -> d_out``. As in the paper ``A``
starts random (here ``N(0, 1/d_in)`` per task, the paper's "random Gaussian") and ``B = 0``, so the
adapted model equals the base model at initialisation; ``α/r`` keeps the update's scale when the rank
changes (the paper's rule; not rsLoRA's ``α/√r``).

Parameters (per target projection, ``T`` tasks): ``a [T, *in, r]`` and ``b [T, r, *out]`` under the
scope ``lora_<projection>`` next to the projection's own ``<projection>/kernel`` and ``bias``, which
keep exactly the paths and shapes of the base ViT (a pretrained checkpoint loads into them; freeze by
the pattern ``lora``). That is ``T·r·(d_in + d_out)`` parameters per target and block.

Targets: the attention's ``query``, ``key``, ``value`` (``[D] -> [H, h]``) and ``out`` (``[H, h] -> [D]``)
— in :class:`~mtljax.models.peft.attention.PeftAttention` — and the MLP's ``fc1`` / ``fc2`` in
:class:`LoraMlp`. :func:`merge` folds one task's update into the kernels: plain ViT weights whose
forward equals the adapted forward for that task (no cross terms: each task's ``B_t A_t`` is formed
whole, never from averaged factors).

Routing (``config.model.peft.routing``; PHATGOOSE, Muqeeth et al., 2024, "Learning to Route Among
Specialized Experts for Zero-Shot Generalization"; the equations in :mod:`~mtljax.models.peft.phatgoose`):
``""`` is the above. ``"gate"`` adds a gate ``gate [T, *in]`` (zeros at init, logical axes those of
``a``'s input) under the same ``lora_<projection>`` scope and scales task ``t``'s update per token by
``σ(v_tᵀ x)`` — train it with the rest frozen. ``"phatgoose"`` needs no task ids: every token ``x``
gets weights ``w(x) [T]`` from all ``T`` gates (softmax of ``⟨std(x), std(v_t)⟩/√d_in``, top ``top_k``,
renormalised; sown as ``intermediates/…/lora_<projection>/routing [B, ..., T]``) and the update is
``(α/r) Σ_t w_t(x) B_t A_t x``. The parameters with ``routing=""`` are exactly those without the key;
:func:`merge` drops the gates with the rest of ``lora_*`` (a gated or routed update is not a fixed
kernel: merging folds task ``t``'s ungated update).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.layers import Dtype, dense, gelu
from mtljax.models.peft.phatgoose import GATE, ROUTINGS, gate_scale, phatgoose_weights
from mtljax.models.peft.poly import PREFIX as POLY_PREFIX
from mtljax.models.peft.poly import PolyDelta, PolySettings
from mtljax.models.peft.select import per_example, task_ids_of
from mtljax.models.plugs import Context

ATTENTION_TARGETS = ("query", "key", "value", "out")
MLP_TARGETS = ("fc1", "fc2")
TARGETS = ATTENTION_TARGETS + MLP_TARGETS
PREFIX = "lora_"  # scope of a projection's LoRA factors: lora_<projection>


class LoraDelta(nn.Module):
    """The per-task update ``(α/r) B_t A_t x`` of one projection: ``x [B, ..., *in] -> [B, ..., *out]``.

    ``in_axes``/``out_axes`` are the logical names of the projection's input and output dimensions
    (``("embed",)``, ``("heads", "kv")``, ``("mlp",)``); ``out_features`` its output shape.
    ``routing``: ``""`` (the above), ``"gate"`` (times ``σ(v_tᵀ x)`` per token; sows ``gate [B, ...]``)
    or ``"phatgoose"`` (every token mixes the ``top_k`` best-matching experts of all ``T``; sows
    ``routing [B, ..., T]``; ``task_ids`` may be ``None``) — see the module docstring.
    """

    num_tasks: int
    rank: int
    alpha: float
    out_features: tuple[int, ...]
    in_axes: tuple[str | None, ...] = ("embed",)
    out_axes: tuple[str | None, ...] = ("embed",)
    routing: str = ""
    top_k: int = 2
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, task_ids: jax.Array | None) -> jax.Array:
        if self.routing not in ROUTINGS:
            raise ValueError(f"LoraDelta: unknown routing {self.routing!r}; choose from {list(ROUTINGS)}")
        n_in = len(self.in_axes)
        in_shape = x.shape[x.ndim - n_in:]
        d_in, d_out, r = math.prod(in_shape), math.prod(self.out_features), self.rank
        init_a = nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=tuple(range(1, 1 + n_in)),
                                                  out_axis=-1, batch_axis=(0,))
        a = self.param("a", nn.with_logical_partitioning(init_a, (None, *self.in_axes, None)),
                       (self.num_tasks, *in_shape, r), self.param_dtype)
        b = self.param("b", nn.with_logical_partitioning(nn.initializers.zeros, (None, None, *self.out_axes)),
                       (self.num_tasks, r, *self.out_features), self.param_dtype)
        batch = x.shape[0]
        if self.routing:
            gate = self.param(GATE, nn.with_logical_partitioning(nn.initializers.zeros, (None, *self.in_axes)),
                              (self.num_tasks, *in_shape), self.param_dtype)
            if self.routing == "phatgoose":
                return self._routed(x, a, b, gate, n_in, d_in, d_out)
        a_ex = per_example(a, task_ids, self.dtype).reshape(batch, d_in, r)  # [B, d_in, r]
        b_ex = per_example(b, task_ids, self.dtype).reshape(batch, r, d_out)  # [B, r, d_out]
        h = jnp.einsum("bsi,bir->bsr", x.astype(self.dtype).reshape(batch, -1, d_in), a_ex)
        y = jnp.einsum("bsr,bro->bso", h, b_ex) * jnp.asarray(self.alpha / r, self.dtype)
        if self.routing == "gate":  # σ(v_tᵀ x) per token, v_t the example's task's gate
            scale = gate_scale(x.reshape(batch, -1, d_in), per_example(gate, task_ids).reshape(batch, d_in))
            self.sow("intermediates", "gate", scale.reshape(x.shape[: x.ndim - n_in]))
            y = y * scale[..., None].astype(self.dtype)
        return y.reshape(*x.shape[: x.ndim - n_in], *self.out_features)

    def _routed(self, x, a, b, gate, n_in, d_in, d_out):
        """PHATGOOSE routing: every token mixes the top-k experts of all T (no task ids)."""
        r, batch, lead = self.rank, x.shape[0], x.shape[: x.ndim - n_in]
        xs = x.astype(self.dtype).reshape(batch, -1, d_in)  # [B, S, d_in]
        weights = phatgoose_weights(xs, gate.reshape(self.num_tasks, d_in), self.top_k)  # [B, S, T]
        self.sow("intermediates", "routing", weights.reshape(*lead, self.num_tasks))
        h = jnp.einsum("bsi,tir->bstr", xs, a.astype(self.dtype).reshape(self.num_tasks, d_in, r))
        h = h * weights[..., None].astype(self.dtype)
        y = jnp.einsum("bstr,tro->bso", h, b.astype(self.dtype).reshape(self.num_tasks, r, d_out))
        y = y * jnp.asarray(self.alpha / r, self.dtype)
        return y.reshape(*lead, *self.out_features)


class LoraMlp(nn.Module):
    """The ViT's MLP (:class:`~mtljax.models.layers.MlpBlock`: ``fc1`` · GELU · dropout · ``fc2``, same
    parameter paths) with per-task LoRA on the projections in ``targets`` (``fc1`` and/or ``fc2``) and
    Polytropon / MHR routed skills on ``poly.targets`` (:mod:`~mtljax.models.peft.poly`; ``None``: none)."""

    mlp_dim: int
    num_tasks: int
    rank: int
    alpha: float
    targets: Sequence[str] = MLP_TARGETS
    dropout: float = 0.0
    routing: str = ""
    top_k: int = 2
    poly: PolySettings | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:
        width = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        routed = self.routing == "phatgoose" and self.poly is None
        ids = None if routed else task_ids_of(ctx, x.shape[0], "LoraMlp")
        poly = self.poly.targets if self.poly else ()

        def project(name, features, axes, h):
            y = dense(features, axes, name=name, **kw)(h)
            if name in self.targets:
                y = y + LoraDelta(self.num_tasks, self.rank, self.alpha, (features,), axes[:1], axes[1:],
                                  self.routing, self.top_k, name=PREFIX + name, **kw)(h, ids)
            if name in poly:
                y = y + PolyDelta(self.num_tasks, self.poly, (features,), axes[:1], axes[1:], name=POLY_PREFIX + name,
                                  **kw)(h, ids, ctx.train)
            return y

        h = gelu(project("fc1", self.mlp_dim, ("embed", "mlp"), x))
        h = nn.with_logical_constraint(h, ("act_batch", "act_len", "mlp"))
        h = nn.Dropout(self.dropout, deterministic=not ctx.train)(h)
        return project("fc2", width, ("mlp", "embed"), h)


def merge(params: Mapping[str, Any], task: int | jax.Array, alpha: float) -> dict:
    """Plain weights for task ``task``: every ``<p>/kernel`` with a sibling ``lora_<p>`` becomes
    ``kernel + (α/r) A_t B_t`` (reshaped to the kernel) and the ``lora_*`` entries are dropped.

    ``params`` is an unboxed parameter pytree (nested dicts; any subtree, e.g. the whole
    ``MultiTaskModel``'s or its ``backbone``'s); ``alpha`` the ``config.model.peft.alpha`` it was
    trained with (the rank is read from the factors). Pure and jit-able (``task`` may be traced).
    Entries of other per-task modules (adapters, prefixes, prompts) are kept as they are: for a LoRA
    model the result has exactly the base ViT's paths, and its forward (with the base ViT) equals the
    LoRA model's forward for ``task``.
    """

    def fold(tree):
        if not isinstance(tree, Mapping):
            return tree
        out = {}
        for key, value in tree.items():
            if isinstance(key, str) and key.startswith(PREFIX):
                continue
            value = fold(value)
            lora = tree.get(PREFIX + key) if isinstance(key, str) else None
            if lora is not None:
                a, b = lora["a"][task], lora["b"][task]  # [*in, r], [r, *out]
                r = a.shape[-1]
                kernel = value["kernel"]
                delta = jnp.matmul(a.reshape(-1, r), b.reshape(r, -1), precision=jax.lax.Precision.HIGHEST)
                value = {**value, "kernel": kernel + (alpha / r * delta).reshape(kernel.shape).astype(kernel.dtype)}
            out[key] = value
        return out

    return fold(params)
