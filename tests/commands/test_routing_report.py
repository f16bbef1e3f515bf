"""`mtljax routing`: task x expert usage heatmaps from a trained MoE run's checkpoint."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from mtljax.commands.cli import main
from mtljax.config import ConfigError, base_config
from mtljax.models import build_model
from mtljax.tasks import Task
from mtljax.commands.train import train
from mtljax.commands.routing import routing_report, usage_matrices


def _config(name, workdir):
    c = base_config()
    c.model.name = name
    c.workdir = str(workdir)
    c.data.num_train, c.data.num_test, c.data.batch_size, c.data.eval_batch_size = 64, 32, 16, 32
    c.model.vit.update(width=16, depth=2, num_heads=2, mlp_dim=32)
    c.model.moe.update(num_experts=4, top_k=2, every=1)
    c.model.task_expert.update(num_experts=3, expert_dim=8, every=1)
    c.train.update(steps=4, eval_every=4, checkpoint_every=4, log_every=2, progress=False)
    return c


def test_routing_command_writes_heatmaps_from_a_checkpoint(tmp_path):
    config = _config("m3vit", tmp_path / "run")
    train(config, log=lambda s: None)
    args = ["mtljax", "routing", "--config.model.name=m3vit", "--config.model.vit.width=16",
            "--config.model.vit.depth=2", "--config.model.vit.num_heads=2", "--config.model.vit.mlp_dim=32",
            "--config.model.moe.num_experts=4", "--config.model.moe.every=1", "--config.data.num_train=64",
            "--config.data.num_test=32", "--config.data.batch_size=16", "--config.data.eval_batch_size=32",
            f"--workdir={tmp_path}/run", "--max_examples=20"]
    assert main(args) == 0
    saved = json.load(open(tmp_path / "run" / "routing" / "routing.json"))
    assert saved["rows"] == ["left", "right"] and saved["step"] == 4
    assert set(saved["layers"]) == {"block0/mlp", "block1/mlp"}
    for layer, matrix in saved["layers"].items():
        np.testing.assert_allclose(np.sum(matrix, -1), 1.0, rtol=1e-5)  # each task's usage is a distribution
        assert os.path.getsize(tmp_path / "run" / "routing" / (layer.replace("/", "_") + ".png")) > 1000


@pytest.mark.parametrize("name, backbone, rows, layers", [
    ("task_expert", "vit", ["a", "b"], {"mmoe0": 4, "mmoe1": 4}),  # 3 experts + the memory
    ("hps", "moe_vit", ["all tasks"], {"block0/mlp": 4, "block1/mlp": 4}),  # a shared gate: one row
])
def test_usage_matrices(name, backbone, rows, layers):
    c = _config(name, "unused").model
    c.backbone = backbone
    tasks = (Task("a", "binary"), Task("b", "multiclass", num_classes=3))
    model = build_model(c, tasks, (8, 8, 1))
    x = np.random.default_rng(0).uniform(size=(6, 8, 8, 1)).astype(np.float32)
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])["params"])
    labels, matrices = usage_matrices(model, params, x, batch_size=4)
    assert labels == rows and {k: v.shape[1] for k, v in matrices.items()} == layers
    for m in matrices.values():
        assert m.shape[0] == len(rows)
        np.testing.assert_allclose(m.sum(-1), 1.0, rtol=1e-5)


def test_routing_refuses_models_without_experts_and_runs_without_checkpoints(tmp_path):
    with pytest.raises(ConfigError, match="no mixture-of-experts"):
        routing_report(_config("hps", tmp_path / "dense"))
    assert main(["mtljax", "routing", "--config.model.name=m3vit", f"--workdir={tmp_path}/empty"]) == 2
