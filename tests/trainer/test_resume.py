"""Exact resume: a run killed with SIGKILL and restarted ends bit-identical to an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp

STEPS = 120
ARGS = [
    "--config.data.num_train=512", "--config.data.num_test=64", "--config.data.batch_size=32",
    "--config.data.eval_batch_size=64", "--config.model.vit.width=16", "--config.model.vit.depth=1",
    "--config.model.vit.num_heads=2", "--config.model.vit.mlp_dim=32", "--config.model.dropout=0.1",
    f"--config.train.steps={STEPS}", "--config.train.log_every=10", "--config.train.eval_every=40",
    "--config.train.checkpoint_every=20", "--config.train.progress=False",
]
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}


def _cmd(workdir):
    return [sys.executable, "-m", "mtljax", "train", f"--workdir={workdir}", *ARGS]


def _final_params(workdir):
    path = os.path.join(workdir, "checkpoints", str(STEPS), "state")
    return ocp.StandardCheckpointer().restore(path)


def _steps(workdir):
    ck = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(ck) if d.isdigit()) if os.path.isdir(ck) else []


def test_sigkill_and_restart_is_bit_identical(tmp_path):
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    subprocess.run(_cmd(full), check=True, env=ENV, capture_output=True, timeout=600)

    proc = subprocess.Popen(_cmd(killed), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(s >= 40 for s in _steps(killed)):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    at_kill = _steps(killed)
    assert at_kill and max(at_kill) < STEPS

    out = subprocess.run(_cmd(killed), check=True, env=ENV, capture_output=True, text=True, timeout=600)
    assert "resumed from step" in out.stdout

    a, b = _final_params(full), _final_params(killed)
    flat_a, flat_b = ocp.tree.to_flat_dict(a), ocp.tree.to_flat_dict(b)
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        assert np.array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k])), k

    # the resumed run's metric log has each step once and matches the uninterrupted one
    def log(w):
        return [json.loads(line) for line in open(os.path.join(w, "metrics.jsonl"))]

    la, lb = log(full), log(killed)
    assert [(r["step"], r["split"]) for r in la] == [(r["step"], r["split"]) for r in lb]
    assert [r["loss"] for r in la if r["split"] == "train"] == [r["loss"] for r in lb if r["split"] == "train"]
