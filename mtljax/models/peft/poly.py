"""Polytropon and MHR: per-task LoRA formed from a shared inventory of LoRA skills by a learned routing.

Polytropon (Ponti et al., 2023, "Combining Parameter-efficient Modules for Task-level Generalisation")
keeps, for every adapted projection ``y = W x`` (``W`` frozen), an inventory of ``K`` LoRA *skills*
``(A_k, B_k)`` shared by all tasks and a routing matrix of logits ``Z [T, K]``. MHR (Caccia et al., 2023,
"Multi-Head Adapter Routing for Cross-Task Generalization") splits the input and output dimensions into
``h`` blocks ("heads") and routes each block separately, ``Z [T, h, K]``; ``h = 1`` is Polytropon.

Routing weights (the relaxed Bernoulli "Gumbel-sigmoid" of the papers; ``L`` logistic noise,
``log u − log(1 − u)`` with ``u ~ U(0, 1)``, drawn per example, head and skill; ``τ`` the temperature)::

    train: w = σ((Z_t + L) / τ)          eval: w = σ(Z_t)  (deterministic)
    ŵ_{t,j,k} = w_{t,j,k} / (Σ_k w_{t,j,k} + ε)          (ε = 1e-12)

Per head ``j`` the task's factors are the weighted sums of the skills' blocks,
``A_t^j = Σ_k ŵ_{t,j,k} A_k^j`` ``[d_in/h, r]`` and ``B_t^j = Σ_k ŵ_{t,j,k} B_k^j`` ``[r, d_out/h]``; the
task's LoRA is ``A_t = [A_t^1; …; A_t^h]`` (the head blocks stacked along the input) and
``B_t = [B_t^1, …, B_t^h]`` (along the output), and the update is ``y = W x + (α/r) B_t A_t x`` — rank
``r``: the heads' input blocks are summed into the same ``r`` channels, and each head's ``B`` block writes
its own output block. This is how mttl and peft ``tuners/poly`` (``n_splits``) split ``A`` and ``B``.

Parameters per target projection, under the scope ``poly_<projection>`` (next to the projection's
own kernel, which keeps the base ViT's path): ``skills_a [K, h, d_in/h, r]`` (``N(0, 1/d_in)``, as
LoRA's ``A``) and ``skills_b [K, h, r, d_out/h]`` (zeros: the adapted model starts at the base model),
shared by all tasks — not task-specific: they enter Gramians and load by path, their size independent
of ``T`` — and ``poly_routing [T, h, K]``, the only per-task parameter (:data:`ROUTING`; the objective
marks it task-specific, warm starts match its rows by task name). Logical axes: the skills' input /
output blocks carry the projection's input / output axis (``embed``, ``mlp``; ``None`` for the
attention's ``[heads, kv]`` side, split by MHR heads that need not align with attention heads).

Routing granularity: one routing matrix per adapted projection of every block (Polytropon's "one
allocation matrix per layer", as in mttl and peft, where every adapted linear layer has its own router).

Deviations: the routing logits start at zero (mttl / peft: ``U(−1e-3, 1e-3)``), so a fresh row is
exactly uniform routing — ``ŵ = 1/K``, every task's LoRA the plain average of the skills' factors —
which makes MHR-μ (a new task routed uniformly) a fresh row: :func:`routing_uniform` sets rows back to
it. The scale is LoRA's ``α/r`` (peft's poly uses 1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtljax.models.layers import Dtype
from mtljax.models.peft.select import per_example

PREFIX = "poly_"  # scope of a projection's skills and routing: poly_<projection>
ROUTING = "poly_routing"  # the per-task routing logits (a key of mtljax.models.peft.SCOPES)
EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class PolySettings:
    """``config.model.peft.poly``: ``skills`` K, ``heads`` h (1 = Polytropon), LoRA ``rank`` and ``alpha``,
    the ``targets`` projections, the Gumbel-sigmoid ``temperature``."""

    skills: int = 8
    heads: int = 1
    rank: int = 4
    alpha: float = 8.0
    targets: tuple[str, ...] = ("query", "value")
    temperature: float = 1.0

    @classmethod
    def of(cls, p) -> "PolySettings":
        return cls(int(p.skills), int(p.heads), int(p.rank), float(p.alpha), tuple(p.targets), float(p.temperature))


def routing_weights(logits: jax.Array, *, noise: jax.Array | None = None, temperature: float = 1.0) -> jax.Array:
    """``ŵ`` from logits ``[..., K]``: ``σ((Z + noise)/τ)`` with logistic ``noise`` (training), ``σ(Z)``
    without (eval), normalised over the last (skill) axis."""
    w = jax.nn.sigmoid(logits) if noise is None else jax.nn.sigmoid((logits + noise) / temperature)
    return w / (jnp.sum(w, axis=-1, keepdims=True) + EPS)


class PolyDelta(nn.Module):
    """The routed update ``(α/r) B_t A_t x`` of one projection: ``x [B, ..., *in] -> [B, ..., *out]``
    (``in_axes``/``out_axes``: the projection's logical input / output names; ``out_features`` its
    output shape). ``train``: Gumbel-sigmoid routing with the ``dropout`` rng; else deterministic."""

    num_tasks: int
    settings: PolySettings
    out_features: tuple[int, ...]
    in_axes: tuple[str | None, ...] = ("embed",)
    out_axes: tuple[str | None, ...] = ("embed",)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, task_ids: jax.Array, train: bool = False) -> jax.Array:
        s = self.settings
        n_in = len(self.in_axes)
        lead = x.shape[: x.ndim - n_in]
        d_in, d_out, r, h, k = math.prod(x.shape[x.ndim - n_in:]), math.prod(self.out_features), s.rank, s.heads, s.skills
        if d_in % h or d_out % h:
            raise ValueError(f"PolyDelta: {h} heads do not divide the projection {d_in} -> {d_out}")
        ax_in = self.in_axes[0] if n_in == 1 else None
        ax_out = self.out_axes[0] if len(self.out_axes) == 1 else None

        def init_a(key, shape, dtype):
            return jax.random.normal(key, shape, dtype) / jnp.sqrt(jnp.asarray(d_in, dtype))

        a = self.param("skills_a", nn.with_logical_partitioning(init_a, (None, None, ax_in, None)),
                       (k, h, d_in // h, r), self.param_dtype)
        b = self.param("skills_b", nn.with_logical_partitioning(nn.initializers.zeros, (None, None, None, ax_out)),
                       (k, h, r, d_out // h), self.param_dtype)
        z = self.param(ROUTING, nn.with_logical_partitioning(nn.initializers.zeros, (None, None, None)),
                       (self.num_tasks, h, k), self.param_dtype)
        z_ex = per_example(z, task_ids, jnp.float32)  # [B, h, K]
        noise = None
        if train:
            u = jax.random.uniform(self.make_rng("dropout"), z_ex.shape, jnp.float32, 1e-6, 1.0 - 1e-6)
            noise = jnp.log(u) - jnp.log1p(-u)
        w = routing_weights(z_ex, noise=noise, temperature=s.temperature).astype(self.dtype)
        a_ex = jnp.einsum("bjk,kjir->bjir", w, a.astype(self.dtype))  # [B, h, d_in/h, r]
        b_ex = jnp.einsum("bjk,kjro->bjro", w, b.astype(self.dtype))  # [B, h, r, d_out/h]
        xs = x.astype(self.dtype).reshape(x.shape[0], -1, h, d_in // h)  # [B, S, h, d_in/h]
        mid = jnp.einsum("bsji,bjir->bsr", xs, a_ex)  # the heads' input blocks summed into r channels
        y = jnp.einsum("bsr,bjro->bsjo", mid, b_ex) * jnp.asarray(s.alpha / r, self.dtype)
        return y.reshape(*lead, *self.out_features)


def routing_matrices(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{path of the poly_<projection> scope: ŵ [T, h, K]}`` (eval routing: ``σ(Z)`` normalised over
    skills) of every routing matrix in an unboxed parameter pytree (a leading ``backbone/`` is dropped)."""
    out = {}

    def walk(tree, path):
        if not isinstance(tree, Mapping):
            return
        for key, value in tree.items():
            if key == ROUTING:
                name = "/".join(path[1:] if path and path[0] == "backbone" else path)
                out[name] = np.asarray(routing_weights(jnp.asarray(value, jnp.float32)))
            else:
                walk(value, path + (str(key),))

    walk(params, ())
    return out


def routing_uniform(params: Mapping[str, Any], tasks: Sequence[int]) -> dict:
    """``params`` with the routing rows of ``tasks`` set to zero logits: uniform routing over the skills
    (``ŵ = 1/K``; MHR-μ: the task's LoRA is the average of the skills' factors). Pure, nested dicts."""
    index = np.asarray(list(tasks), dtype=np.int32)

    def walk(tree):
        if not isinstance(tree, Mapping):
            return tree
        return {k: (jnp.asarray(v).at[index].set(0) if k == ROUTING else walk(v)) for k, v in tree.items()}

    return walk(params)
