"""`mtljax compare`: method specs, shared baselines per seed, Δm mean ± std, table and plot."""

import json

import pytest

from mtljax import cli
from mtljax.config import ConfigError
from mtljax.train.compare import parse_methods, parse_spec


def test_parse_specs():
    assert parse_spec("pcgrad@rep+flat") == {"method": "pcgrad", "level": "rep", "sam": "flat"}
    assert parse_spec("equal") == {"method": "equal", "level": None, "sam": None}
    with pytest.raises(ConfigError, match="unknown method"):
        parse_spec("bogus")
    with pytest.raises(ConfigError, match="unknown level"):
        parse_spec("equal@layer")
    assert "upgrad" in parse_methods("all")


def test_compare_command_writes_table_and_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["mtljax", "compare", "--config=configs/multitab.py:conflict", "--methods=equal,equal@gramian",
            "--seeds=2", f"--outdir={out}", f"--workdir={tmp_path / 'w'}", "--config.train.steps=30",
            "--config.data.num_tasks=2", "--config.data.degrees=(1,2)", "--config.data.num_features=8",
            "--config.data.num_train=512", "--config.data.num_test=128", "--config.model.mlp.hidden=(16,)",
            "--config.train.eval_every=30", "--config.train.checkpoint_every=30", "--config.data.batch_size=64"]
    assert cli.main(args) == 0
    results = json.load(open(out / "results.json"))
    assert set(results) == {"equal", "equal@gramian"}
    for r in results.values():
        assert len(r["delta_m"]["runs"]) == 2
    # equal weighting ignores the gradient level: identical runs, identical Δm
    assert results["equal"]["delta_m"]["runs"] == pytest.approx(results["equal@gramian"]["delta_m"]["runs"])
    # the two seeds give different runs
    assert results["equal"]["delta_m"]["runs"][0] != results["equal"]["delta_m"]["runs"][1]
    assert (out / "tradeoff.png").stat().st_size > 1000
    assert "| equal |" in (out / "results.md").read_text()
    assert (out / "seed0" / "baselines.json").exists() and (out / "seed1" / "baselines.json").exists()
    capsys.readouterr()
