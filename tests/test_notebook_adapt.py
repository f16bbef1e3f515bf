"""The adapt notebook runs top to bottom in a fresh kernel."""

import re

from notebook_run import NOTEBOOKS, execute


def test_adapt_notebook_runs(tmp_path):
    """Pretrain, then probe / LoRA / MULTI-LANE from the checkpoint: four compiled runs, the tiny setting."""
    _, text, images = execute(NOTEBOOKS / "adapt.ipynb", tmp_path, steps=20)
    assert "pretrained for 20 steps" in text and "colour" in text, text[-3000:]
    inits = [line for line in text.splitlines() if "init from" in line]
    loaded = r"/pretrain/checkpoints/\S+ \(step 20\): loaded \d+ arrays"  # from the pretraining run
    assert len(inits) == 3 and all(re.search(loaded, line) for line in inits), inits
    assert "lora_query" in inits[1] and "lane_prefix" in inits[2]  # the per-task modules are new
    assert "trained params" in text and "% of backbone" in text and "count acc" in text and "pos_x MSE" in text
    rows = [line for line in text.splitlines() if line.startswith(("linear probe ", "LoRA ", "MULTI-LANE "))]
    assert len(rows) == 3, rows
    assert len(images) >= 2, "the data and the comparison are plotted"
    (runs,) = (tmp_path / "tmp").glob("mtljax-adapt-*")
    assert sorted(p.name for p in runs.iterdir()) == ["LoRA", "MULTI-LANE", "linear_probe", "pretrain"]
