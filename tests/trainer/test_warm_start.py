"""Pretrain, then adapt: start a run from another run's parameters (config.init) and train only some
of them (config.optim.trainable). One short pretraining run serves every test of this module."""

import hashlib
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mtljax.commands.train import train
from mtljax.config import ConfigError, base_config
from mtljax.optim.trainable import count, join, param_paths, split, trainable_mask
from mtljax.trainer import warm_start
from mtljax.trainer.checkpoint import Checkpointer
from mtljax.trainer.experiment import Experiment


def _config(workdir, tasks, steps=6, **optim):
    c = base_config()
    c.workdir = str(workdir)
    c.data.update(name="multitab", num_tasks=3, num_features=8, rho=0.2, degrees=[1, 2, 3], noise=0.01,
                  num_train=128, num_test=64, batch_size=16, eval_batch_size=64, tasks=tasks)
    c.model.update(backbone="mlp")
    c.model.mlp.hidden = (16, 16)
    c.train.update(steps=steps, log_every=steps, eval_every=steps, checkpoint_every=steps, progress=False)
    c.optim.update(**optim)
    return c


def _params(workdir, step):
    state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return state


def _digest(directory):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(directory)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            h.update(path.encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pretrain") / "run"
    train(_config(workdir, ("t0", "t1")), log=lambda s: None)
    return workdir


def test_adapt_loads_by_path_and_trains_only_the_trainable(pretrained, tmp_path):
    """New task head t2 on the pretrained backbone, with a Gramian method: loaded / new / ignored paths
    are reported, the frozen parameters come out bit-identical and hold no optimizer moments, and the
    source run is not touched."""
    before = _digest(pretrained)
    c = _config(tmp_path / "adapt", ("t1", "t2"), steps=4, method="upgrad", trainable=("^heads_", "fc1"))
    c.init.checkpoint = str(pretrained)
    lines = []
    train(c, log=lines.append)
    assert _digest(pretrained) == before

    report = json.load(open(tmp_path / "adapt" / "init.json"))
    assert report["step"] == 6
    assert {p.split("/")[0] for p in report["loaded"]} == {"backbone", "heads_t1"}
    assert {p.split("/")[0] for p in report["new"]} == {"heads_t2"}
    assert {p.split("/")[0] for p in report["ignored"]} == {"heads_t0"}
    assert any(line.startswith("init from ") and "new 2: heads_t2/out (2)" in line for line in lines)

    source, adapted = _params(pretrained, 6), _params(tmp_path / "adapt", 4)
    src, out = source["params"], adapted["params"]
    for key in ("fc0", "ln0", "ln1"):  # frozen: bit-identical to the pretrained values
        jax.tree.map(np.testing.assert_array_equal, src["backbone"][key], out["backbone"][key])
    assert not np.array_equal(src["backbone"]["fc1"]["kernel"], out["backbone"]["fc1"]["kernel"])
    assert not np.array_equal(src["heads_t1"]["out"]["kernel"], out["heads_t1"]["out"]["kernel"])

    # Adam's moments exist for the trainable parameters only
    mask = trainable_mask(out, ("^heads_", "fc1"))
    trainable, frozen = split(out, mask)
    moments = [x for x in jax.tree.leaves(adapted["opt_state"]) if np.ndim(x) > 0]
    assert sum(x.size for x in moments) == 2 * count(trainable)
    assert count(frozen) > 0 and join(trainable, frozen).keys() == out.keys()


def test_frozen_parameters_hold_no_optimizer_memory(tmp_path):
    """XLA's buffer assignment of the compiled step: the state argument shrinks by Adam's two moments
    of every frozen parameter."""
    sizes = {}
    for name, trainable in (("all", ()), ("heads", ("^heads_",))):
        exp = Experiment(_config(tmp_path / name, ("t0", "t1"), trainable=trainable))
        with jax.set_mesh(exp.mesh):
            abstract, shardings = exp.abstract_state()
            batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=exp.batch_sharding),
                                 next(iter(exp.train_iterator(prefetch=0))))
            compiled = exp.jit_train_step(shardings).lower(abstract, batch).compile()
        sizes[name] = compiled.memory_analysis().argument_size_in_bytes
        frozen = count(split(exp.param_shapes, trainable_mask(exp.param_shapes, ("^heads_",)))[1])
    assert sizes["all"] - sizes["heads"] == 2 * 4 * frozen


@pytest.mark.parametrize("change, key, words", [
    (dict(init=dict(checkpoint="/nonexistent/run")), "config.init.checkpoint", "is not a directory"),
    (dict(init=dict(step=3)), "config.init.step", "has no step 3; it has [6]"),
    (dict(init=dict(step=-1)), "config.init.step", "must be an integer >= 0"),
    (dict(hidden=(8, 16)), "config.init.checkpoint", "backbone/fc0/bias: shape (16,) in the checkpoint, (8,) in this model"),
    (dict(trainable=("lora",)), "config.optim.trainable", "pattern 'lora' matches no parameter"),
    (dict(trainable=("heads_(",)), "config.optim.trainable", "not a regular expression"),
])
def test_bad_init_and_trainable_are_one_line_errors(pretrained, tmp_path, change, key, words):
    c = _config(tmp_path / "bad", ("t0", "t1"))
    c.init.checkpoint = str(pretrained)
    c.init.update(change.get("init", {}))
    if "hidden" in change:  # the checkpoint's first layer has 16 units, this model's 8
        c.model.mlp.hidden = (8, 16)
    if "trainable" in change:
        c.optim.trainable = change["trainable"]
    with pytest.raises(ConfigError) as err:
        Experiment(c)
    msg = str(err.value)
    assert msg.startswith(key + ":") and words in msg and "\n" not in msg, msg
    assert not os.path.exists(tmp_path / "bad")


def test_trainable_patterns_search_paths():
    params = {"backbone": {"block0": {"attention": {"lora_a": np.zeros(2), "query": {"kernel": np.zeros(3)}}}},
              "heads_left": {"out": {"kernel": np.zeros(4)}}}
    assert param_paths(params) == ["backbone/block0/attention/lora_a", "backbone/block0/attention/query/kernel",
                                   "heads_left/out/kernel"]
    mask = trainable_mask(params, ("lora", "^heads_"))
    assert jax.tree.leaves(mask) == [True, False, True]
    trainable, frozen = split(params, mask)
    assert count(trainable) == 6 and count(frozen) == 3
    jax.tree.map(np.testing.assert_array_equal, join(trainable, frozen), params)


# ---- per-task parameters by task name (MVLPT-style prompt initialisation) --------------------------------
def _vpt_config(workdir, tasks, steps=2):
    c = base_config()
    c.workdir = str(workdir)
    c.data.update(name="factors", image_size=16, num_train=32, num_test=16, batch_size=16, eval_batch_size=16,
                  tasks=tasks)
    c.model.vit.update(patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=16)
    c.model.peft.update(method="vpt", prompt_length=2)
    c.train.update(steps=steps, log_every=steps, eval_every=steps, checkpoint_every=steps, progress=False)
    return c


@pytest.fixture(scope="module")
def vpt_source(tmp_path_factory):
    """A source run with VPT prompts on tasks A = shape, B = colour, as the trainer leaves it (its
    config.json and a step-2 checkpoint) but holding its initial state: random prompts, distinct per
    task, are all these tests need, and no train step is compiled."""
    workdir = tmp_path_factory.mktemp("vpt_source") / "run"
    c = _vpt_config(workdir, ("shape", "colour"))
    exp = Experiment(c)
    with jax.set_mesh(exp.mesh):
        state, _ = exp.init_state()
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=1, async_save=False)
        ckpt.save(2, state, exp.train_iterator(prefetch=0))
        ckpt.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(c.to_json_best_effort())
    return workdir


def test_per_task_prompts_map_by_task_name(vpt_source, tmp_path):
    """Target tasks (B = colour, C = texture) from a source on (A = shape, B = colour): B's prompt slot is
    the source's B slot wherever it sits, C's the mean of the source's slots, A's slot, or its fresh
    initialisation, as config.init.task_init says; the source run is not touched."""
    before = _digest(vpt_source)
    source = _params(vpt_source, 2)["params"]
    src = np.asarray(source["backbone"]["prompt"]["tokens"])  # [2, L, D]: shape, colour
    c = _vpt_config(tmp_path / "target", ("colour", "texture"))
    c.init.update(checkpoint=str(vpt_source), task_init="mean")
    exp = Experiment(c)
    specific = exp.objective.specific(exp.param_shapes)
    expected = {"mean": src.astype(np.float64).mean(0).astype(np.float32), "shape": src[0]}
    with jax.set_mesh(exp.mesh):
        state, shardings = exp.init_state()
        fresh = np.asarray(state.params["backbone"]["prompt"]["tokens"])
        lines = []
        warmed = exp.warm_start(state, shardings, log=lines.append).params  # the trainer's path, once
        for task_init in ("mean", "shape", "fresh"):
            c.init.task_init = task_init
            plan = warm_start.plan(c.init, exp.param_shapes, tasks=("colour", "texture"), specific=specific)
            params = warmed if task_init == "mean" else warm_start.load(plan, state.params, shardings.params)
            out = np.asarray(params["backbone"]["prompt"]["tokens"])
            assert out.shape == fresh.shape == (2, *src.shape[1:])
            np.testing.assert_array_equal(out[0], src[1])  # colour <- the source's colour (its slot 1)
            np.testing.assert_array_equal(out[1], expected.get(task_init, fresh[1]))
            assert plan.per_task == ("backbone/prompt/tokens",)
            origin = {"mean": "mean of 2 source tasks", "shape": "source 'shape'", "fresh": "fresh"}[task_init]
            assert plan.mapping() == f"'colour' <- source 'colour', 'texture' <- {origin}"
            report = plan.as_dict()
            assert report["task_map"] == (("colour", "source:colour"),
                                          ("texture", "source:shape" if task_init == "shape" else task_init))
            assert report["source_tasks"] == ("shape", "colour")
            assert "heads_colour/out/kernel" in plan.loaded and "heads_texture/out/kernel" in plan.new
            assert "heads_shape/out/kernel" in plan.ignored
            np.testing.assert_array_equal(params["heads_colour"]["out"]["kernel"],
                                          source["heads_colour"]["out"]["kernel"])
        # the source's tasks in another order: the slots follow the names
        plan = warm_start.plan(c.init, exp.param_shapes, tasks=("colour", "shape"), specific=specific)
        out = warm_start.load(plan, state.params, shardings.params)["backbone"]["prompt"]["tokens"]
        np.testing.assert_array_equal(np.asarray(out), src[::-1])
    assert lines[0].startswith("init from ") and lines[0].endswith(
        "per-task 1 arrays (backbone/prompt (1)): 'colour' <- source 'colour', 'texture' <- mean of 2 source tasks")
    assert exp.init_plan.per_task == ("backbone/prompt/tokens",)
    assert _digest(vpt_source) == before


def test_per_task_bad_task_init_is_a_one_line_error(vpt_source, tmp_path):
    c = _vpt_config(tmp_path / "bad", ("colour", "texture"))
    c.init.update(checkpoint=str(vpt_source), task_init="texture")
    with pytest.raises(ConfigError) as err:
        Experiment(c)
    msg = str(err.value)
    assert msg.startswith("config.init.task_init: no source task 'texture'") and "['shape', 'colour']" in msg, msg
    assert "\n" not in msg and not os.path.exists(tmp_path / "bad")
