"""notebooks/quickstart.ipynb runs top to bottom in a fresh kernel (a short run: 30 training steps)."""

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402
from traitlets import default  # noqa: E402

NOTEBOOK = pathlib.Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"


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


def test_quickstart_notebook_runs(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(_outputs(nb)), "commit the notebook without outputs"

    scratch = tmp_path / "tmp"  # the notebook's run directory (tempfile.mkdtemp) lands here
    scratch.mkdir()
    env = dict(os.environ, MTLJAX_NOTEBOOK_STEPS="30", MPLBACKEND="Agg", TMPDIR=str(scratch))
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
    assert "multi-task" in text and "accuracy ↑" in text, text[-2000:]  # the summary table
    assert "{'left': (4, 10), 'right': (4, 10)}" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the data and the training curves are plotted"
    (run,) = scratch.glob("mtljax-quickstart-*")
    assert (run / "metrics.jsonl").exists() and (run / "final_metrics.json").exists()
