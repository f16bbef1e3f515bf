"""optax wrappers for chains that start with a multi-task transform.

Generic optax wrappers assume the updates are shaped like the parameters; per-task gradients carry a
leading task axis, so ``optax.MultiSteps`` and ``optax.apply_if_finite`` cannot wrap a multi-task
chain from the outside (they work inside it, after the multi-task transform, on the combined update).
These two can:

* :func:`multi_steps` — gradient accumulation over micro-batches: the per-task gradients and losses
  are averaged over ``every_k`` calls and the method runs once, on the mean (it sees the Gramian of
  the large batch's gradients, not a mean of small-batch Gramians); the other calls return zeros.
* :func:`apply_if_finite` — skips (zero update, inner state kept) a step whose losses or combined
  update are not finite, up to ``max_consecutive_errors`` in a row, as ``optax.apply_if_finite``.

``optax.inject_hyperparams`` can wrap a multi-task chain directly (it forwards the per-task gradients
and extra arguments untouched). Masking and freezing (``optax.masked``, ``optax.multi_transform`` with
``optax.set_to_zero``) go inside, after the multi-task transform, where the updates are shaped like the
parameters: ``optax.chain(as_optax(method, T), optax.masked(optax.adam(lr), mask))``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtljax.optim.task_grads import Partition, TaskGradients, _Rows


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.asarray(True)


def _losses_of(grads, losses):
    return grads.losses if isinstance(grads, TaskGradients) else losses


class ApplyIfFiniteState(NamedTuple):
    notfinite_count: jax.Array
    last_finite: jax.Array
    total_notfinite: jax.Array
    inner_state: Any


def apply_if_finite(inner: optax.GradientTransformation, max_consecutive_errors: int
                    ) -> optax.GradientTransformationExtraArgs:
    """Skip non-finite steps of a multi-task chain (see the module docstring)."""
    inner = optax.with_extra_args_support(inner)

    def init(params):
        zero = jnp.zeros((), jnp.int32)
        return ApplyIfFiniteState(zero, jnp.asarray(True), zero, inner.init(params))

    def update(grads, state, params=None, *, losses=None, **extra):
        kw = dict(extra, **({"losses": losses} if losses is not None else {}))
        updates, new_inner = inner.update(grads, state.inner_state, params, **kw)
        loss_values = _losses_of(grads, losses)
        finite = _all_finite(updates) & (_all_finite(loss_values) if loss_values is not None else True)
        count = jnp.where(finite, 0, state.notfinite_count + 1)
        accept = finite | (count > max_consecutive_errors)
        updates = jax.tree.map(lambda u: jnp.where(accept, u, jnp.zeros_like(u)), updates)
        new_inner = jax.tree.map(lambda n, o: jnp.where(accept, n, o), new_inner, state.inner_state)
        return updates, ApplyIfFiniteState(count, finite, state.total_notfinite + (~finite).astype(jnp.int32),
                                           new_inner)

    return optax.GradientTransformationExtraArgs(init, update)


class MultiStepsState(NamedTuple):
    mini_step: jax.Array
    rows: Any  # accumulated per-task gradients, every leaf [T, *param.shape]
    extra: Any  # accumulated gradient of the auxiliary terms (shaped like the parameters)
    losses: jax.Array  # [T]
    inner_state: Any


def multi_steps(inner: optax.GradientTransformation, every_k: int, num_tasks: int
                ) -> optax.GradientTransformationExtraArgs:
    """Accumulate per-task gradients over ``every_k`` micro-batches, then apply ``inner`` once.

    Input: stacked per-task gradients (with ``losses=``) or :class:`TaskGradients` at level ``param``
    (whose rows, task-specific partition and auxiliary gradient are kept).
    """
    if not isinstance(every_k, int) or every_k < 1:
        raise ValueError(f"every_k: must be a positive integer, got {every_k!r}")
    inner = optax.with_extra_args_support(inner)

    def init(params):
        rows = jax.tree.map(lambda p: jnp.zeros((num_tasks, *p.shape), p.dtype), params)
        return MultiStepsState(jnp.zeros((), jnp.int32), rows, jax.tree.map(jnp.zeros_like, params),
                               jnp.zeros((num_tasks,), jnp.float32), inner.init(params))

    def update(grads, state, params=None, *, losses=None, key=None, **extra):
        if isinstance(grads, TaskGradients):
            got, part = grads.rows(), grads.part
            rows = part.merge(got.shared, got.specific)
            aux = part.merge(*got.extra) if got.extra is not None else None
            losses, key = grads.losses, grads.key if grads.key is not None else key
        else:
            if losses is None:
                raise ValueError("multi_steps: pass losses=... with stacked per-task gradients")
            rows, aux, part = grads, None, Partition(params)
        add = lambda acc, new: jax.tree.map(lambda a, n: a + n.astype(a.dtype), acc, new)  # noqa: E731
        acc_rows, acc_losses = add(state.rows, rows), state.losses + losses.astype(jnp.float32)
        acc_extra = add(state.extra, aux) if aux is not None else state.extra
        emit = state.mini_step == every_k - 1

        def final(_):
            scale = lambda t: jax.tree.map(lambda x: x / every_k, t)  # noqa: E731
            s, h = part.split(scale(acc_rows))
            e = part.split(scale(acc_extra)) if aux is not None else None
            mean = TaskGradients(acc_losses / every_k, part, key=key)
            mean._rows = _Rows(s, h, e)
            updates, new_inner = inner.update(mean, state.inner_state, params, **extra)
            zero = lambda t: jax.tree.map(jnp.zeros_like, t)  # noqa: E731
            return updates, MultiStepsState(jnp.zeros((), jnp.int32), zero(acc_rows), zero(acc_extra),
                                            jnp.zeros_like(acc_losses), new_inner)

        def hold(_):
            updates = jax.tree.map(jnp.zeros_like, params)
            return updates, MultiStepsState(state.mini_step + 1, acc_rows, acc_extra, acc_losses, state.inner_state)

        return jax.lax.cond(emit, final, hold, None)

    return optax.GradientTransformationExtraArgs(init, update)


__all__ = ["ApplyIfFiniteState", "MultiStepsState", "apply_if_finite", "multi_steps"]
