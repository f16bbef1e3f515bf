"""End to end through the CLI: single-task baselines, multi-task run, Δm, logs and TensorBoard events."""

import json
import math
import os

import pytest

from mtljax.commands import cli
from mtljax.trainer.logging import read_metrics

TINY = [
    "--config.data.num_train=1024", "--config.data.num_test=256", "--config.data.batch_size=64",
    "--config.model.vit.width=32", "--config.model.vit.depth=1", "--config.model.vit.num_heads=2",
    "--config.model.vit.mlp_dim=64", "--config.train.steps=60", "--config.train.log_every=20",
    "--config.train.eval_every=30", "--config.train.checkpoint_every=30", "--config.train.progress=False",
    "--config.optim.warmup_steps=10",
]


def test_train_with_baselines_reports_delta_m(tmp_path, capsys):
    workdir = tmp_path / "run"
    rc = cli.main(["mtljax", "train", f"--workdir={workdir}", "--config.baselines.train=True", *TINY])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Δm =" in printed and "single-task" in printed
    summary = json.load(open(workdir / "final_metrics.json"))
    assert set(summary["metrics"]) == {"left", "right"}
    assert set(summary["baselines"]) == {"left", "right"}
    relative = []
    for task in ("left", "right"):
        base = json.load(open(workdir / "baselines" / task / "final_metrics.json"))
        assert list(base["metrics"]) == [task]  # the baseline model has only its own head
        assert math.isfinite(summary["metrics"][task]["loss"])
        mt_acc, st_acc = summary["metrics"][task]["accuracy"], base["metrics"][task]["accuracy"]
        relative.append((mt_acc - st_acc) / st_acc)  # accuracy: higher is better, sign +1
    # Δm (Maninis et al. 2019; Vandenhende et al. 2021), from the multi-task run's metrics and the
    # single-task runs' own final metrics: Δm = 100/T · Σ_t 1/|M_t| · Σ_m (−1)^{l_m} (M_mt − M_bt) / M_bt,
    # with l_m = 1 for a lower-is-better metric; here T = 2 tasks of one metric each (accuracy, l = 0).
    expected = 100 * (relative[0] + relative[1]) / 2
    assert summary["delta_m"] == pytest.approx(expected, rel=1e-6)
    assert f"Δm = {summary['delta_m']:+.2f} %" in printed  # the printed table shows the same Δm
    records = read_metrics(str(workdir))
    assert [r["step"] for r in records if r["split"] == "eval"] == [30, 60]
    assert all("delta_m" in r for r in records if r["split"] == "eval")
    train_rec = [r for r in records if r["split"] == "train"]
    assert {"loss", "left/loss", "right/accuracy", "steps_per_s"} <= set(train_rec[0])
    events = os.listdir(workdir / "tensorboard")
    assert any(e.startswith("events.out.tfevents") for e in events)

    # a second invocation reuses the finished baselines and the finished run
    rc = cli.main(["mtljax", "train", f"--workdir={workdir}", "--config.baselines.train=True", *TINY])
    out = capsys.readouterr().out
    assert rc == 0 and "reusing" in out and "resumed from step 60" in out

    rc = cli.main(["mtljax", "eval", f"--workdir={workdir}", *TINY])
    assert rc == 0 and "step 60" in capsys.readouterr().out

    # the evaluations as they happen, the step of the parameters, where the outputs are
    assert "step 30 eval: left accuracy " in printed and ", right accuracy " in printed and "Δm " in printed
    assert summary["step"] == summary["steps"] == 60
    assert f"outputs in {workdir}: checkpoints/ (newest step 60), metrics.jsonl, tensorboard/, final_metrics.json" \
        in printed
    # fewer steps than the run already has: its step-60 parameters, said so, and reported as step 60
    short = [a for a in TINY if "train.steps" not in a] + ["--config.train.steps=30"]
    rc = cli.main(["mtljax", "train", f"--workdir={workdir}", *short])
    out = capsys.readouterr().out
    assert rc == 0 and f"{workdir} is already at step 60 > config.train.steps=30" in out
    assert json.loads((workdir / "final_metrics.json").read_text())["step"] == 60


def test_mlp_learns_multitab(tmp_path):
    from mtljax.config import base_config
    from mtljax.commands.train import train

    c = base_config()
    c.workdir = str(tmp_path / "tab")
    c.data.update(name="multitab", num_tasks=3, num_features=8, rho=0.5, degrees=[1, 2, 1], noise=0.01,
                  num_train=2048, num_test=512, batch_size=128, eval_batch_size=256)
    c.model.backbone = "mlp"
    c.model.mlp.hidden = (64, 64)
    c.train.update(steps=300, log_every=100, eval_every=300, checkpoint_every=300, progress=False)
    summary = train(c, log=lambda s: None)
    # predicting the mean would give mse = Var(y) (1 for degree 1, 1 + 2 = 3 for z + z^2)
    for task, var in (("t0", 1.0), ("t1", 3.0), ("t2", 1.0)):
        assert summary["metrics"][task]["mse"] < 0.2 * var, summary["metrics"]
