"""Learned merging coefficients: ``θ(c) = θ_0 + Σ_t c_t ⊙ τ_t`` with ``c`` trained by optax.

The engine behind AdaMerging (:mod:`~mtljax.merge.adamerging`), aTLAS (:mod:`~mtljax.merge.atlas`) and
Self Positioning (:mod:`~mtljax.merge.self_positioning`), which differ in the granularity of ``c``, its
initial value, its constraint and the loss that trains it.

Granularity (:func:`init_coefficients`):

* ``"task"``: one coefficient per task, ``c [T]`` (task-wise AdaMerging, Self Positioning);
* ``"layer"``: one per task per parameter tensor, a pytree shaped like ``θ_0`` whose leaves are
  ``[T]`` (layer-wise AdaMerging; aTLAS's "parameter blocks" are the same tensors).

:func:`combine` forms ``θ(c)`` *inside* the jitted step, so the only per-task memory is the stacked
task vectors ``τ [T, ...]`` themselves: no merged copy per task is ever stored, and the gradient with
respect to ``c_t`` is the inner product ``⟨∂L/∂θ, τ_t⟩`` (per tensor for layer-wise coefficients),
which reverse-mode AD forms from one backward pass through the merged model.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import optax

from mtljax.merge.vectors import MergeError, PyTree

GRANULARITIES = ("task", "layer")


def init_coefficients(pretrained: PyTree, num_tasks: int, granularity: str, value: float) -> PyTree:
    """Coefficients of ``granularity`` for ``num_tasks`` tasks, all equal to ``value`` (float32)."""
    if granularity not in GRANULARITIES:
        raise MergeError(f"granularity: must be one of {GRANULARITIES}, got {granularity!r}")
    if num_tasks < 1:
        raise MergeError("finetuned: no task vectors to merge")
    if granularity == "task":
        return jnp.full((num_tasks,), value, jnp.float32)
    return jax.tree.map(lambda _: jnp.full((num_tasks,), value, jnp.float32), pretrained)


def combine(pretrained: PyTree, stacked: PyTree, coefficients: PyTree) -> PyTree:
    """``θ_0 + Σ_t c_t τ_t`` from task vectors stacked ``[T, ...]`` per leaf (:func:`~mtljax.merge.vectors.stack`);
    ``coefficients`` task-wise ``[T]`` or layer-wise (a tree of ``[T]``). The result has ``θ_0``'s dtypes."""
    def one(p, tau, c):
        mixed = jnp.tensordot(c.astype(jnp.float32), tau.astype(jnp.float32), axes=(0, 0))
        return (p.astype(jnp.float32) + mixed).astype(p.dtype)

    if isinstance(coefficients, jax.Array) and coefficients.ndim == 1:
        return jax.tree.map(lambda p, tau: one(p, tau, coefficients), pretrained, stacked)
    return jax.tree.map(one, pretrained, stacked, coefficients)


def entropy(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean Shannon entropy (nats) of ``softmax(logits)`` over the examples where ``mask`` is 1."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    h = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    mask = mask.reshape(h.shape).astype(jnp.float32)
    return jnp.sum(h * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def learn(loss_fn: Callable[[PyTree, Any], jax.Array], pretrained: PyTree, stacked: PyTree, coefficients: PyTree,
          batches: Iterator, *, steps: int, optimizer: optax.GradientTransformation,
          bounds: tuple[float, float] | None = None, log_every: int = 0,
          log: Callable[[str], None] = print) -> tuple[PyTree, list[float]]:
    """Train ``coefficients`` for ``steps`` steps on ``loss_fn(merged_params, batch)``.

    ``bounds``: clip the coefficients to ``[lo, hi]`` after every update (AdaMerging's ``[0, 1]``);
    ``None`` leaves them free. Returns the coefficients and the loss at every step (the loss of the
    coefficients *before* that step's update). One compiled step serves every batch.
    """
    if steps < 1:
        raise MergeError(f"steps: must be >= 1, got {steps}")

    @jax.jit
    def step(c, opt_state, batch, pretrained, stacked):  # the parameters are arguments, not constants
        loss, grads = jax.value_and_grad(lambda c: loss_fn(combine(pretrained, stacked, c), batch))(c)
        updates, opt_state = optimizer.update(grads, opt_state, c)
        c = optax.apply_updates(c, updates)
        if bounds is not None:
            c = jax.tree.map(lambda x: jnp.clip(x, *bounds), c)
        return c, opt_state, loss

    opt_state = optimizer.init(coefficients)
    losses = []
    for i in range(steps):
        coefficients, opt_state, loss = step(coefficients, opt_state, next(batches), pretrained, stacked)
        losses.append(float(loss))
        if log_every and (i + 1) % log_every == 0:
            log(f"  coefficients step {i + 1}/{steps}: loss {losses[-1]:.4f}")
    return coefficients, losses
