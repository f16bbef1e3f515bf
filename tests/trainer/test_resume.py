"""Exact resume: runs killed with SIGKILL and restarted end bit-identical to uninterrupted runs — the
whole train state (parameters, optimizer moments, the multi-task method's state) and the metric log.

Four runs at once (both cores busy), each with a method whose state carries history: FAMO (logits,
previous losses, Adam) on the HPS ViT with dropout; DWA (loss history), Nash-MTL (α, recomputed every
3 steps) and GradVac (EMA targets) on a small MLP.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp

from mtljax.commands import cli
from mtljax.commands.train import train

COMMON = ["--config.train.progress=False", "--config.data.num_test=64", "--config.data.eval_batch_size=64"]
VIT = ["--config.data.num_train=512", "--config.data.batch_size=32", "--config.model.vit.width=16",
       "--config.model.vit.depth=1", "--config.model.vit.num_heads=2", "--config.model.vit.mlp_dim=32",
       "--config.model.dropout=0.1", "--config.train.steps=120", "--config.train.log_every=10",
       "--config.train.eval_every=40", "--config.train.checkpoint_every=20"]
MLP = ["--config=configs/multitab.py:conflict", "--config.data.num_tasks=3", "--config.data.degrees=(1,2,3)",
       "--config.data.num_train=1024", "--config.data.batch_size=32", "--config.model.mlp.hidden=(16,)",
       "--config.train.steps=120", "--config.train.log_every=10", "--config.train.eval_every=60",
       "--config.train.checkpoint_every=20"]
RUNS = {
    "famo_vit": (VIT + ["--config.optim.method=famo"], 120),
    "dwa": (MLP + ["--config.optim.method=dwa"], 120),
    "nash_mtl": (MLP + ["--config.optim.method=nash_mtl", "--config.optim.method_kwargs={'update_weights_every': 3}"],
                 120),
    "gradvac": (MLP + ["--config.optim.method=gradvac"], 120),
}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the same XLA flags and device count as this test process (tests/conftest.py), which trains the references
ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
       "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"}


def _args(name, workdir):
    args = RUNS[name][0]
    config = [a for a in args if a.startswith("--config=")]  # a config file must come before its overrides
    return ["train", *config, f"--workdir={workdir}", *COMMON, *[a for a in args if a not in config]]


def _cmd(name, workdir):
    return [sys.executable, "-m", "mtljax", *_args(name, workdir)]


def _steps(workdir):
    ck = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(ck) if d.isdigit()) if os.path.isdir(ck) else []


def _state(workdir, step):
    return ocp.tree.to_flat_dict(ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                                                  "state")))


def _log(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _start(name, workdir):
    return subprocess.Popen(_cmd(name, workdir), env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_sigkill_and_restart_is_bit_identical(tmp_path, monkeypatch):
    killed = {n: _start(n, tmp_path / n / "killed") for n in RUNS}
    alive, deadline = set(RUNS), time.time() + 600
    while alive and time.time() < deadline:  # kill each once it has a checkpoint past the first
        for n in list(alive):
            if any(s >= 40 for s in _steps(tmp_path / n / "killed")) or killed[n].poll() is not None:
                killed[n].send_signal(signal.SIGKILL)
                alive.discard(n)
        time.sleep(0.002)
    for n, proc in killed.items():
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL, f"{n}: the run finished before it could be killed"
        assert max(_steps(tmp_path / n / "killed")) < RUNS[n][1], n
    resumed = {n: _start(n, tmp_path / n / "killed") for n in RUNS}
    monkeypatch.chdir(ROOT)
    for n in RUNS:  # the uninterrupted references, in this process while the restarts run
        config = cli._parse(["mtljax", *_args(n, tmp_path / n / "full")[1:]]).config
        with config.unlocked():
            config.workdir = str(tmp_path / n / "full")
        train(config, log=lambda s: None)
    for n in RUNS:
        out, err = resumed[n].communicate(timeout=600)
        assert resumed[n].returncode == 0 and "resumed from step" in out, f"{n}: {err[-2000:]}"
        a, b = _state(tmp_path / n / "full", RUNS[n][1]), _state(tmp_path / n / "killed", RUNS[n][1])
        assert a.keys() == b.keys() and any("opt_state" in str(k) for k in a), n
        for k in a:
            assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), (n, k)
        la, lb = _log(tmp_path / n / "full"), _log(tmp_path / n / "killed")
        assert [(r["step"], r["split"]) for r in la] == [(r["step"], r["split"]) for r in lb], n
        assert [r["loss"] for r in la if r["split"] == "train"] == [r["loss"] for r in lb if r["split"] == "train"], n
