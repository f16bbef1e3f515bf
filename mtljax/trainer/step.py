"""The jit-compiled train and eval steps.

One idea: the objective gives the per-task losses of a batch → :func:`~mtljax.optim.task_gradients`
turns them into the per-task gradients at the configured level (lazily: a method computes only the
view it reads) → one optax chain whose first element is the multi-task transform
(:func:`~mtljax.optim.as_optax`, possibly inside SAM or flat-region SAM) makes the update → a finite
guard keeps the old state when the losses or the update are not finite (an elementwise select fused into
the update; the loop then stops the run and names the step and task, so a bad step never reaches a
checkpoint) → metrics. The parts carry named scopes (``optimizer``, ``finite_guard``; the multi-task
method's ``mtl_method``) that ``benchmarks/profile_step.py`` groups a profile by.

Both steps are ``jax.jit``-ed with explicit in/out shardings: the state by its logical axes, the batch
over the mesh's batch axes, metrics replicated.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mtljax.models.objective import Objective
from mtljax.optim.loss_scale import LossScale, scale_loss_function
from mtljax.optim.task_grads import task_gradients
from mtljax.trainer.state import TrainState


def batch_stats(tasks, outputs, batch):
    """Summed metric statistics per task (and the labelled count) for one batch."""
    return {t.name: t.stats(outputs[t.name], batch["targets"][t.name], batch["masks"][t.name]) for t in tasks}


def make_train_step(objective: Objective, tx: optax.GradientTransformation, *, level: str = "param",
                    task_weights=None, chunk_size: int | None = None, gramian_fn: Callable | None = None,
                    loss_scale: LossScale | None = None):
    """``train_step(state, batch) -> (state, metrics)``.

    ``tx`` starts with the multi-task transform; ``level`` (``param`` | ``gramian`` | ``rep`` | ``autogram``) is where
    per-task gradients are taken; ``task_weights`` ``[T]`` statically scale the losses the method
    sees; ``gramian_fn`` assembles the Gramian of sharded gradients on a mesh. Which parameters are
    task-specific and which train is the objective's (``objective.specific``, ``objective.trainable``);
    ``tx`` and its state see the trainable parameters only. ``loss_scale`` (float16 training; the
    state then carries its :class:`~mtljax.optim.loss_scale.LossScaleState`) scales the backward
    pass: a dynamic scale skips a step whose gradients overflow instead of stopping the run.
    """
    tasks = objective.tasks

    def train_step(state: TrainState, batch: Mapping):
        k_model, k_method = jax.random.split(jax.random.fold_in(state.rng, state.step))
        params, frozen = objective.split(state.params)  # frozen parameters are not differentiated
        fn = objective.loss_function(batch, rng=k_model, step=state.step, task_weights=task_weights, frozen=frozen)
        if loss_scale is not None:
            fn = scale_loss_function(fn, state.loss_scale.scale)
        grads, aux = task_gradients(fn, params, level=level, specific=objective.specific(params),
                                    chunk_size=chunk_size, key=k_method, gramian_fn=gramian_fn)
        with jax.named_scope("optimizer"):  # the scopes name the step's parts in profiles (benchmarks/profile_step.py)
            updates, opt_state = tx.update(grads, state.opt_state, params)
            new = state.replace(step=state.step + 1, params=objective.join(optax.apply_updates(params, updates), frozen),
                                opt_state=opt_state)

        losses = aux["task_losses"]
        weights = grads.applied_weights if grads.applied_weights is not None else jnp.ones_like(losses)
        combined = grads.applied_update if grads.applied_update is not None else updates
        aux_losses = aux.get("losses", {})
        total = jnp.sum(grads.losses) + sum(aux_losses.values(), jnp.zeros((), jnp.float32))
        grad_norm = optax.global_norm(combined)
        with jax.named_scope("finite_guard"):
            losses_finite = jnp.isfinite(total) & jnp.all(jnp.isfinite(losses))
            grads_finite = (jnp.isfinite(grad_norm) & jnp.all(jnp.isfinite(weights))
                            & jnp.isfinite(optax.global_norm(updates)))
            applied = losses_finite & grads_finite
            # keep the old state where the step is not finite: an elementwise select that XLA fuses into the
            # update (a lax.cond here made XLA copy the whole state, Adam's moments included, every step)
            new = jax.tree.map(lambda n, o: jnp.where(applied, n, o), new, state)
            finite, extra = applied, {}
            if loss_scale is not None:
                # an overflow of the scaled gradients skips the step (parameters and optimizer state are kept,
                # the step counter runs on with the data) and lowers the scale;
                # only a non-finite loss, or an overflow at the smallest scale, stops the run
                # (a static scale cannot adapt: there an overflow stops the run like any non-finite step)
                finite = losses_finite & (grads_finite | (loss_scale.dynamic and state.loss_scale.scale
                                                          >= loss_scale.min_scale * loss_scale.factor))
                new = new.replace(step=state.step + 1, loss_scale=loss_scale.adjust(state.loss_scale, grads_finite))
                extra = {"loss_scale": state.loss_scale.scale, "skipped_steps": (~applied).astype(jnp.float32)}
                # a skipped step's gradient norm and weights are not finite: they count as 0 in the logged means
                grad_norm, weights = (jnp.where(grads_finite, grad_norm, 0.0),
                                      jnp.where(grads_finite, weights, jnp.zeros_like(weights)))
        metrics = {
            "loss": total, "task_losses": losses, "task_weights": weights, "grad_norm": grad_norm,
            "finite": finite, "stats": batch_stats(tasks, aux["outputs"], batch),
            "aux": {**aux.get("metrics", {}), **{f"aux_loss/{k}": v for k, v in aux_losses.items()}, **extra},
        }
        return new, metrics

    return train_step


def make_eval_step(objective: Objective):
    """``eval_step(params, batch) -> {"stats": per-task sums, "loss": {task: {"sum", "count"}}}``."""
    tasks = objective.tasks

    def eval_step(params, batch):
        losses, outputs, _ = objective.forward(params, batch, train=False)
        counts = {t.name: jnp.sum(batch["masks"][t.name]) for t in tasks}
        loss_sums = {t.name: {"sum": losses[i] * counts[t.name], "count": counts[t.name]} for i, t in enumerate(tasks)}
        return {"stats": batch_stats(tasks, outputs, batch), "loss": loss_sums}

    return eval_step


def jit_train_step(train_step, mesh, state_shardings, batch_sharding):
    replicated = NamedSharding(mesh, P())
    return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)


def jit_eval_step(eval_step, mesh, param_shardings, batch_sharding):
    return jax.jit(eval_step, in_shardings=(param_shardings, batch_sharding),
                   out_shardings=NamedSharding(mesh, P()))
