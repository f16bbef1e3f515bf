"""Adding a task to a trained run (config.data.tasks = ("+new",), mtljax.trainer.continual): the earlier
tasks' outputs stay bit-identical with per-task LoRA on a frozen backbone, the new task trains, the chained
config.json lists every task; PHATGOOSE-routed experts are loaded and frozen by task; bad input is a
one-line error naming config.data.tasks. One two-task LoRA run serves every test."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mtljax.commands import cli
from mtljax.config import ConfigError, base_config
from mtljax.optim.trainable import path_string
from mtljax.trainer.checkpoint import Checkpointer
from mtljax.trainer.continual import added_tasks
from mtljax.trainer.experiment import Experiment
from mtljax.trainer.optimizer import task_freezer


def _config(workdir, tasks, steps=2, routing=""):
    c = base_config()
    c.workdir = str(workdir)
    c.data.update(name="factors", image_size=16, num_train=32, num_test=16, batch_size=16, eval_batch_size=16,
                  tasks=tasks)
    c.model.vit.update(patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=16)
    c.model.peft.update(method="lora", routing=routing, top_k=1)
    c.optim.update(trainable=("lora", "^heads_"), learning_rate=1e-2, warmup_steps=0)
    c.train.update(steps=steps, log_every=steps, eval_every=steps, checkpoint_every=steps, progress=False)
    return c


def _params(workdir, step):
    return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))["params"]


def _outputs(config, params):
    """The test-set outputs of every task of ``config``'s model with ``params``."""
    exp = Experiment(config)
    with jax.set_mesh(exp.mesh):
        forward = jax.jit(lambda p, b: exp.objective.forward(p, b, train=False)[1])
        outs = {}
        for batch in exp.eval_batches():
            for t, y in forward(params, batch).items():
                outs.setdefault(t, []).append(np.asarray(y))
    return {t: np.concatenate(v) for t, v in outs.items()}


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A two-task LoRA run as the trainer leaves it (config.json, a step-2 checkpoint), holding its
    initial state with random B factors (fresh ones are zero): distinct nonzero LoRA updates per task
    are all these tests need, and no train step is compiled for it."""
    workdir = tmp_path_factory.mktemp("continual") / "stage1"
    c = _config(workdir, ("shape", "colour"))
    exp = Experiment(c)
    with jax.set_mesh(exp.mesh):
        state, _ = exp.init_state()
        keys = iter(jax.random.split(jax.random.key(1), 8))
        params = jax.tree_util.tree_map_with_path(
            lambda path, x: jax.random.normal(next(keys), x.shape, x.dtype) * 0.3
            if path_string(path).endswith("/b") else x, state.params)
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=1, async_save=False)
        ckpt.save(2, state.replace(params=params), exp.train_iterator(prefetch=0))
        ckpt.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(c.to_json_best_effort())
    return workdir


def test_added_task_leaves_earlier_outputs_bit_identical(stage1, tmp_path):
    """+texture from the command line (the saved config of stage 1 and one override) on per-task LoRA
    over a frozen backbone: the earlier tasks' test outputs and parameters are bit-identical, the new
    task's slot trains, config.json lists all tasks with the earlier ones frozen — and the next stage
    (+count, mtljax.train's path) reads that list."""
    stage2 = tmp_path / "stage2"
    loader = os.path.join(os.path.dirname(cli.__file__), "saved_config.py")
    assert cli.main(["mtljax", "train", f"--config={loader}:{stage1 / 'config.json'}", "--config.data.tasks=+texture",
                     f"--config.init.checkpoint={stage1}", f"--workdir={stage2}"]) == 0
    saved = json.load(open(stage2 / "config.json"))
    assert saved["data"]["tasks"] == ["shape", "colour", "texture"]
    assert saved["optim"]["frozen_tasks"] == ["shape", "colour"]

    before, after = _params(stage1, 2), _params(stage2, 2)
    for name in ("lora_query", "lora_value"):
        old, new = before["backbone"]["block0"]["attn"][name], after["backbone"]["block0"]["attn"][name]
        for leaf in ("a", "b"):
            np.testing.assert_array_equal(new[leaf][:2], old[leaf])  # frozen rows, loaded by task name
        assert np.any(new["b"][2] != 0)  # the new task's B started at zero and trained
    for task in ("shape", "colour"):
        jax.tree.map(np.testing.assert_array_equal, after[f"heads_{task}"], before[f"heads_{task}"])
    first = _outputs(_config(tmp_path / "eval1", ("shape", "colour")), before)
    second = _outputs(_config(tmp_path / "eval2", ("shape", "colour", "texture")), after)
    for task in ("shape", "colour"):
        np.testing.assert_array_equal(second[task], first[task])

    c = _config(tmp_path / "stage3", ("+count",))
    c.init.checkpoint = str(stage2)
    exp = Experiment(c)
    assert tuple(exp.config.data.tasks) == ("shape", "colour", "texture", "count")
    assert tuple(exp.config.optim.frozen_tasks) == ("shape", "colour", "texture")
    assert c.data.tasks == ("+count",)  # the caller's config is not changed


def test_routed_experts_are_added_loaded_and_frozen_by_task(stage1, tmp_path):
    """routing='phatgoose': the LoRA experts serve every token (not task-specific), yet there is one per
    task — the earlier ones load by task name and frozen_tasks freezes their rows (and gates), the new
    expert's rows update."""
    c = _config(tmp_path / "routed", ("+texture",), routing="phatgoose")
    c.init.checkpoint = str(stage1)
    exp = Experiment(c)
    assert "backbone/block0/attn/lora_query/a" in exp.init_plan.per_task
    with jax.set_mesh(exp.mesh):
        state, shardings = exp.init_state()
        params = exp.warm_start(state, shardings, log=lambda s: None).params
    lora, old = params["backbone"]["block0"]["attn"]["lora_query"], _params(stage1, 2)["backbone"]["block0"]["attn"]
    np.testing.assert_array_equal(np.asarray(lora["b"][:2]), old["lora_query"]["b"])
    freeze = task_freezer(exp.config.optim, [t.name for t in exp.tasks], exp.task_slots)
    ones = jax.tree.map(np.ones_like, jax.device_get(params))
    updates, _ = freeze.update(ones, freeze.init(ones))
    for leaf in ("a", "b", "gate"):
        u = np.asarray(updates["backbone"]["block0"]["attn"]["lora_query"][leaf])
        assert not u[:2].any() and u[2].all(), leaf
    assert not np.asarray(updates["heads_shape"]["out"]["kernel"]).any()
    assert np.asarray(updates["heads_texture"]["out"]["kernel"]).all()


@pytest.mark.parametrize("tasks, init, words", [
    (("+shape",), "run", "adds ['shape'], which the source run"),
    (("+nosuch",), "run", "has no task(s) ['nosuch']"),
    (("+texture",), "", "'+name' adds tasks to the run of config.init.checkpoint, which is empty"),
    (("+texture",), "bare", "has no config.json"),
    (("shape,+texture",), "run", "mixes plain task names with added ones"),
    (("+texture,+texture",), "run", "adds a task twice"),
])
def test_bad_added_tasks_are_one_line_errors(stage1, tmp_path, tasks, init, words):
    if init == "bare":  # the checkpoints without the run's config.json
        shutil.copytree(stage1 / "checkpoints", tmp_path / "bare" / "checkpoints")
    c = _config(tmp_path / "bad", tasks)
    c.init.checkpoint = {"run": str(stage1), "bare": str(tmp_path / "bare"), "": ""}[init]
    with pytest.raises(ConfigError) as err:
        Experiment(c)
    msg = str(err.value)
    assert msg.startswith("config.data.tasks: ") and words in msg and "\n" not in msg, msg
    assert not os.path.exists(tmp_path / "bad")


def test_added_task_syntax():
    assert added_tasks(("a", "b")) is None and added_tasks(()) is None
    assert added_tasks(("+a",)) == ("a",)
    assert added_tasks(("+a,+b",)) == added_tasks(("+a, b",)) == added_tasks(("+a", "+b")) == ("a", "b")
