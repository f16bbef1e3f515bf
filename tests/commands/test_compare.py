"""`mtljax compare`: method specs, shared baselines per seed, Δm and metrics with 95 % CIs and paired
t-tests against equal weighting, table and plot."""

import json

import pytest

from mtljax.commands import cli
from mtljax.config import ConfigError
from mtljax.tasks import Task
from mtljax.commands.compare import aggregate, format_results, parse_methods, parse_spec

# Student's sleep data (Cushny & Peebles), as in tests/test_stats.py: paired over 10 "seeds"
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
TASKS = (Task("a", "regression", metrics=("mse",)),)


def test_parse_specs():
    assert parse_spec("pcgrad@rep+flat") == {"method": "pcgrad", "level": "rep", "sam": "flat"}
    assert parse_spec("equal") == {"method": "equal", "level": None, "sam": None}
    with pytest.raises(ConfigError, match="unknown method"):
        parse_spec("bogus")
    with pytest.raises(ConfigError, match="unknown level"):
        parse_spec("equal@layer")
    assert "upgrad" in parse_methods("all")


def _runs(delta_m, mse):
    return [{"delta_m": d, "metrics": {"a": {"mse": m}}} for d, m in zip(delta_m, mse)]


def test_table_reports_intervals_and_paired_tests():
    equal_mse = [0.5 + 0.01 * k for k in range(10)]
    drug_mse = [m + (0.01 if k % 2 else -0.01) for k, m in enumerate(equal_mse)]  # no systematic change
    results = aggregate(TASKS, {"equal": _runs(SLEEP_1, equal_mse), "drug": _runs(SLEEP_2, drug_mse)})
    # R, t.test(extra ~ group, data = sleep, paired = TRUE): p-value = 0.002833
    assert results["drug"]["delta_m"]["p_vs_equal"] == pytest.approx(0.002833, abs=1e-6)
    # R, t.test(sleep$extra[1:10]): mean 0.75, 95 percent confidence interval -0.5297804 2.0297804
    dm = results["equal"]["delta_m"]
    assert (dm["n"], dm["mean"]) == (10, pytest.approx(0.75))
    assert (dm["ci_low"], dm["ci_high"]) == (pytest.approx(-0.5297804, abs=1e-7), pytest.approx(2.0297804, abs=1e-7))
    assert dm["p_vs_equal"] is None and dm["runs"] == SLEEP_1
    assert results["drug"]["metrics"]["a"]["mse"]["p_vs_equal"] > 0.5
    lines = format_results(TASKS, results).splitlines()
    assert lines[0] == "| method | Δm % [95 % CI] | p (Δm vs equal) | a/mse ↓ [95 % CI] |"
    assert lines[2].startswith("| drug | +2.33 [+0.90, +3.76] * | 0.003 | 0.5450 [")
    assert not lines[2].endswith("* |")  # the metric did not change significantly
    assert lines[3].startswith("| equal | +0.75 [-0.53, +2.03] | ref | 0.5450 [")
    assert lines[5].startswith("n = 10 seeds")


def test_one_seed_gives_no_interval_and_no_test():
    results = aggregate(TASKS, {"equal": _runs([1.0], [0.5]), "drug": _runs([2.0], [0.4])})
    for spec in results:
        for entry in (results[spec]["delta_m"], results[spec]["metrics"]["a"]["mse"]):
            assert entry["n"] == 1 and entry["std"] is None and entry["ci_low"] is None
            assert entry["ci_high"] is None and entry["p_vs_equal"] is None
    lines = format_results(TASKS, results).splitlines()
    assert lines[2] == "| drug | +2.00 [n/a] | n/a | 0.4000 [n/a] |"
    assert lines[3] == "| equal | +1.00 [n/a] | ref | 0.5000 [n/a] |"
    assert "no confidence interval and no test" in lines[5]


def test_compare_command_writes_table_and_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["mtljax", "compare", "--config=configs/multitab.py:conflict", "--methods=equal@gramian",
            "--seeds=2", f"--outdir={out}", f"--workdir={tmp_path / 'w'}", "--config.train.steps=30",
            "--config.data.num_tasks=2", "--config.data.degrees=(1,2)", "--config.data.num_features=8",
            "--config.data.num_train=512", "--config.data.num_test=128", "--config.model.mlp.hidden=(16,)",
            "--config.train.eval_every=30", "--config.train.checkpoint_every=30", "--config.data.batch_size=64"]
    assert cli.main(args) == 0
    results = json.load(open(out / "results.json"))
    assert set(results) == {"equal", "equal@gramian"}  # equal weighting, the reference, is added
    for r in results.values():
        for entry in (r["delta_m"], r["metrics"]["t0"]["mse"]):
            assert entry["n"] == len(entry["runs"]) == 2
            assert entry["ci_low"] < entry["mean"] < entry["ci_high"]
    # equal weighting ignores the gradient level: identical runs, identical Δm
    assert results["equal"]["delta_m"]["runs"] == pytest.approx(results["equal@gramian"]["delta_m"]["runs"])
    # so there is nothing to test: no p-value, no mark
    assert results["equal@gramian"]["delta_m"]["p_vs_equal"] is None
    assert results["equal"]["delta_m"]["p_vs_equal"] is None  # the reference itself
    # the two seeds give different runs
    assert results["equal"]["delta_m"]["runs"][0] != results["equal"]["delta_m"]["runs"][1]
    assert (out / "tradeoff.png").stat().st_size > 1000
    rows = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| equal")]
    assert len(rows) == 2 and all(" * " not in r and " *|" not in r for r in rows)
    assert " | ref | " in rows[0] + rows[1] and " | n/a | " in rows[0] + rows[1]
    assert (out / "seed0" / "baselines.json").exists() and (out / "seed1" / "baselines.json").exists()
    capsys.readouterr()
