"""configs/slim_cifar100.py on tfds mock data: 20 partially labelled tasks through a slimmed
sub-network and the task losses, FLOPs of 20 decoders, and a 20-task search. (The sharded sandwich
train step itself is exercised end to end on multi-digits in test_slim_cli.py.)"""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from slim_helpers import random_params

from mtljax.data import base as data_base
from mtljax.data import cifar100_mtl as c100
from mtljax.models.slim.flops import flops_table
from mtljax.models.slim.search import search
from mtljax.trainer.experiment import Experiment

CONFIG = pathlib.Path(__file__).parents[2] / "configs" / "slim_cifar100.py"


def _config(tmp_path, arg):
    spec = importlib.util.spec_from_file_location("slim_cifar100", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    c.workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=8):
        Experiment(c)  # the full-size config as shipped: every key checked
    c.data.update(batch_size=16, eval_batch_size=16, prefetch=0)
    c.model.slim.update(decoder_hidden=4, encoder_widths=(0.5, 1.0), decoder_widths=(0.5, 1.0),
                        conv_channels=(4, 8), conv_dim=8)
    return c


def test_slim_cifar100_on_mock_data(tmp_path):
    assert _config(tmp_path, None).model.slim.backbone == "vit"
    with tfds.testing.mock_data(num_examples=16):
        exp = Experiment(_config(tmp_path, "conv"))
        batch = next(iter(data_base.eval_batches(exp.dataset.splits["train"], exp.tasks, 16)))
    assert [t.name for t in exp.tasks] == list(c100.TASK_NAMES) and exp.dataset.input_shape == (32, 32, 3)
    params = random_params(exp.model, exp.dataset.input_shape, scale=0.1)
    widths = {"encoder": 0.5, "decoders": {t: (1.0 if t == "vehicles_2" else 0.5) for t in c100.TASK_NAMES}}

    @jax.jit
    def losses(params, batch):
        out, _ = exp.model.apply({"params": params}, batch["inputs"], widths=widths)
        return jnp.stack([t.loss(out[t.name], batch["targets"][t.name], batch["masks"][t.name]) for t in exp.tasks])

    values = np.asarray(losses(params, batch))
    labelled = np.array([batch["masks"][t].sum() > 0 for t in c100.TASK_NAMES])
    assert np.all(np.isfinite(values)) and np.all(values[labelled] > 0) and np.all(values[~labelled] == 0)
    table = flops_table(exp.model, exp.dataset.input_shape)
    pref = np.ones(20)
    pref[-1] = 4.0
    config, flops = search(table, 0.9 * table.full, pref)
    assert flops <= 0.9 * table.full and config.decoder("vehicles_2") == 1.0
    assert all(config.decoder(t) <= config.decoder("vehicles_2") for t in c100.TASK_NAMES)
