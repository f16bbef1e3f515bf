"""A non-finite loss stops the run, names the step and the task, and keeps the last good checkpoint."""

import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from mtljax.config import base_config
from mtljax.data import multitab
from mtljax.data.base import index_stream
from mtljax.commands.train import train
from mtljax.trainer.loop import NonFiniteLossError


def test_nan_target_stops_with_step_and_task(tmp_path, monkeypatch):
    c = base_config()
    # training reads the 256 examples in the order index_stream(256, seed), 16 per step: poison the
    # first example of the third batch, so steps 1 and 2 are finite and checkpointed and step 3 is not
    bad_row = int(index_stream(256, c.seed)[2 * 16])
    real = multitab.targets

    def poisoned(x, w, degrees, noise, rng):
        y = real(x, w, degrees, noise, rng)
        if len(x) == 256:  # the training split
            y[bad_row, 1] = np.nan  # one example of task t1
        return y

    monkeypatch.setattr(multitab, "targets", poisoned)
    c.workdir = str(tmp_path / "run")
    c.data.update(name="multitab", num_tasks=3, num_features=8, rho=0.2, degrees=[1, 2, 3], noise=0.01,
                  num_train=256, num_test=64, batch_size=16, eval_batch_size=64)
    c.model.update(backbone="mlp")
    c.model.mlp.hidden = (16,)
    c.train.update(steps=40, log_every=1, eval_every=100, checkpoint_every=1, progress=False)
    with pytest.raises(NonFiniteLossError) as err:
        train(c, log=lambda s: None)
    msg = str(err.value)
    assert "task(s) t1" in msg and "\n" not in msg
    assert "at step 3 " in msg and "last good checkpoint: step 2 " in msg
    ckpt_dir = os.path.join(c.workdir, "checkpoints")
    kept = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
    assert kept[-1] == 2  # the failing step 3 is never saved
    state = ocp.StandardCheckpointer().restore(os.path.join(ckpt_dir, "2", "state"))
    leaves = ocp.tree.to_flat_dict(state["params"]).values()
    assert all(np.all(np.isfinite(np.asarray(v))) for v in leaves)
    assert int(state["step"]) == 2
