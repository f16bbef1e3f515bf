"""Tiny slim models and numpy-random parameters for the slim tests (no init compilation)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtljax.config import base_config
from mtljax.models import build_model
from mtljax.tasks import Task

TASKS = (Task("cls", "multiclass", num_classes=5), Task("seg", "dense", num_classes=3))
SHAPE = (8, 8, 2)


def model_config(backbone="vit", **slim):
    c = base_config().model
    c.name = "slim"
    c.vit.update(width=16, depth=1, num_heads=4, mlp_dim=16, patch_size=4)
    c.slim.update(backbone=backbone, decoder_hidden=8, conv_channels=(4, 8), conv_dim=16, **slim)
    return c


def tiny_model(backbone="vit", tasks=TASKS, shape=SHAPE, **slim):
    return build_model(model_config(backbone, **slim), tasks, shape)


def random_params(model, shape=SHAPE, seed=1, scale=0.5):
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape))))["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def images(n=3, shape=SHAPE, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
