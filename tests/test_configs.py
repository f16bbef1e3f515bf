"""Every config in configs/ builds an Experiment (data, model, objective, optax chain, mesh: every key
checked, nothing compiled) — generated datasets at a small size, tfds ones on mock data — and its
docstring gives the command. Bad keys are one-line errors naming the key."""

import pathlib

import jax
import pytest
import tensorflow_datasets as tfds

from mtljax.config import ConfigError, base_config, load_config
from mtljax.trainer.experiment import Experiment

CONFIGS = sorted(pathlib.Path(__file__).parents[1].joinpath("configs").glob("*.py")) + sorted(
    pathlib.Path(__file__).parents[1].joinpath("configs", "merge").glob("*.py"))


def _experiment(config, tmp_path):
    config.workdir = str(tmp_path / "run")
    config.init.checkpoint = ""  # the adaptation configs start from runs/pretrain (tests/trainer/test_warm_start.py)
    if config.data.name in ("multi_digits", "multitab", "scenes", "factors"):  # generated: the sizes only
        config.data.num_train, config.data.num_test = 64, 32
    with tfds.testing.mock_data(num_examples=8):
        return Experiment(config, devices=jax.devices())


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds_and_documents_its_command(path, tmp_path):
    assert "mtljax train" in path.read_text().split('"""')[1]
    exp = _experiment(load_config(str(path)), tmp_path)
    assert exp.tasks and exp.mesh.size == 8


def test_config_args():
    root = CONFIGS[0].parent
    assert load_config(f"{root}/multitab.py:conflict").data.rho < 0
    assert load_config(f"{root}/cifar100_mtl.py:S").model.vit.variant == "S"
    experts = load_config(f"{root}/merge/experts.py:multitask")
    assert experts.data.name == "factors" and len(experts.data.tasks) == 8
    assert load_config(f"{root}/merge/experts.py:left").data.upscale == 2
    assert load_config(f"{root}/merge/experts.py:lora_left").model.peft.method == "lora"
    mhr_z = load_config(f"{root}/adapt_poly.py:mhr_z")
    assert mhr_z.model.peft.poly.heads == 4 and mhr_z.optim.trainable == ("poly_routing", "^heads_")
    with pytest.raises(ValueError, match="unknown argument"):
        load_config(f"{root}/merge/experts.py:lora_nope")
    with pytest.raises(ValueError, match="preset"):
        load_config(f"{root}/multitab.py:nope")
    with pytest.raises(ConfigError, match="no config file"):
        load_config(f"{root}/nope.py")


@pytest.mark.parametrize("changes,message", [
    ({"model.name": "controllable"}, "config.model.name: 'controllable' was renamed to 'slim'"),
    ({"model.vit.attention_impl": "flash"}, "config.model.vit.attention_impl: unknown 'flash'"),
    ({"model.vit.attention_impl": "cudnn"}, "config.model.vit.attention_impl: 'cudnn' needs config.model.dtype"),
    ({"model.name": "slim", "model.slim.encoder_widths": (0.5, 0.25)}, "config.model.slim.encoder_widths: must be "
                                                                        "strictly increasing"),
    ({"model.name": "slim", "model.slim.decoder_widths": (0.25, 0.5)}, "config.model.slim.decoder_widths: .* must "
                                                                        "end at 1.0"),
    ({"model.name": "slim", "optim.level": "rep", "optim.method": "mgda"}, "config.optim.level: 'rep' needs one "
                                                                           "representation"),
    ({"model.name": "task_expert", "model.task_expert.layers": (9,)}, "config.model.task_expert.layers"),
    ({"optim.rep_mtl_kwargs.temperature": 0.0, "optim.rep_mtl": True}, "config.optim.rep_mtl_kwargs: "
                                                                        "temperature must be > 0"),
    ({"optim.method": "cagrad", "optim.method_kwargs.c": -1.0}, "config.optim.method_kwargs: cagrad"),
    ({"optim.sam": "flat", "optim.sam_rho": 0.0}, "config.optim.sam_rho: must be > 0"),
    ({"optim.sam": "flat", "optim.level": "gramian", "optim.method": "upgrad"}, "config.optim.level: 'gramian'"),
    ({"optim.head_grads": "own"}, "config.optim.head_grads: unknown value 'own'"),
    ({"data.num_train": 64, "data.image_size": 4}, "config.data.image_size: 4 is too small"),
    ({"data.task_per_example": "yes"}, "config.data.task_per_example: must be True or False"),
    ({"data.task_per_example": True, "data.batch_size": 1},
     "config.data.task_per_example: needs batch_size >= the 2 tasks, got 1"),
    ({"optim.frozen_tasks": ("up",)}, r"config.optim.frozen_tasks: no task 'up'; tasks are \['left', 'right'\]"),
    ({"data.tasks": ("+left",)}, r"config.data.tasks: '\+name' adds tasks to the run of config.init.checkpoint"),
])
def test_bad_keys_are_one_line_errors(tmp_path, changes, message):
    config = base_config()
    for key, value in changes.items():
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node[part]
        with node.ignore_type() if hasattr(node, "ignore_type") else _nullcontext():
            node[last] = value
    with pytest.raises(ConfigError, match=message) as err:
        _experiment(config, tmp_path)
    assert "\n" not in str(err.value)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False
