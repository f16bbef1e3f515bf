"""End to end on 8 simulated devices: train a tiny slim model with a multi-task method, then
``mtljax slim`` picks a sub-network for a budget and preference, exports it (equal to the slimmed
super-network), and ``--sweep`` writes controllability, hypervolume and the trade-off plot."""

import json
import os

import jax
import numpy as np

from mtljax.commands import cli
from mtljax.models.slim import load_subnetwork
from mtljax.commands.slim import _restore_params
from mtljax.trainer.experiment import Experiment

TINY = [
    "--config=configs/slim_digits.py", "--config.data.num_train=256", "--config.data.num_test=64",
    "--config.data.batch_size=16", "--config.data.eval_batch_size=32", "--config.model.vit.width=16",
    "--config.model.vit.depth=1", "--config.model.vit.num_heads=2", "--config.model.vit.mlp_dim=16",
    "--config.model.slim.encoder_widths=(0.5,1.0)", "--config.model.slim.decoder_widths=(0.5,1.0)",
    "--config.model.slim.decoder_hidden=8", "--config.model.slim.num_random=1", "--config.train.steps=4",
    "--config.train.log_every=2", "--config.train.eval_every=4", "--config.train.checkpoint_every=4",
    "--config.train.progress=False", "--config.optim.warmup_steps=1",
]


def test_train_slim_export_and_sweep(tmp_path, capsys):
    workdir = tmp_path / "run"
    args = [*TINY, f"--workdir={workdir}"]
    assert cli.main(["mtljax", "train", *args, "--config.optim.method=upgrad"]) == 0  # Gramian method + CI-KD
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert all(np.isfinite(r["loss"]) for r in records if r["split"] == "train")
    capsys.readouterr()

    export_dir = tmp_path / "sub"
    rc = cli.main(["mtljax", "slim", *args, "--config.optim.method=upgrad", "--budget=80%", "--preference=1,0",
                   f"--export_dir={export_dir}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "configuration: encoder" in out and "% of full" in out and "left" in out and "exported" in out
    model, params, meta = load_subnetwork(str(export_dir))
    info = meta["info"]
    assert info["fraction_of_full"] <= 0.8 and info["params"] < info["source_params"]
    assert info["config"]["decoders"] == {"left": 1.0, "right": 0.5}  # the preferred task keeps its decoder

    # the exported network computes what the super-network computes at that configuration
    config = cli._parse(["mtljax", *TINY, "--config.optim.method=upgrad"]).config
    with config.unlocked():
        config.workdir = str(workdir)
    exp = Experiment(config)
    _, super_params = _restore_params(exp)
    x = exp.dataset.splits["test"].get_batch(np.arange(8))["inputs"]
    want = jax.jit(lambda p: exp.model.apply({"params": p}, x, widths=info["config"])[0])(super_params)
    got = jax.jit(lambda p: model.apply({"params": p}, x)[0])(params)
    for task in want:
        np.testing.assert_allclose(got[task], want[task], rtol=1e-5, atol=1e-6)

    rc = cli.main(["mtljax", "slim", *args, "--config.optim.method=upgrad", "--sweep", "--num_budgets=2",
                   "--num_preferences=4"])
    out = capsys.readouterr().out
    assert rc == 0 and "controllability" in out and "hypervolume" in out
    report = json.load(open(workdir / "slim" / "report.json"))
    assert len(report["budgets"]) == 2 and set(report["metric_table"]) == {"left", "right"}
    assert os.path.getsize(workdir / "slim" / "tradeoff.png") > 1000

    for extra, expected in ((["--budget=80%", "--preference=1,2,3"], "error: --preference has 3 entries"),
                            (["--budget=80%", "--preference=1,-1"], "error: --preference entries must be"),
                            (["--budget=1e2", "--preference=1,1"], "error: --budget 100 FLOPs is below the smallest"),
                            (["--budget=lots"], "error: --budget must be"),
                            (["--budget=150%"], "error: --budget must be in (0, 100%] of the full network's FLOPs"),
                            (["--budget=1e15"], "error: --budget 1e+15 FLOPs per example is above the full network's"),
                            (["--widths=encoder=0.3,left=1,right=1"],
                             "error: --widths.encoder: width multiplier 0.3 is not in the trained set (0.5, 1.0)"),
                            (["--widths=1.5"], "error: --widths.encoder: width multiplier 1.5 is outside (0, 1]"),
                            (["--widths=encoder=1,left=1"], "error: --widths.decoders: unknown task(s) [], missing"),
                            ([], "error: --budget: give a compute budget")):
        rc = cli.main(["mtljax", "slim", *args, "--config.optim.method=upgrad", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith(expected) and err.count("\n") == 1, err


def test_slim_config_errors_name_the_key(tmp_path, capsys):
    cases = [("--config.model.slim.encoder_widths=(0.5,1.5)",
              "config.model.slim.encoder_widths: width multiplier 1.5 is outside (0, 1]"),
             ("--config.model.slim.decoder_widths=(0.25,0.5)",
              "config.model.slim.decoder_widths: (0.25, 0.5) must end at 1.0"),
             ("--config.model.slim.backbone=resnet", "config.model.slim.backbone: unknown 'resnet'"),
             ("--config.optim.level=rep", "config.optim.level: 'rep' needs one representation shared by all tasks"),
             ("--config.model.slim.num_random=-1", "config.model.slim.num_random: must be an integer >= 0")]
    base = [a for a in TINY if "_widths=" not in a]  # one override per key
    for flag, expected in cases:
        rc = cli.main(["mtljax", "train", *base, f"--workdir={tmp_path / 'x'}", flag])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith(f"error: {expected}") and err.count("\n") == 1, err
    rc = cli.main(["mtljax", "slim", *TINY, f"--workdir={tmp_path / 'none'}", "--budget=50%"])
    assert rc == 2 and "holds no checkpoints" in capsys.readouterr().err
    rc = cli.main(["mtljax", "slim", f"--workdir={tmp_path / 'hps'}", "--budget=50%"])
    assert rc == 2 and "mtljax slim needs a slim model" in capsys.readouterr().err
