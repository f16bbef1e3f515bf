"""Self Positioning (2024): place the merged model at ``θ = θ_0 + Σ_t α_t τ_t`` with the task-wise
coefficients ``α`` found by stochastic gradient descent on a small, class-balanced probe set of
labelled examples of every task (the summed task losses), starting from the task-arithmetic point
``α_t = λ`` (0.3).

Where it sits among its neighbours: task arithmetic fixes ``α``; AdaMerging learns it without labels
(entropy); aTLAS learns one coefficient per tensor with Adam; Self Positioning learns one per task, with
labels, by plain SGD with momentum — few values, so few examples suffice. Deviation: the paper's own
probe-set construction and schedule are not reproduced beyond "K examples per task, SGD"; ``α`` is left
unconstrained (it may leave [0, 1]).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import optax

from mtljax.merge import coefficients as co
from mtljax.merge.vectors import PyTree


def self_positioning(pretrained: PyTree, stacked: PyTree, loss_fn: Callable[[PyTree, Any], jax.Array],
                     batches: Iterator, *, init: float = 0.3, steps: int = 200, learning_rate: float = 1e-2,
                     momentum: float = 0.9, log_every: int = 0,
                     log: Callable[[str], None] = print) -> tuple[PyTree, jax.Array, list[float]]:
    """``(merged params, α [T], loss per step)``."""
    num_tasks = jax.tree.leaves(stacked)[0].shape[0]
    a0 = co.init_coefficients(pretrained, num_tasks, "task", init)
    a, losses = co.learn(loss_fn, pretrained, stacked, a0, batches, steps=steps,
                         optimizer=optax.sgd(learning_rate, momentum=momentum), log_every=log_every, log=log)
    return co.combine(pretrained, stacked, a), a, losses
