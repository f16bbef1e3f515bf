"""HyperFormer++: one shared hypernetwork generates every block's adapters from task embeddings
(Karimi Mahabadi et al., ACL 2021, "Parameter-efficient Multi-task Fine-tuning for Transformers via
Shared Hypernetworks", sec. 2.3-2.4; defaults of the authors' ``hyperformer++.json``).

For task ``t``, block ``i`` and adapter position ``j`` (after the attention / after the MLP)::

    ι_tij = LN(W_2 · relu(W_1 · [z_t; l_i; p_j] + b_1) + b_2)      task projector h'_I, then LayerNorm
    W_down = A_D ι + a_D,  b_down = B_D ι + c_D                     (D×m and m)
    W_up   = A_U ι + a_U,  b_up   = B_U ι + c_U                     (m×D and D)
    γ      = G_γ ι + c_γ,  β      = G_β ι + c_β                     conditional LayerNorm (D each)
    adapter(h) = h + LN_γ,β(W_up · gelu(W_down · h + b_down) + b_up)

``z_t`` (``task_dim``) is the only per-task parameter; ``l_i`` (layer-id) and ``p_j`` (position)
embeddings, the projector (``hidden_dim``, ``projected_dim``) and the generators ``A``, ``B``, ``G`` are
shared by every task and every block — the parameter count depends on the number of tasks ``T`` and
blocks ``L`` only through the ``T·E`` task and ``L·E`` layer embeddings. ``m = max(1, D // r)``
(reduction factor ``r``, the paper's 32). Without the conditional LayerNorm (``layer_norm=False``) the
adapter is ``h + W_up · gelu(W_down · h + b_down) + b_up``.

Computation: :class:`HyperViT` wraps the ViT and, once per forward pass, generates the weights of all
``T × L × P`` adapters — the projector applied to every (task, block, position) triple and ONE matmul
``ι [T, L, P, E'] · [A_D | B_D | A_U | B_U | G_γ | G_β] [E', K]`` — and hands them to the blocks in
``Context.shared["hyper"]`` (``{name: [T, L, P, ...]}``); each block's :class:`HyperAdapter` plug
(``attention_adapter`` / ``mlp_adapter``) takes its ``[:, i, j]`` slice and gathers each example's task
by ``ctx.task_ids`` (:func:`~mtljax.models.peft.select.per_example`), like the per-task adapters.
:func:`generate` does the same for arbitrary embeddings (FM3-style support-set embeddings).

Parameters: the wrapper shares the ViT's scope (``nn.share_scope``), so the ViT's own paths are
exactly a pretrained checkpoint's; it adds ``task_embed [T, E]`` (task-specific: its name contains
``task_embed``, one of :data:`mtljax.models.peft.SCOPES`, so the objective marks it per task,
``config.optim.frozen_tasks`` freezes its row and warm starts match its rows by task name) and
``hypernet/...`` (shared: in the Gramians, trained by every task). The adapter plugs have no parameters.

Deviations:

* Initialisation: the paper draws generators and projector from N(0, 10⁻²) and the embeddings from
  N(0, 1), so its adapters start near, not at, the identity. Here the generators of ``γ`` and ``β``
  (with the LayerNorm) — or of ``W_up`` and ``b_up`` (without) — and all generator biases start at
  zero, so the adapted model equals the base model exactly at initialisation (the other generators
  N(0, 10⁻²) as in the paper; the projector's kernels LeCun-normal, Flax's default, which the
  LayerNorm on ι makes scale-free anyway).
* Architecture: T5 is post-LN (an adapter's output enters add & LayerNorm); the ViT is pre-LN, so the
  adapter (own skip connection included) sits on the attention / MLP branch's output before the
  residual add, as :mod:`~mtljax.models.peft.adapter`. The paper also conditions T5's own layer norms
  on the task; the ViT's norms stay the pretrained ones (frozen backbone). GELU, the ViT's nonlinearity,
  replaces T5's ReLU in the adapter. Task sampling with temperature 10 is the data pipeline's business
  (:mod:`mtljax.data.mixture`), not the model's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.layers import Dtype
from mtljax.models.peft.adapter import POSITIONS
from mtljax.models.peft.select import per_example, task_ids_of
from mtljax.models.plugs import BlockPlugs, Context, Encoding
from mtljax.models.vit import ViT

SCOPE = "task_embed"  # the task embeddings' name (marked task-specific through mtljax.models.peft.SCOPES)
SHARED_KEY = "hyper"  # Context.shared[SHARED_KEY]: the generated weights {name: [T, L, P, ...]}
LN_EPS = 1e-6
_GEN_STD = 1e-2  # the paper's generator initialisation


def adapter_width(width: int, reduction: int) -> int:
    """The adapters' bottleneck ``m = max(1, D // r)``."""
    return max(1, width // reduction)


def _layer_norm(x: jax.Array, eps: float = LN_EPS) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


class HyperNet(nn.Module):
    """The shared hypernetwork: task embeddings ``[T, E]`` -> adapter weights ``{name: [T, L, P, ...]}``
    for the ``depth`` blocks and ``positions`` (module docstring)."""

    width: int
    depth: int
    positions: Sequence[str]
    adapter_dim: int
    task_dim: int = 64
    hidden_dim: int = 128
    projected_dim: int = 64
    layer_norm: bool = True
    param_dtype: Dtype = jnp.float32

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The generated weights of one adapter, by name."""
        d, m = self.width, self.adapter_dim
        out = dict(down_kernel=(d, m), down_bias=(m,), up_kernel=(m, d), up_bias=(d,))
        if self.layer_norm:
            out.update(ln_scale=(d,), ln_bias=(d,))
        return out

    @nn.compact
    def __call__(self, task_embeddings: jax.Array) -> dict[str, jax.Array]:
        e, h, p_dim = self.task_dim, self.hidden_dim, self.projected_dim
        big, pd = self.depth, len(self.positions)
        if task_embeddings.ndim != 2 or task_embeddings.shape[1] != e:
            raise ValueError(f"HyperNet: task embeddings must be [T, {e}], got {task_embeddings.shape}")
        f32 = jnp.float32

        def param(name, init, axes, shape):
            return self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype).astype(f32)

        normal = nn.initializers.normal(1.0)
        layers = param("layer_embed", normal, (None, "hyper_in"), (big, e))
        where = param("position_embed", normal, (None, "hyper_in"), (pd, e))
        # the projector's first layer on [z; l; p] = the sum of its three blocks' products (no concat needed)
        w1 = param("proj1_kernel", nn.initializers.lecun_normal(), ("hyper_in", "hyper_hidden"), (3 * e, h))
        b1 = param("proj1_bias", nn.initializers.zeros, ("hyper_hidden",), (h,))
        w2 = param("proj2_kernel", nn.initializers.lecun_normal(), ("hyper_hidden", "hyper_in"), (h, p_dim))
        b2 = param("proj2_bias", nn.initializers.zeros, ("hyper_in",), (p_dim,))
        ln_scale = param("proj_ln_scale", nn.initializers.ones, ("hyper_in",), (p_dim,))
        ln_bias = param("proj_ln_bias", nn.initializers.zeros, ("hyper_in",), (p_dim,))
        z = task_embeddings.astype(f32)
        pre = ((z @ w1[:e])[:, None, None] + (layers @ w1[e:2 * e])[None, :, None]
               + (where @ w1[2 * e:])[None, None, :] + b1)  # [T, L, P, H]
        iota = _layer_norm(nn.relu(pre) @ w2 + b2) * ln_scale + ln_bias  # [T, L, P, E']

        # one generator per weight; zero where the adapter must start as the identity (module docstring)
        zero_first = {"ln_scale", "ln_bias"} if self.layer_norm else {"up_kernel", "up_bias"}
        axes_of = dict(down_kernel=("embed", None), up_kernel=(None, "embed"), up_bias=("embed",),
                       ln_scale=("embed",), ln_bias=("embed",), down_bias=(None,))
        kernels, biases, sizes = [], [], []
        for name, shape in self.shapes().items():
            init = nn.initializers.zeros if name in zero_first else nn.initializers.normal(_GEN_STD)
            kernels.append(param(f"gen_{name}", init, ("hyper_in", *axes_of[name]), (p_dim, *shape)).reshape(p_dim, -1))
            biases.append(param(f"gen_{name}_bias", nn.initializers.zeros, axes_of[name], shape).reshape(-1))
            sizes.append(kernels[-1].shape[1])
        flat = jnp.einsum("tlpe,ek->tlpk", iota, jnp.concatenate(kernels, axis=1)) + jnp.concatenate(biases)
        out, start = {}, 0
        for (name, shape), size in zip(self.shapes().items(), sizes):
            out[name] = flat[..., start:start + size].reshape(*flat.shape[:3], *shape)
            start += size
        return out


class HyperAdapter(nn.Module):
    """The ``attention_adapter`` / ``mlp_adapter`` plug of block ``block`` at ``position``:
    ``[B, S, D] -> [B, S, D]`` with the generated weights in ``ctx.shared["hyper"]`` (no parameters)."""

    block: int
    position: str
    positions: Sequence[str]
    layer_norm: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32  # unused: the plug has no parameters (the ViT passes it to every plug)

    @nn.compact
    def __call__(self, h: jax.Array, ctx: Context) -> jax.Array:
        ids = task_ids_of(ctx, h.shape[0], "HyperAdapter")
        if not isinstance(ctx.shared, dict) or SHARED_KEY not in ctx.shared:
            raise ValueError("HyperAdapter: no generated weights in ctx.shared['hyper'] (wrap the ViT in HyperViT)")
        j = tuple(self.positions).index(self.position)
        w = {k: per_example(v[:, self.block, j], ids, self.dtype) for k, v in ctx.shared[SHARED_KEY].items()}
        x = h.astype(self.dtype)
        z = nn.gelu(jnp.einsum("bsd,bdm->bsm", x, w["down_kernel"]) + w["down_bias"][:, None])
        u = jnp.einsum("bsm,bmd->bsd", z, w["up_kernel"]) + w["up_bias"][:, None]
        if self.layer_norm:
            u = _layer_norm(u.astype(jnp.float32)).astype(self.dtype) * w["ln_scale"][:, None] + w["ln_bias"][:, None]
        return h + u.astype(h.dtype)


class HyperViT(nn.Module):
    """A ViT whose adapter plugs are :class:`HyperAdapter`: ``(images, ctx) -> Encoding`` like the ViT,
    the weights of all tasks' adapters generated once per call by ``hypernet`` from ``task_embed``
    (or from ``task_embeddings [T', E]`` given to the call: then ``ctx.task_ids`` index those rows).

    ``vit`` shares this module's parameter scope, so the parameter tree is the ViT's own plus
    ``task_embed`` and ``hypernet/...``.
    """

    vit: ViT
    num_tasks: int
    adapter_dim: int
    positions: Sequence[str] = POSITIONS
    task_dim: int = 64
    hidden_dim: int = 128
    projected_dim: int = 64
    layer_norm: bool = True

    def setup(self):
        nn.share_scope(self, self.vit)
        init = nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "hyper_in"))
        self.task_embed = self.param(SCOPE, init, (self.num_tasks, self.task_dim), self.vit.param_dtype)
        self.hypernet = HyperNet(self.vit.width, self.vit.depth, tuple(self.positions), self.adapter_dim,
                                 self.task_dim, self.hidden_dim, self.projected_dim, self.layer_norm,
                                 param_dtype=self.vit.param_dtype)

    def weights(self, task_embeddings: jax.Array | None = None) -> dict[str, jax.Array]:
        """The generated adapter weights ``{name: [T, L, P, ...]}`` of ``task_embeddings`` (default: the
        learned ``task_embed``)."""
        return self.hypernet(self.task_embed if task_embeddings is None else task_embeddings)

    def __call__(self, images: jax.Array, ctx: Context = Context(),
                 task_embeddings: jax.Array | None = None) -> Encoding:
        shared = dict(ctx.shared or {})
        shared[SHARED_KEY] = self.weights(task_embeddings)
        return self.vit(images, ctx.replace(shared=shared))


def hyper_blocks(depth: int, positions: Sequence[str], layer_norm: bool = True) -> dict:
    """The ViT's ``blocks`` keyword: a :class:`HyperAdapter` at each of ``positions`` in every block."""
    def plug(i, pos):
        if pos not in positions:
            return None
        return functools.partial(HyperAdapter, i, pos, tuple(positions), layer_norm)

    return dict(blocks=tuple(BlockPlugs(attention_adapter=plug(i, "attention"), mlp_adapter=plug(i, "mlp"))
                             for i in range(depth)))
