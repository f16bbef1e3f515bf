"""aTLAS (Zhang et al., NeurIPS 2024, "Knowledge Composition using Task Vectors with Learned Anisotropic
Scaling"): ``θ = θ_0 + Σ_t Λ_t τ_t`` with one learned coefficient per task per parameter block
(``Λ_t`` block-diagonal: a scalar for each parameter tensor of each task vector), initialised at 0 and
trained with the tasks' own supervised losses on a few labelled examples (Adam).

As in the paper's few-shot setting, only the coefficients train (the backbone's values come from
``θ_0`` and the task vectors, the heads are the experts' and stay frozen), so the number of learned
values is ``T × (number of parameter tensors)`` whatever the model's size. Deviation: the paper's
optional random partitions of a block into K parts (more coefficients per tensor) are not built
(K = 1); losses of regression tasks count like the classification ones (the paper has none).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import optax

from mtljax.merge import coefficients as co
from mtljax.merge.vectors import PyTree


def atlas(pretrained: PyTree, stacked: PyTree, loss_fn: Callable[[PyTree, Any], jax.Array], batches: Iterator, *,
          init: float = 0.0, steps: int = 200, learning_rate: float = 1e-2, log_every: int = 0,
          log: Callable[[str], None] = print) -> tuple[PyTree, PyTree, list[float]]:
    """``(merged params, coefficients, loss per step)``; ``loss_fn(params, batch)``: the summed task
    losses of the merged model on a labelled batch."""
    num_tasks = jax.tree.leaves(stacked)[0].shape[0]
    c0 = co.init_coefficients(pretrained, num_tasks, "layer", init)
    c, losses = co.learn(loss_fn, pretrained, stacked, c0, batches, steps=steps,
                         optimizer=optax.adam(learning_rate), log_every=log_every, log=log)
    return co.combine(pretrained, stacked, c), c, losses
