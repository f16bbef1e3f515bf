"""optim.frozen_tasks: a frozen task's head and its rows of stacked per-task modules never move, through
AdamW with weight decay and global-norm clipping, while the other tasks' parameters train."""

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest

from mtljax.config import ConfigError, section
from mtljax.optim.trainable import freeze_tasks, path_string
from mtljax.trainer.optimizer import task_freezer

NAMES = ("a", "b", "c")


def _specific(tree):  # heads and the stacked "lora" module are task-specific
    return jax.tree_util.tree_map_with_path(
        lambda p, _: path_string(p).startswith("heads_") or "lora" in path_string(p), tree)


def test_frozen_tasks_parameters_stay_bit_identical():
    rng = np.random.default_rng(0)
    params = {"heads_a": {"kernel": rng.normal(size=(4, 2))}, "heads_b": {"kernel": rng.normal(size=(4, 2))},
              "heads_c": {"kernel": rng.normal(size=(4, 2))},
              "backbone": {"lora": rng.normal(size=(3, 4, 2)), "shared": rng.normal(size=(4,))}}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    freeze = freeze_tasks([0, 2], NAMES, _specific)
    tx = optax.chain(freeze, optax.clip_by_global_norm(0.1), optax.adamw(0.1, weight_decay=0.5), freeze)
    step = jax.jit(lambda g, s, p: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
    state, p = tx.init(params), params
    for _ in range(3):
        p, state = step(jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), p), state, p)
    p, params = jax.tree.map(np.asarray, (p, params))
    same = np.array_equal
    assert same(p["heads_a"]["kernel"], params["heads_a"]["kernel"])
    assert same(p["heads_c"]["kernel"], params["heads_c"]["kernel"])
    assert same(p["backbone"]["lora"][[0, 2]], params["backbone"]["lora"][[0, 2]])
    assert not same(p["heads_b"]["kernel"], params["heads_b"]["kernel"])
    assert not same(p["backbone"]["lora"][1], params["backbone"]["lora"][1])
    assert not same(p["backbone"]["shared"], params["backbone"]["shared"])  # shared: freeze with `trainable`

    with pytest.raises(ValueError, match="'backbone/lora' of shape .* neither a head nor stacked over the 2 tasks"):
        freeze_tasks([0], ("a", "b"), _specific).update(params, optax.EmptyState())


@pytest.mark.parametrize("value, words", [
    (("d",), "no task 'd'; tasks are ['a', 'b', 'c']"),
    (("a", "b", "c"), "freezes every task"),
    ("a", "must be a sequence of task names"),
])
def test_bad_frozen_tasks_name_the_key(value, words):
    cfg = mlc.ConfigDict(dict(frozen_tasks=value))
    with pytest.raises(ConfigError) as err:
        with section("optim"):
            task_freezer(cfg, NAMES, _specific)
    msg = str(err.value)
    assert err.value.key == "optim.frozen_tasks" and words in err.value.message, msg
    assert task_freezer(mlc.ConfigDict(dict(frozen_tasks=())), NAMES, _specific) is None
