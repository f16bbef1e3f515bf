"""The quickstart notebook runs top to bottom in a fresh kernel, and every notebook opens with the Colab
set-up cell (the adapt and merge notebooks run in test_notebook_adapt.py / test_notebook_merge.py)."""

import tomllib

import pytest

from notebook_run import NOTEBOOKS, ROOT, execute, nbformat


def test_quickstart_notebook_runs(tmp_path):
    _, text, images = execute(NOTEBOOKS / "quickstart.ipynb", tmp_path, steps=30)
    assert "multi-task" in text and "accuracy ↑" in text, text[-2000:]  # the summary table
    assert "{'left': (4, 10), 'right': (4, 10)}" in text
    assert len(images) >= 2, "the data and the training curves are plotted"
    (run,) = (tmp_path / "tmp").glob("mtljax-quickstart-*")
    assert (run / "metrics.jsonl").exists() and (run / "final_metrics.json").exists()


@pytest.mark.parametrize("name", ["quickstart.ipynb", "adapt.ipynb", "merge.ipynb"])
def test_notebook_opens_with_colab_setup(name):
    """The first code cell installs mtljax only where it is not importable, from the repository that
    pyproject.toml names; a checkout (and CI) skips it."""
    repository = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert first.source.lstrip().startswith("# Colab set-up"), first.source
    assert "try:\n    import mtljax\nexcept ImportError:\n" in first.source
    assert f'REPOSITORY = "{repository}"' in first.source and "pip" in first.source
    body = first.source.split("except ImportError:\n", 1)[1]
    assert all(not line.strip() or line.startswith("    ") for line in body.splitlines()), "all under except"
