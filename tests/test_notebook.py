"""The notebooks run top to bottom in a fresh kernel (short runs, set by MTLJAX_NOTEBOOK_STEPS), and each
opens with the Colab set-up cell."""

import os
import pathlib
import re
import tomllib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402
from traitlets import default  # noqa: E402

ROOT = pathlib.Path(__file__).parents[1]
NOTEBOOKS = ROOT / "notebooks"
NOTEBOOK = NOTEBOOKS / "quickstart.ipynb"


class ThisPythonKernel(AsyncKernelManager):
    """The ``python3`` kernel of the interpreter running the tests, whatever kernelspecs are installed.

    With no kernel directories, jupyter_client falls back to ipykernel's built-in spec, which launches
    ``sys.executable -m ipykernel_launcher``: the kernel sees the same environment (and mtljax) as
    pytest, even when a user-level ``python3`` kernelspec points at another Python.
    """

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self):
        return KernelSpecManager(kernel_dirs=[], parent=self)


def _outputs(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            yield from cell.get("outputs", [])


def _execute(path, tmp_path, steps):
    """Run the notebook at ``path`` (committed without outputs) in a fresh kernel whose working directory
    is ``tmp_path`` and whose temporary directory is ``tmp_path/tmp``; ``(outputs, printed text, images)``."""
    nb = nbformat.read(path, as_version=4)
    assert not any(_outputs(nb)), "commit the notebook without outputs"
    scratch = tmp_path / "tmp"  # the notebook's run directory (tempfile.mkdtemp) lands here
    scratch.mkdir()
    env = dict(os.environ, MTLJAX_NOTEBOOK_STEPS=str(steps), MPLBACKEND="Agg", TMPDIR=str(scratch))
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        kernel_manager_class=ThisPythonKernel,
        timeout=300,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    client.execute(env=env)  # raises CellExecutionError (with the traceback) if a cell fails

    outputs = list(_outputs(nb))
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    text += "".join(o.get("data", {}).get("text/plain", "") for o in outputs if "data" in o)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    return outputs, text, images


def test_quickstart_notebook_runs(tmp_path):
    _, text, images = _execute(NOTEBOOK, tmp_path, steps=30)
    assert "multi-task" in text and "accuracy ↑" in text, text[-2000:]  # the summary table
    assert "{'left': (4, 10), 'right': (4, 10)}" in text
    assert len(images) >= 2, "the data and the training curves are plotted"
    (run,) = (tmp_path / "tmp").glob("mtljax-quickstart-*")
    assert (run / "metrics.jsonl").exists() and (run / "final_metrics.json").exists()


def test_adapt_notebook_runs(tmp_path):
    """Pretrain, then probe / LoRA / MULTI-LANE from the checkpoint: four compiled runs, the tiny setting."""
    _, text, images = _execute(NOTEBOOKS / "adapt.ipynb", tmp_path, steps=20)
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


def test_merge_notebook_runs(tmp_path):
    """Pretrain, three experts, then task arithmetic / TIES / AdaMerging through run_merge: the tiny setting."""
    _, text, images = _execute(NOTEBOOKS / "merge.ipynb", tmp_path, steps=20)
    assert "pretrained for 20 steps" in text, text[-3000:]
    assert all(f"expert {t}" in text for t in ("count", "background", "texture")), text[-3000:]
    table = text.split("model ", 1)[1] if "model " in text else ""
    assert "mean acc (3)" in table and "adamerging_layer" in table and "individual experts" in table, text[-3000:]
    assert "'ties':" in text and len(images) >= 1
    (runs,) = (tmp_path / "tmp").glob("mtljax-merge-*")
    assert (runs / "merged" / "sweep.json").exists() and not (runs / "merged" / "checkpoints").exists()


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
