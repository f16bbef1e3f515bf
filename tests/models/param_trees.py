"""Parameter-tree helpers shared by the per-task-module tests (peft, prompt pathways, MULTI-LANE)."""

import jax
import jax.numpy as jnp
import numpy as np

from mtljax.optim.trainable import path_string
from mtljax.trainer.state import param_shapes


def shapes(model, x):
    """``model``'s parameters as ``ShapeDtypeStruct`` for inputs shaped like ``x`` (one example or more)."""
    return param_shapes(model, x.shape[1:])


def keys(path) -> list[str]:
    """The dict keys of a jax key path."""
    return path_string(path).split("/")


def random_like(tree, seed=0, scale=0.5):
    """Values ``N(0, scale²)`` shaped like ``tree`` (arrays or ``ShapeDtypeStruct``)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), tree)


def strip(params, scopes):
    """``params`` without the entries whose key contains one of ``scopes`` (and the scopes they leave empty)."""
    if not isinstance(params, dict):
        return params
    out = {k: strip(v, scopes) for k, v in params.items() if not any(s in k for s in scopes)}
    return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}
