"""FM3-style hypernetwork adaptation to few-shot tasks: adapters generated from a support set, no
gradient step needed (after FM3's task-specific hypernetworks; HyperFormer++'s hypernetwork,
:mod:`~mtljax.models.peft.hyper`, fed by the support-set encoder of :mod:`~mtljax.models.peft.task_encoder`).

A frozen ViT ``f``, the shared hypernetwork ``H`` and the support encoder ``S``. For a task with support
set ``{(x_k, y_k)}``::

    z = S({(f(x_k), y_k)})                       task embedding from the base features (no adapters)
    g_z(x) = ViT with the adapters H(z) (x)       adapted features
    head = closed_form({(g_z(x_k), y_k)})         no gradients (below)
    ŷ(x) = head(g_z(x))

**0 steps** (:func:`adapt` with ``steps=0``): the above — one encoder pass over the support set, one
generator pass, one closed-form head. **k steps** (``steps=k``): then ``k`` Adam steps on the support
loss of the task embedding ``z`` and the head only (the hypernetwork and the encoder stay fixed).

**Closed-form heads** (on the adapted support features ``h_k``): classification — class prototypes
(Snell et al., 2017): ``logit_c(h) = −‖h − μ_c‖² / D`` (``μ_c`` the mean of class ``c``; a class absent
from the support set gets logit −1e9); regression — ridge regression ``w = (Hᶜᵀ Hᶜ + λ K I)⁻¹ Hᶜᵀ yᶜ``
on centred features and targets (``b = ȳ − h̄ᵀ w``, ``λ = ridge``), as R2-D2 (Bertinetto et al., 2019).
Both are linear heads ``h W + b`` (:class:`Head`), so k-step fine-tuning starts from them.

**Meta-training** (:func:`meta_loss`): on a batch of source-task examples, every task's embedding comes
from the batch's first ``K`` examples (its support subset, labelled for that task); its head is the
closed form on them, and the loss is the head's loss on the other examples (query), summed over tasks —
the episode loss of ProtoNets / R2-D2, so the hypernetwork and the encoder learn what the 0-step path
uses. Only ``hypernet`` and ``encoder`` are trained (:func:`meta_train`); the ViT stays the pretrained one.

Pure functions over a parameter dict ``{"backbone": <the ViT's parameters + hypernet/...>,
"encoder": ...}``; nothing here needs the trainer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mtljax.models.peft.hyper import HyperViT, hyper_blocks
from mtljax.models.peft.task_encoder import KINDS, SupportEncoder, _masked_mean
from mtljax.models.plugs import Context
from mtljax.models.vit import ViT

NEW = ("hypernet", "task_embed")  # the backbone's keys that are not the ViT's


class TaskSpec(NamedTuple):
    """A task for the few-shot functions: its name, ``kind`` (``classification`` | ``regression``) and classes."""

    name: str
    kind: str
    num_classes: int = 0


class Head(NamedTuple):
    """A linear head ``h W + b``: ``w [D, O]``, ``b [O]`` (O = classes, or 1 for regression)."""

    w: jax.Array
    b: jax.Array


class Adapted(NamedTuple):
    """A new task adapted from its support set: its embedding ``z [E]`` and its head."""

    embedding: jax.Array
    head: Head


@dataclasses.dataclass(frozen=True)
class FM3:
    """The pieces: ``vit`` (the plain ViT: its dimensions; its parameters are the pretrained ones) and the
    hypernetwork's and encoder's settings (HyperFormer++'s defaults)."""

    vit: ViT
    adapter_dim: int = 2
    positions: Sequence[str] = ("attention", "mlp")
    task_dim: int = 64
    hidden_dim: int = 128
    projected_dim: int = 64
    layer_norm: bool = True
    encoder_hidden: int = 128

    @property
    def hyper_vit(self) -> HyperViT:
        plugged = self.vit.clone(**hyper_blocks(self.vit.depth, tuple(self.positions), self.layer_norm))
        return HyperViT(plugged, 0, self.adapter_dim, tuple(self.positions), self.task_dim, self.hidden_dim,
                        self.projected_dim, self.layer_norm)

    @property
    def encoder(self) -> SupportEncoder:
        return SupportEncoder(self.task_dim, self.encoder_hidden)

    def init(self, rng: jax.Array, images: jax.Array, vit_params: dict | None = None) -> dict:
        """Fresh parameters; ``vit_params`` (the pretrained ViT's) replace the ViT's part."""
        r1, r2 = jax.random.split(rng)
        backbone = nn.unbox(self.hyper_vit.init(r1, images[:1], Context(task_ids=jnp.zeros(1, jnp.int32)),
                                                jnp.zeros((1, self.task_dim)))["params"])
        if vit_params is not None:
            backbone = {**vit_params, **{k: v for k, v in backbone.items() if k in NEW}}
        feats = jnp.zeros((2, self.vit.width))
        encoder = nn.unbox(self.encoder.init(r2, feats, jnp.zeros(2), "regression")["params"])
        return {"backbone": backbone, "encoder": encoder}

    def base_features(self, params: dict, images: jax.Array) -> jax.Array:
        """The frozen base ViT's pooled features ``[N, D]`` (no adapters)."""
        plain = {k: v for k, v in params["backbone"].items() if k not in NEW}
        return self.vit.apply({"params": plain}, images).pooled

    def embed(self, params: dict, features: jax.Array, labels: jax.Array, task: TaskSpec,
              mask: jax.Array | None = None) -> jax.Array:
        """The task embedding ``[E]`` of a support set given its base features."""
        return self.encoder.apply({"params": params["encoder"]}, features, labels, task.kind, task.num_classes, mask)

    def adapted_features(self, params: dict, images: jax.Array, embeddings: jax.Array,
                         task_ids: jax.Array) -> jax.Array:
        """Pooled features ``[N, D]`` of ``images`` under the adapters of ``embeddings [T, E]``, row
        ``task_ids [N]`` for each image."""
        ctx = Context(task_ids=task_ids.astype(jnp.int32))
        return self.hyper_vit.apply({"params": params["backbone"]}, images, ctx, embeddings).pooled


def closed_form_head(features: jax.Array, labels: jax.Array, task: TaskSpec, mask: jax.Array | None = None,
                     ridge: float = 1.0) -> Head:
    """Prototypes (classification) or ridge regression (regression) on ``features [K, D]`` (module docstring)."""
    h = features.astype(jnp.float32)
    k, d = h.shape
    mask = jnp.ones((k,), jnp.float32) if mask is None else mask.astype(jnp.float32)
    if task.kind == "classification":
        onehot = jax.nn.one_hot(labels, task.num_classes, dtype=jnp.float32) * mask[:, None]
        n = onehot.sum(0)
        protos = (onehot.T @ h) / jnp.maximum(n, 1.0)[:, None]  # [C, D]
        # −‖h − μ‖²/D = (2 h·μ − ‖μ‖²)/D − ‖h‖²/D; the last term is the same for every class
        b = jnp.where(n > 0, -jnp.sum(protos ** 2, axis=1) / d, -1e9)
        return Head(2.0 * protos.T / d, b)
    y = labels.astype(jnp.float32)
    hm, ym = _masked_mean(h, mask), _masked_mean(y, mask)
    hc, yc = (h - hm) * mask[:, None], (y - ym) * mask
    w = jnp.linalg.solve(hc.T @ hc + ridge * jnp.maximum(mask.sum(), 1.0) * jnp.eye(d), hc.T @ yc)
    return Head(w[:, None], (ym - hm @ w)[None])


def head_apply(head: Head, features: jax.Array) -> jax.Array:
    return features.astype(jnp.float32) @ head.w + head.b


def task_loss(outputs: jax.Array, labels: jax.Array, task: TaskSpec, mask: jax.Array | None = None) -> jax.Array:
    """Mean cross-entropy (classification) or squared error (regression) over the rows ``mask`` keeps."""
    if task.kind == "classification":
        per = optax.softmax_cross_entropy_with_integer_labels(outputs, labels.astype(jnp.int32))
    else:
        per = jnp.square(outputs[:, 0] - labels.astype(jnp.float32))
    mask = jnp.ones_like(per) if mask is None else mask.astype(jnp.float32)
    return jnp.sum(per * mask) / jnp.maximum(mask.sum(), 1.0)


def adapt(fm3: FM3, params: dict, images: jax.Array, labels: jax.Array, task: TaskSpec, *, steps: int = 0,
          learning_rate: float = 1e-2, ridge: float = 1.0, mask: jax.Array | None = None) -> Adapted:
    """A new task from its support set ``images [K, ...]``, ``labels [K]``: 0 steps (no gradient) or
    ``steps`` Adam steps on the support loss of the embedding and the head (module docstring). Jit it
    with ``fm3``, ``task``, ``steps`` static."""
    if task.kind not in KINDS:
        raise ValueError(f"adapt: kind must be one of {KINDS}, got {task.kind!r}")
    z = fm3.embed(params, fm3.base_features(params, images), labels, task, mask)
    ids = jnp.zeros(images.shape[0], jnp.int32)
    feats = fm3.adapted_features(params, images, z[None], ids)
    out = Adapted(z, closed_form_head(feats, labels, task, mask, ridge))
    if steps == 0:
        return out

    def loss(a: Adapted):
        return task_loss(head_apply(a.head, fm3.adapted_features(params, images, a.embedding[None], ids)),
                         labels, task, mask)

    tx = optax.adam(learning_rate)

    def step(carry, _):
        a, state = carry
        grads = jax.grad(loss)(a)
        updates, state = tx.update(grads, state, a)
        return (optax.apply_updates(a, updates), state), None

    (out, _), _ = jax.lax.scan(step, (out, tx.init(out)), None, length=steps)
    return out


def predict(fm3: FM3, params: dict, adapted: Adapted, images: jax.Array) -> jax.Array:
    """The adapted task's outputs ``[N, O]`` for ``images``."""
    ids = jnp.zeros(images.shape[0], jnp.int32)
    return head_apply(adapted.head, fm3.adapted_features(params, images, adapted.embedding[None], ids))


def meta_loss(fm3: FM3, params: dict, images: jax.Array, labels: dict, masks: dict, tasks: Sequence[TaskSpec],
              support: int, ridge: float = 1.0) -> jax.Array:
    """The episode loss of a batch ``images [N, ...]`` labelled for every source task in ``tasks``
    (``labels`` / ``masks``: ``{name: [N]}``): support = the first ``support`` examples, query = the rest
    (module docstring). All tasks' adapters come from one generator pass; the images run once per task."""
    n, t = images.shape[0], len(tasks)
    base = jax.lax.stop_gradient(fm3.base_features(params, images[:support]))
    z = jnp.stack([fm3.embed(params, base, labels[s.name][:support], s, masks[s.name][:support]) for s in tasks])
    reps = jnp.concatenate([images] * t)
    feats = fm3.adapted_features(params, reps, z, jnp.repeat(jnp.arange(t), n)).reshape(t, n, -1)
    total = 0.0
    for i, s in enumerate(tasks):
        y, m = labels[s.name], masks[s.name]
        head = closed_form_head(feats[i, :support], y[:support], s, m[:support], ridge)
        total = total + task_loss(head_apply(head, feats[i, support:]), y[support:], s, m[support:])
    return total


def meta_train(fm3: FM3, params: dict, batches: Iterable, tasks: Sequence[TaskSpec], support: int, steps: int,
               learning_rate: float = 1e-3, ridge: float = 1.0, log=None) -> dict:
    """``steps`` Adam steps of :func:`meta_loss` on ``batches`` (``(images, labels, masks)``), training the
    hypernetwork and the encoder only; returns the new parameters."""
    tasks = tuple(tasks)

    def split(p):
        train = {"hypernet": p["backbone"]["hypernet"], "encoder": p["encoder"]}
        return train, p

    def join(train, p):
        return {"backbone": {**p["backbone"], "hypernet": train["hypernet"]}, "encoder": train["encoder"]}

    tx = optax.adam(learning_rate)
    train, _ = split(params)
    state = tx.init(train)

    @jax.jit
    def step(train, state, p, images, labels, masks):
        value, grads = jax.value_and_grad(
            lambda tr: meta_loss(fm3, join(tr, p), images, labels, masks, tasks, support, ridge))(train)
        updates, state = tx.update(grads, state, train)
        return optax.apply_updates(train, updates), state, value

    it = iter(batches)
    for i in range(steps):
        images, labels, masks = next(it)
        train, state, value = step(train, state, params, images, labels, masks)
        if log is not None and (i % 50 == 0 or i == steps - 1):
            log(f"meta step {i}: loss {float(value):.4f}")
    return join(train, params)
