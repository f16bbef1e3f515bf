"""The train state: everything a checkpoint needs to continue a run bit-for-bit.

``step``, ``params``, ``opt_state`` (the whole optax chain's state, the multi-task method's included:
learned loss weights, loss history, EMA targets...) and ``rng`` (a raw ``uint32[2]`` key; per-step
randomness is ``fold_in(rng, step)``, so it never has to be split and stored). The data-iterator
state travels beside it in the checkpoint (see ``mtljax.train.checkpoint``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from mtljax.parallel.rules import tree_shardings


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    loss_scale: Any = None  # LossScaleState with loss scaling (config.train.loss_scale), else None (no leaves)


def dummy_inputs(input_shape, batch: int = 1):
    return jnp.zeros((batch, *input_shape), jnp.float32)


def make_init_fn(model: nn.Module, tx: optax.GradientTransformation, input_shape, split=None, loss_scale=None):
    """``init(seed_key) -> TrainState`` with logically-partitioned (boxed) leaves.

    ``split(params) -> (trainable, frozen)``: ``tx`` is initialised on the trainable ones only.
    ``loss_scale``: a :class:`~mtljax.optim.loss_scale.LossScale` whose state the train state carries.
    """

    def init(key):
        k_params, k_dropout, k_state = jax.random.split(key, 3)
        variables = model.init({"params": k_params, "dropout": k_dropout}, dummy_inputs(input_shape), train=False)
        params = variables["params"]
        opt_state = tx.init(params if split is None else split(params)[0])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, rng=k_state,
                          loss_scale=None if loss_scale is None else loss_scale.initial_state())

    return init


def param_shapes(model: nn.Module, input_shape):
    """The model's (unboxed) parameters as ``ShapeDtypeStruct`` without allocating them."""
    init = make_init_fn(model, optax.identity(), input_shape)
    return nn.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)).params)


def create_state(model, tx, input_shape, seed: int, mesh, rules, split=None, loss_scale=None):
    """Initialise a sharded train state directly on the mesh; returns (state, shardings, abstract)."""
    abstract, shardings = abstract_state(model, tx, input_shape, mesh, rules, split, loss_scale)
    init = make_init_fn(model, tx, input_shape, split, loss_scale)
    state = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(jax.random.PRNGKey(seed))
    return state, shardings, abstract


def abstract_state(model, tx, input_shape, mesh, rules, split=None, loss_scale=None):
    """Shapes, dtypes and shardings of the train state without allocating it."""
    init = make_init_fn(model, tx, input_shape, split, loss_scale)
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
    shardings = tree_shardings(boxed, mesh, rules)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(boxed), shardings
    ), shardings
