"""The merge notebook runs top to bottom in a fresh kernel."""

from notebook_run import NOTEBOOKS, execute


def test_merge_notebook_runs(tmp_path):
    """Pretrain, three experts, then task arithmetic / TIES / AdaMerging through run_merge: the tiny setting."""
    _, text, images = execute(NOTEBOOKS / "merge.ipynb", tmp_path, steps=20)
    assert "pretrained for 20 steps" in text, text[-3000:]
    assert all(f"expert {t}" in text for t in ("count", "background", "texture")), text[-3000:]
    table = text.split("model ", 1)[1] if "model " in text else ""
    assert "mean acc (3)" in table and "adamerging_layer" in table and "individual experts" in table, text[-3000:]
    assert "'ties':" in text and len(images) >= 1
    (runs,) = (tmp_path / "tmp").glob("mtljax-merge-*")
    assert (runs / "merged" / "sweep.json").exists() and not (runs / "merged" / "checkpoints").exists()
