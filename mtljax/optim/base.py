"""The shape every multi-task optimization method has, and its optax face.

A method turns per-task information into one update of the shared parameters. Methods differ in what
they need, and the trainer computes only that (:attr:`Method.needs`):

* ``"losses"`` — loss weightings (UW, DWA, FAMO, ...): ``weights(losses, state, key) -> (w, state)``;
  the shared update is ``Σ_t w_t ∇L_t``, computed as *one* VJP with cotangent ``w``.
* ``"gramian"`` — aggregators that depend on the task gradients only through their Gramian
  ``G = J Jᵀ`` (MGDA, IMTL-G, Nash-MTL, UPGrad, CAGrad, ...): ``weights(losses, state, key, gramian=G)``.
  The update is again ``Jᵀ w``: one extra VJP, no ``T × #params`` matrix needs to be kept.
* ``"jacobian"`` — aggregators that act on the gradient vectors themselves (GradDrop):
  ``aggregate(jacobian, losses, state, key) -> (update, state)`` where ``jacobian`` is a pytree whose
  leaves have a leading task axis.

:func:`as_optax` wraps any method as an ``optax.GradientTransformationExtraArgs`` whose ``updates`` are
the stacked per-task gradients (leading task axis) and whose extra arguments are ``losses`` and
``key``; so ``optax.chain(as_optax(upgrad(), num_tasks), optax.adamw(1e-3))`` works on a Jacobian.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

NEEDS = ("losses", "gramian", "jacobian")


@dataclasses.dataclass(frozen=True)
class Method:
    """A multi-task optimization method (pure functions; its state is a pytree)."""

    name: str
    needs: str
    init: Callable[[int], Any]  # num_tasks -> state
    weights: Callable[..., tuple[jax.Array, Any]] | None = None
    aggregate: Callable[..., tuple[Any, Any]] | None = None
    stochastic: bool = False

    def __post_init__(self):
        if self.needs not in NEEDS:
            raise ValueError(f"method {self.name!r}: needs must be one of {NEEDS}")
        if (self.needs == "jacobian") != (self.aggregate is not None):
            raise ValueError(f"method {self.name!r}: 'jacobian' methods define aggregate, others weights")


def gramian_of(jacobian) -> jax.Array:
    """``G = J Jᵀ`` of a stacked-gradient pytree (leaves ``[T, ...]``), in float32."""
    leaves = jax.tree.leaves(jacobian)
    t = leaves[0].shape[0]
    flat = [leaf.reshape(t, -1).astype(jnp.float32) for leaf in leaves]
    return sum(f @ f.T for f in flat)


def combine(jacobian, w: jax.Array):
    """``Jᵀ w``: the weighted sum of stacked per-task gradients."""
    return jax.tree.map(lambda j: jnp.tensordot(w.astype(j.dtype), j, axes=1), jacobian)


class MultiTaskState(NamedTuple):
    inner: Any
    count: jax.Array


def as_optax(method: Method, num_tasks: int) -> optax.GradientTransformationExtraArgs:
    """The method as an optax transform over stacked per-task gradients.

    ``update(jacobian, state, params=None, *, losses, key=None)`` returns the combined update (a pytree
    shaped like one task's gradient). ``key`` is required for stochastic methods; without it the key is
    derived from the step count, so the transform stays deterministic and pure.
    """

    if num_tasks < 1:
        raise ValueError(f"{method.name}: num_tasks must be >= 1, got {num_tasks}")

    def init(params):
        del params
        return MultiTaskState(inner=method.init(num_tasks), count=jnp.zeros((), jnp.int32))

    def update(jacobian, state, params=None, *, losses=None, key=None, **extra):
        del params, extra
        got = jax.tree.leaves(jacobian)[0].shape[0]
        if got != num_tasks:
            raise ValueError(f"{method.name}: expected gradients stacked over {num_tasks} tasks, got {got}")
        if losses is None:
            raise ValueError(f"{method.name}: pass losses=... (per-task losses) to update")
        inner = state.inner
        if key is None:
            key = jax.random.fold_in(jax.random.PRNGKey(0), state.count)
        if method.needs == "jacobian":
            out, inner = method.aggregate(jacobian, losses, inner, key)
        else:
            gram = gramian_of(jacobian) if method.needs == "gramian" else None
            w, inner = method.weights(losses, inner, key, gramian=gram)
            out = combine(jacobian, w)
        return out, MultiTaskState(inner=inner, count=state.count + 1)

    return optax.GradientTransformationExtraArgs(init, update)
