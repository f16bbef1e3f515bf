"""The dtype policy of the multi-task methods: compute in the inputs' dtype, keep the state's dtypes.

* **Weights** are computed in the *working dtype* (:func:`working_dtype`): the promoted dtype of the
  inputs a method reads (the Gramian, and the losses where it uses them), but at least float32 —
  bfloat16/float16 or integer inputs are computed in float32, as before this policy. Float32 inputs
  therefore give exactly the float32 computation, and with ``jax_enable_x64`` float64 inputs give
  float64 weights computed in float64 (solvers included). GradDrop, which returns an update rather
  than weights, computes it in the stacked gradients' dtype, as :func:`~mtljax.optim.base.combine` does.
* **State** keeps the dtypes ``init`` gave it (float32 arrays, int32 counters) whatever the inputs: a
  state is a fixed-structure carry (``jit``, ``scan``, checkpoints), so a call never changes its
  dtypes. State arithmetic runs in the working dtype and the new state is cast back
  (:func:`cast_like`); with float64 inputs, weights that are read from the state (UW, GradNorm, FAMO's
  logits, ...) have float32 precision.
* **Random draws** (RLW's weights, GradDrop's uniforms) are float32 in every mode, so a key gives the
  same draws for float32 and float64 inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def working_dtype(*values) -> jnp.dtype:
    """The floating dtype a method computes in for these inputs: their promoted dtype, at least float32."""
    return jnp.result_type(*values, jnp.float32)


def cast_like(tree, reference):
    """``tree`` with every leaf cast to the dtype of the matching leaf of ``reference``."""
    return jax.tree.map(lambda x, ref: jnp.asarray(x).astype(jnp.result_type(ref)), tree, reference)
