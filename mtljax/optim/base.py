"""A multi-task optimization method, and the optax transform that applies it.

A method turns per-task information into one update. Methods differ in what they read
(:attr:`Method.needs`), and only that is computed (:class:`~mtljax.optim.task_grads.TaskGradients`):

* ``"losses"`` — loss weightings (UW, DWA, FAMO, ...): ``weights(losses, state, key) -> (w, state)``;
  the update ``Σ_t w_t ∇L_t`` is *one* VJP with cotangent ``w``.
* ``"gramian"`` — aggregators that read the task gradients only through ``G = J Jᵀ`` (MGDA, IMTL-G,
  Nash-MTL, UPGrad, CAGrad, ...): ``weights(losses, state, key, *, gramian=G)``; the update is again
  ``Jᵀ w`` (one more VJP at level ``gramian``: no ``T × #params`` matrix is kept).
* ``"jacobian"`` — aggregators of the gradient vectors themselves (GradDrop):
  ``aggregate(rows, losses, state, key) -> (update, state)``, rows a list of leaves ``[T, ...]``.

Task-specific parameters (heads) are left out of ``G`` and get ``Σ_t c_t ∇L_t`` with ``c = 1``
(``heads="task"``: each head its own task's gradient, MGDA/TorchJD's convention and the default of
gradient aggregators) or ``c = w`` (``"weighted"``: the gradient of ``Σ_t w_t L_t``, the default of
loss weightings and of Nash-MTL, as in their papers' code).

:func:`as_optax` makes any method an ``optax.GradientTransformationExtraArgs``, the first element of a
chain: ``optax.chain(as_optax(upgrad(), 3), optax.clip_by_global_norm(1.0), optax.adamw(1e-3))``.
Its input is the per-task gradients — a :class:`TaskGradients` (what the trainer passes), or plain
stacked gradients (every leaf ``[T, *param.shape]``) with ``losses=`` (and ``key=``) as extra
arguments — and its output an update shaped like the parameters.

Where wrappers go: transforms that expect updates shaped like the parameters (``optax.apply_if_finite``,
``optax.MultiSteps``, ``optax.masked``, ``optax.multi_transform``, clipping) go *after* the
multi-task transform, inside the chain. ``optax.inject_hyperparams`` may wrap the whole chain. To
guard or accumulate the per-task gradients themselves use :func:`mtljax.optim.apply_if_finite` and
:func:`mtljax.optim.multi_steps`, which wrap a chain that starts with a multi-task transform.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from mtljax.optim.jacobian import combine, gramian_of
from mtljax.optim.task_grads import TaskGradients

NEEDS = ("losses", "gramian", "jacobian")
HEADS = ("task", "weighted")


@dataclasses.dataclass(frozen=True)
class Method:
    """A multi-task optimization method (pure functions; its state is a pytree).

    ``heads``: how task-specific parameters are updated (``"task"`` or ``"weighted"``; empty: the
    default of the method's kind, see the module docstring). ``clip_shared > 0``: the update of the
    shared parameters is rescaled to at most that global norm (Nash-MTL's ``max_norm``).
    """

    name: str
    needs: str
    init: Callable[[int], Any]  # num_tasks -> state
    weights: Callable[..., tuple[jax.Array, Any]] | None = None
    aggregate: Callable[..., tuple[Any, Any]] | None = None
    stochastic: bool = False
    heads: str = ""
    clip_shared: float = 0.0

    def __post_init__(self):
        if self.needs not in NEEDS:
            raise ValueError(f"method {self.name!r}: needs must be one of {NEEDS}")
        if (self.needs == "jacobian") != (self.aggregate is not None):
            raise ValueError(f"method {self.name!r}: 'jacobian' methods define aggregate, others weights")
        if self.heads and self.heads not in HEADS:
            raise ValueError(f"method {self.name!r}: heads must be one of {HEADS}, got {self.heads!r}")

    @property
    def head_policy(self) -> str:
        return self.heads or ("weighted" if self.needs == "losses" else "task")


class MultiTaskState(NamedTuple):
    """State of :func:`as_optax`: the method's own state and the number of updates so far."""

    inner: Any
    count: jax.Array


def as_optax(method: Method, num_tasks: int, *, heads: str = "") -> optax.GradientTransformationExtraArgs:
    """The method as the first transform of an optax chain.

    ``update(task_grads, state, params=None, *, losses=None, key=None)``:

    * ``task_grads`` — a :class:`TaskGradients`, or a pytree of stacked per-task gradients whose
      every leaf is ``[num_tasks, *param.shape]`` (then ``losses`` ``[num_tasks]`` is required);
    * ``key`` — randomness of stochastic methods (PCGrad, RLW, GradDrop); without one the key is
      derived from the update count, so the transform stays deterministic and pure;
    * returns an update shaped like one task's gradient, and the new state.

    ``heads`` overrides the method's head policy (``"task"`` or ``"weighted"``).
    """
    if not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"{method.name}: num_tasks must be a positive integer, got {num_tasks!r}")
    if heads and heads not in HEADS:
        raise ValueError(f"heads: unknown {heads!r}; choose from {HEADS}")
    policy = heads or method.head_policy

    def init(params):
        del params
        return MultiTaskState(inner=method.init(num_tasks), count=jnp.zeros((), jnp.int32))

    def update(task_grads, state, params=None, *, losses=None, key=None, **extra):
        del extra
        with jax.named_scope("mtl_method"):  # names the method's ops in profiles (benchmarks/profile_step.py)
            return _update(task_grads, state, params, losses, key)

    def _update(task_grads, state, params, losses, key):
        if isinstance(task_grads, TaskGradients):
            grads = task_grads
        else:
            _check_stacked(method.name, task_grads, num_tasks, params)
            if losses is None:
                raise ValueError(f"as_optax({method.name}): pass losses=... ([{num_tasks}] per-task losses) with "
                                 "stacked per-task gradients")
            chex.assert_shape(losses, (num_tasks,))
            grads = TaskGradients.from_rows(task_grads, losses, key=key)
        if grads.num_tasks != num_tasks:
            raise ValueError(f"as_optax({method.name}): built for {num_tasks} tasks, got {grads.num_tasks}")
        key = grads.key if grads.key is not None else key
        if key is None:
            key = jax.random.fold_in(jax.random.PRNGKey(0), state.count)
        losses = jax.lax.stop_gradient(grads.losses)
        if method.needs == "jacobian":
            shared, inner = method.aggregate(grads.shared_rows(), losses, state.inner, key)
            out = grads.update(None, jnp.ones_like(losses), shared=shared, clip_shared=method.clip_shared)
        else:
            gram = grads.gramian() if method.needs == "gramian" else None
            w, inner = method.weights(losses, state.inner, key, gramian=gram)
            head_w = w if policy == "weighted" else jnp.ones_like(w)
            out = grads.update(w, head_w, clip_shared=method.clip_shared)
        return out, MultiTaskState(inner=inner, count=state.count + 1)

    return optax.GradientTransformationExtraArgs(init, update)


def _check_stacked(name: str, task_grads, num_tasks: int, params) -> None:
    """A clear error when stacked per-task gradients miss their leading task axis."""
    hint = ("optax wrappers that expect updates shaped like the parameters (MultiSteps, apply_if_finite, "
            "masked) go inside the chain after the multi-task transform, or use mtljax.optim.multi_steps / "
            "mtljax.optim.apply_if_finite around it")
    flat = jax.tree_util.tree_flatten_with_path(task_grads)[0]
    like = jax.tree.leaves(params) if params is not None else [None] * len(flat)
    if params is not None and len(like) != len(flat):
        raise ValueError(f"as_optax({name}): the per-task gradients have {len(flat)} leaves, the parameters "
                         f"{len(like)}")
    for (path, g), p in zip(flat, like):
        where = jax.tree_util.keystr(path) or "the gradients"
        shape = tuple(getattr(g, "shape", ()))
        if p is not None and shape == tuple(p.shape):
            raise ValueError(f"as_optax({name}): {where} has the parameter's shape {shape}: the leading task axis "
                             f"(size {num_tasks}) is missing; {hint}")
        if not shape or shape[0] != num_tasks or (p is not None and shape[1:] != tuple(p.shape)):
            expected = f"[{num_tasks}, *{tuple(p.shape)}]" if p is not None else f"[{num_tasks}, ...]"
            raise ValueError(f"as_optax({name}): {where} has shape {shape}, expected {expected} (per-task "
                             f"gradients stacked on a leading task axis of size {num_tasks}); {hint}")


__all__ = ["HEADS", "Method", "MultiTaskState", "NEEDS", "as_optax", "combine", "gramian_of"]
