"""Weight averaging: the uniform "model soup" (Wortsman et al., 2022, "Model soups: averaging weights of
multiple fine-tuned models improves accuracy without increasing inference time", the uniform soup;
FusionBench's "simple average").

Equation: ``θ = (1/T) Σ_t θ_t`` over the ``T`` fine-tuned models, which is the same as
``θ_0 + (1/T) Σ_t τ_t`` (task arithmetic with ``λ = 1/T``).

Deviations: none in the result. The soups paper averages models fine-tuned from one initialisation on
*one* task with different hyper-parameters; here, as in the merging literature, the models are experts
of different tasks. The mean is accumulated in float32 (at least) and cast back to each pretrained
leaf's dtype, so bfloat16 experts do not lose precision in the sum. ``pretrained`` serves only to check
the experts' structure and to fix the output dtypes.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mtljax.merge.vectors import PyTree, check_finetuned


def weight_average(pretrained: PyTree, finetuned: Sequence[PyTree]) -> PyTree:
    """The element-wise mean of the fine-tuned trees, in ``pretrained``'s structure and dtypes."""
    finetuned = check_finetuned(pretrained, finetuned)

    def mean(p, *xs):
        acc = jnp.promote_types(p.dtype, jnp.float32)
        return (sum(x.astype(acc) for x in xs) / len(xs)).astype(p.dtype)

    return jax.tree.map(mean, pretrained, *finetuned)
