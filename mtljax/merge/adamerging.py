"""AdaMerging (Yang et al., ICLR 2024, "AdaMerging: Adaptive Model Merging for Multi-Task Learning").

Task-wise: ``θ = θ_0 + Σ_t λ_t τ_t``; layer-wise: ``θ^l = θ_0^l + Σ_t λ_t^l τ_t^l`` for every parameter
tensor ``l`` (eq. 3 and 4 of the paper). The coefficients start at 0.3 (the task-arithmetic value) and
minimise the Shannon entropy of each task's predictions on *unlabelled* test inputs of that task, summed
over tasks (eq. 6), with Adam (lr 1e-3) and clipped to ``[0, 1]`` after each step — as the reference
code (EnnengYang/AdaMerging) does; the heads are the experts' own and stay frozen.

Deviation: the paper's tasks are all classification. A regression task has no prediction entropy,
so it adds nothing to the objective here (its coefficient still moves through the other tasks'
gradients where coefficients are shared — never, for task-wise λ_t of its own: it stays at the
initial value). "AdaMerging++" (the same search over TIES-processed task vectors) is
:func:`adamerging` given TIES-trimmed vectors; it is not run separately.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import optax

from mtljax.merge import coefficients as co
from mtljax.merge.vectors import PyTree


def entropy_loss(outputs: Mapping[str, jax.Array], masks: Mapping[str, jax.Array],
                 classification: Sequence[str]) -> jax.Array:
    """``Σ_t`` mean prediction entropy of task ``t`` over its own examples (``masks[t]``), classification tasks."""
    return sum(co.entropy(outputs[t], masks[t]) for t in classification)


def adamerging(pretrained: PyTree, stacked: PyTree, forward: Callable[[PyTree, Any], tuple], batches: Iterator,
               classification: Sequence[str], *, granularity: str = "layer", init: float = 0.3,
               steps: int = 500, learning_rate: float = 1e-3, log_every: int = 0,
               log: Callable[[str], None] = print) -> tuple[PyTree, PyTree, list[float]]:
    """``(merged params, coefficients, entropy per step)``.

    ``stacked``: the task vectors stacked ``[T, ...]``; ``forward(params, batch) -> (outputs, masks)``,
    the per-task logits of the merged model and which examples belong to which task.
    """
    def loss(params, batch):
        outputs, masks = forward(params, batch)
        return entropy_loss(outputs, masks, classification)

    num_tasks = jax.tree.leaves(stacked)[0].shape[0]
    c0 = co.init_coefficients(pretrained, num_tasks, granularity, init)
    c, losses = co.learn(loss, pretrained, stacked, c0, batches, steps=steps, optimizer=optax.adam(learning_rate),
                         bounds=(0.0, 1.0), log_every=log_every, log=log)
    return co.combine(pretrained, stacked, c), c, losses
