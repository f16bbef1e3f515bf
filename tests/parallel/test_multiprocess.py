"""Several processes on one machine, as on a pod: ``mtljax launch --local=N`` (gloo collectives between
processes of 4 simulated CPU devices each). A tiny ViT on a ``data 4 × model 2`` mesh.

- 2 processes × 4 devices end bit-identical to 1 process × 8 devices (parameters, optimizer state, eval
  metrics, Δm) — even though the 2-process run is SIGKILLed (both processes), resumed, preempted with
  SIGTERM (saves and exits 0), and resumed again, and the 1-process run is preempted and resumed too.
  (The 1-process run is ``--local=1``: its sums run over gloo like the 2 processes'; JAX's in-process
  CPU collectives add in another order and agree only to float rounding.)
- Both processes write each checkpoint together (one state, one iterator file per process).
- A process that dies ends the other within the heartbeat timeout, exit status 1, one line naming it,
  and the checkpoints stay readable.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mtljax.commands.launch import free_port, local_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--config.train.progress=False", "--config.data.num_test=64", "--config.data.eval_batch_size=64",
        "--config.data.num_train=512", "--config.data.batch_size=32", "--config.model.vit.width=16",
        "--config.model.vit.depth=1", "--config.model.vit.num_heads=2", "--config.model.vit.mlp_dim=32",
        "--config.train.steps=120", "--config.train.log_every=10", "--config.train.eval_every=60",
        "--config.train.checkpoint_every=20", "--config.mesh.shape.data=4", "--config.mesh.shape.model=2",
        "--config.dist.heartbeat_timeout=5"]
HEARTBEAT = 5
# the XLA flags of this test process (tests/conftest.py), without its device count: --cpu_devices sets it
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def _launch(n, devices, workdir, *extra):
    cmd = [sys.executable, "-m", "mtljax", "launch", f"--local={n}", f"--cpu_devices={devices}", "train",
           f"--workdir={workdir}", *TINY, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _records(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _wait(cond, proc, what, timeout=300):
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, f"ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _finish(proc, what):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{what}: rc {proc.returncode}\n{err[-3000:]}"
    return out


def _load(state_dir):
    """A checkpoint's arrays as numpy, whatever mesh and processes wrote it (one-device targets)."""
    ckptr = ocp.StandardCheckpointer()
    meta = ckptr.metadata(state_dir)
    meta = getattr(meta, "item_metadata", meta)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev),
                          getattr(meta, "tree", meta))
    return {k: np.asarray(v) for k, v in ocp.tree.to_flat_dict(ckptr.restore(state_dir, target)).items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    baselines = root / "baselines.json"
    baselines.write_text(json.dumps({"left": {"accuracy": 0.5}, "right": {"accuracy": 0.5}}))
    extra = [f"--config.baselines.file={baselines}"]
    one, two = root / "one", root / "two"
    a, b = _launch(1, 8, one, *extra), _launch(2, 4, two, *extra)
    # the 1-process run: SIGTERM once it has logged, then resume
    _wait(lambda: _records(one), a, "the 1-process run's first log")
    a.send_signal(signal.SIGTERM)
    out_a = _finish(a, "the preempted 1-process run")
    # the 2-process run: SIGKILL both processes (the whole session) after a checkpoint...
    _wait(lambda: any(s >= 20 for s in _steps(two)), b, "the 2-process run's checkpoint 20")
    os.killpg(b.pid, signal.SIGKILL)
    b.communicate()
    killed_at = max(_steps(two))
    a = _launch(1, 8, one, *extra)
    b = _launch(2, 4, two, *extra)
    # ...resume, and SIGTERM the launcher (it passes it on to both) once training has gone on
    _wait(lambda: any(r["step"] > killed_at for r in _records(two)), b, "the resumed 2-process run's log")
    b.send_signal(signal.SIGTERM)
    t0 = time.time()
    out_b = _finish(b, "the preempted 2-process run")
    preempt_s, after_preemption = time.time() - t0, _steps(two)
    _finish(a, "the resumed 1-process run")
    b = _launch(2, 4, two, *extra)
    out_b2 = _finish(b, "the twice-resumed 2-process run")
    return dict(one=one, two=two, out_a=out_a, out_b=out_b, out_b2=out_b2, killed_at=killed_at,
                preempt_s=preempt_s, after_preemption=after_preemption)


def test_two_processes_equal_one_through_kill_and_preemption(runs):
    one, two = runs["one"], runs["two"]
    assert "preempted (SIGTERM) at step" in runs["out_a"] and "preempted (SIGTERM) at step" in runs["out_b"]
    preempted = int(runs["out_b"].split("preempted (SIGTERM) at step ")[1].split(":")[0])
    assert runs["killed_at"] < preempted < 120 and max(runs["after_preemption"]) == preempted
    assert f"resumed from step {preempted}" in runs["out_b2"]
    print(f"2-process SIGTERM to exit: {runs['preempt_s']:.1f} s")
    a, b = _load(one / "checkpoints" / "120" / "state"), _load(two / "checkpoints" / "120" / "state")
    assert a.keys() == b.keys() and any("opt_state" in str(k) for k in a)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    evals = [[r for r in _records(w) if r["split"] == "eval"] for w in (one, two)]
    assert [r["step"] for r in evals[0]] == [60, 120] and evals[0] == evals[1]
    assert all("delta_m" in r for r in evals[0])
    fa, fb = (json.loads((w / "final_metrics.json").read_text()) for w in (one, two))
    assert fa == fb and "delta_m" in fa
    # train logs agree up to the first interruption (an interrupted interval averages fewer steps)
    first = [[r for r in _records(w) if r["split"] == "train" and r["step"] <= 10] for w in (one, two)]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "steps_per_s"} for r in rs]  # noqa: E731
    assert first[0] and strip(first[0]) == strip(first[1])


def test_both_processes_write_one_checkpoint_together(runs):
    two = runs["two"]
    for step in _steps(two):
        files = sorted(os.listdir(two / "checkpoints" / str(step) / "data"))
        assert [f for f in files if f.endswith(".json")] == ["process_0-of-2.json", "process_1-of-2.json"]
        states = [json.loads((two / "checkpoints" / str(step) / "data" / f).read_text()) for f in files
                  if f.endswith(".json")]
        assert states[0] == states[1] == {"next_index": step}
    assert not [d for d in os.listdir(two / "checkpoints") if "tmp" in d]  # no half-written step left


def _start_pair(workdir):
    port = free_port()
    cmd = [sys.executable, "-m", "mtljax", "train", f"--workdir={workdir}", *TINY,
           "--config.train.steps=100000", "--config.train.checkpoint_every=10"]
    return [subprocess.Popen(cmd, cwd=ROOT, env=local_env(i, 2, port, 4, ENV), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]


def test_a_dead_peer_ends_the_other_with_one_line(tmp_path):
    pairs = {victim: _start_pair(tmp_path / f"victim{victim}") for victim in (0, 1)}
    killed = {}
    while len(killed) < 2:  # kill each pair's victim once the pair has written a checkpoint
        for victim, procs in pairs.items():
            if victim not in killed and any(s >= 10 for s in _steps(tmp_path / f"victim{victim}")):
                procs[victim].kill()
                killed[victim] = time.time()
            assert all(p.poll() is None for p in procs) or victim in killed, procs[1 - victim].communicate()[1]
        time.sleep(0.05)
    for victim, procs in pairs.items():
        survivor = procs[1 - victim]
        _, err = survivor.communicate(timeout=HEARTBEAT + 60)
        took = time.time() - killed[victim]
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert survivor.returncode == 1 and len(lines) == 1, err[-3000:]
        want = "process 1 of 2 stopped" if victim == 1 else "process 0 of 2 (the coordinator)"
        assert want in lines[0] and f"process {1 - victim} exits too" in lines[0], lines
        assert took < HEARTBEAT + 30, took
        workdir = tmp_path / f"victim{victim}"
        last = max(_steps(workdir))
        assert all(np.isfinite(v).all() for v in _load(workdir / "checkpoints" / str(last) / "state").values()
                   if v.dtype.kind == "f")


def test_a_two_process_checkpoint_restores_onto_one_process_and_another_mesh(runs):
    """Written by 2 processes on ``data 4 × model 2``, read by this one process on ``data 8``: the same
    values, placed with the new shardings, and the data iterator at the same global batch."""
    from mtljax.commands.saved_config import get_config
    from mtljax.trainer.checkpoint import Checkpointer
    from mtljax.trainer.experiment import Experiment
    from mtljax.trainer.loop import _check_workdir_config

    two = runs["two"]
    config = get_config(str(two / "config.json"))
    with config.unlocked():
        config.mesh.shape = {"data": 8, "expert": 1, "model": 1}
        config.dist.heartbeat_timeout = 20
    _check_workdir_config(config, str(two))  # another mesh (and process count) may resume the run
    exp = Experiment(config)
    with jax.set_mesh(exp.mesh):
        ckpt = Checkpointer(str(two / "checkpoints"), keep=3)
        abstract, shardings = exp.abstract_state()
        it = exp.train_iterator(prefetch=0)
        step, state = ckpt.restore_newest_good(abstract, it)
        ckpt.close()
    assert step == 120 and it.get_state() == {"next_index": 120} and not ckpt.unusable
    want = _load(two / "checkpoints" / "120" / "state")
    got = ocp.tree.to_flat_dict(state)
    assert got.keys() == want.keys()
    for k, v in got.items():
        assert np.array_equal(np.asarray(v), want[k]), k
        assert v.sharding.mesh.shape == {"data": 8, "expert": 1, "model": 1}
    # changing what changes the math is still refused, with nothing touched
    with config.unlocked():
        config.optim.learning_rate = 0.5
    with pytest.raises(Exception, match="config.optim differs"):
        _check_workdir_config(config, str(two))


def test_an_moe_checkpoint_restores_onto_an_expert_mesh(tmp_path):
    """An M³ViT state saved on ``data 8`` restores onto ``data 2 × expert 4``: equal values, experts split."""
    from mtljax.config import base_config
    from mtljax.trainer.checkpoint import Checkpointer
    from mtljax.trainer.experiment import Experiment

    def config(mesh):
        c = base_config()
        c.data.num_train, c.data.num_test, c.data.batch_size = 256, 64, 32
        c.model.name = "m3vit"
        c.model.vit.update(width=16, depth=1, num_heads=2, mlp_dim=32)
        c.model.moe.update(num_experts=8, top_k=2, every=1)
        c.mesh.shape = mesh
        c.workdir = str(tmp_path)
        return c

    exp = Experiment(config({"data": 8}))
    with jax.set_mesh(exp.mesh):
        state, _ = exp.init_state()
        ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=1)
        ckpt.save(1, state, exp.train_iterator(prefetch=0))
        ckpt.close()
        saved = {k: np.asarray(v) for k, v in ocp.tree.to_flat_dict(state).items()}
    exp = Experiment(config({"data": 2, "expert": 4}))
    with jax.set_mesh(exp.mesh):
        ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=1)
        step, restored = ckpt.restore_newest_good(exp.abstract_state()[0])
        ckpt.close()
    flat = ocp.tree.to_flat_dict(restored)
    assert step == 1 and flat.keys() == saved.keys()
    for k, v in flat.items():
        assert np.array_equal(np.asarray(v), saved[k]), k
    experts = [v for k, v in flat.items() if "params" in str(k) and "wi" in str(k)]
    assert experts and all(tuple(v.sharding.spec)[:1] == ("expert",) for v in experts)
