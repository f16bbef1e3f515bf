"""The merged model's config from the experts' saved configs (no runs are read): one dataset keeps its
config with the union of tasks; different datasets become a mixture; differing models are refused
naming the key; LoRA settings do not count as a model difference."""

import pytest

from mtljax.commands.merge_runs import Run, merged_config
from mtljax.config import base_config
from mtljax.merge import MergeError


def _run(name, data, tasks, **model):
    c = base_config()
    c.data.update(data)
    c.data.tasks = tuple(tasks)
    c.model.vit.update(model)
    return Run(name, c.to_dict(), "", 0, tuple(tasks))


FACTORS = dict(name="factors", image_size=32, num_train=100)
DIGITS = dict(name="multi_digits", image_size=32, channels=3, num_train=100)


def test_one_dataset_keeps_its_config_with_every_task():
    c = merged_config([_run("a", FACTORS, ["count"]), _run("b", FACTORS, ["texture"])], "/tmp/m", seed=3)
    assert c.data.name == "factors" and list(c.data.tasks) == ["count", "texture"] and c.seed == 3
    assert c.init.checkpoint == "" and c.workdir == "/tmp/m"


def test_two_datasets_become_a_mixture():
    c = merged_config([_run("a", FACTORS, ["count"]), _run("b", DIGITS, ["left"]), _run("c", FACTORS, ["shape"])],
                      "/tmp/m", seed=0)
    assert c.data.name == "mixture" and len(c.data.components) == 2
    assert [list(comp["tasks"]) for comp in c.data.components] == [["count", "shape"], ["left"]]


def test_models_must_match_except_lora():
    lora = _run("b", FACTORS, ["texture"])
    lora.config["model"]["peft"].update(method="lora", rank=2, alpha=4.0)
    merged_config([_run("a", FACTORS, ["count"]), lora], "/tmp/m", seed=0)  # LoRA folds into kernels
    with pytest.raises(MergeError, match=r"--experts\[1\].*config.model.vit.width differs"):
        merged_config([_run("a", FACTORS, ["count"]), _run("b", FACTORS, ["texture"], width=32)], "/tmp/m", seed=0)
