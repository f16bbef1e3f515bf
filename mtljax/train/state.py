"""The train state: everything a checkpoint needs to continue a run bit-for-bit.

``step``, ``params``, ``opt_state``, ``rng`` (a raw ``uint32[2]`` key; per-step randomness is
``fold_in(rng, step)``, so it never has to be split and stored) and ``mtl_state`` (the state of the
multi-task method: learned loss weights, loss history, EMA targets...). The data-iterator state travels beside
it in the checkpoint (see ``mtljax.train.checkpoint``).
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
    mtl_state: Any = ()


def dummy_inputs(input_shape, batch: int = 1):
    return jnp.zeros((batch, *input_shape), jnp.float32)


def make_init_fn(model: nn.Module, tx: optax.GradientTransformation, input_shape, mtl_init=None):
    """``init(seed_key) -> TrainState`` with logically-partitioned (boxed) leaves.

    ``mtl_init()`` gives the multi-task method's initial state (none by default).
    """

    def init(key):
        k_params, k_dropout, k_state = jax.random.split(key, 3)
        variables = model.init({"params": k_params, "dropout": k_dropout}, dummy_inputs(input_shape), train=False)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=k_state,
                          mtl_state=mtl_init() if mtl_init is not None else ())

    return init


def create_state(model, tx, input_shape, seed: int, mesh, rules, mtl_init=None):
    """Initialise a sharded train state directly on the mesh; returns (state, shardings, abstract)."""
    abstract, shardings = abstract_state(model, tx, input_shape, mesh, rules, mtl_init)
    init = make_init_fn(model, tx, input_shape, mtl_init)
    state = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(jax.random.PRNGKey(seed))
    return state, shardings, abstract


def abstract_state(model, tx, input_shape, mesh, rules, mtl_init=None):
    """Shapes, dtypes and shardings of the train state without allocating it."""
    init = make_init_fn(model, tx, input_shape, mtl_init)
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
    shardings = tree_shardings(boxed, mesh, rules)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(boxed), shardings
    ), shardings
