"""The jit-compiled train and eval steps.

The step computes every task's masked loss, combines them with the task weights
(``Σ_t w_t L_t + Σ aux losses``), differentiates, and applies the optax update. If the loss or the
gradient is not finite the step returns the *old* state unchanged (and says so in its metrics), so a
bad step can never reach a checkpoint; the loop stops the run and names the step and task.

Both steps are ``jax.jit``-ed with explicit in/out shardings: the state by its logical axes, the batch
over the mesh's batch axes, metrics replicated.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mtljax.tasks import Task
from mtljax.train.state import TrainState


def task_losses(model, tasks: Sequence[Task], params, batch, *, train: bool, rng=None):
    """Per-task losses ``[T]``, outputs by task, and the model's aux dict."""
    rngs = {"dropout": rng} if rng is not None else {}
    outputs, aux = model.apply({"params": params}, batch["inputs"], train=train, rngs=rngs)
    losses = jnp.stack([t.loss(outputs[t.name], batch["targets"][t.name], batch["masks"][t.name]) for t in tasks])
    return losses, outputs, aux


def batch_stats(tasks: Sequence[Task], outputs, batch):
    """Summed metric statistics per task (and the labelled count) for one batch."""
    return {t.name: t.stats(outputs[t.name], batch["targets"][t.name], batch["masks"][t.name]) for t in tasks}


def make_train_step(model, tasks: Sequence[Task], tx: optax.GradientTransformation,
                    task_weights: Mapping[str, float] | None = None):
    weights = jnp.asarray([float((task_weights or {}).get(t.name, 1.0)) for t in tasks], jnp.float32)

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)

        def objective(params):
            losses, outputs, aux = task_losses(model, tasks, params, batch, train=True, rng=rng)
            aux_total = sum(aux["losses"].values(), jnp.zeros((), jnp.float32))
            return jnp.dot(weights, losses) + aux_total, (losses, outputs, aux)

        (total, (losses, outputs, aux)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(total) & jnp.isfinite(grad_norm) & jnp.all(jnp.isfinite(losses))
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
        metrics = {
            "loss": total,
            "task_losses": losses,
            "grad_norm": grad_norm,
            "finite": finite,
            "stats": batch_stats(tasks, outputs, batch),
            "aux": aux["metrics"],
        }
        return new, metrics

    return train_step


def make_eval_step(model, tasks: Sequence[Task]):
    def eval_step(params, batch):
        losses, outputs, _ = task_losses(model, tasks, params, batch, train=False)
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
