"""Running a notebook top to bottom in a fresh kernel (short runs, set by MTLJAX_NOTEBOOK_STEPS) for the
notebook tests (one file per notebook, so that pytest-xdist's workers run them side by side)."""

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

ROOT = pathlib.Path(__file__).parents[1]
NOTEBOOKS = ROOT / "notebooks"


class ThisPythonKernel(AsyncKernelManager):
    """The ``python3`` kernel of the interpreter running the tests, whatever kernelspecs are installed.

    With no kernel directories, jupyter_client falls back to ipykernel's built-in spec, which launches
    ``sys.executable -m ipykernel_launcher``: the kernel sees the same environment (and mtljax) as
    pytest, even when a user-level ``python3`` kernelspec points at another Python.
    """

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self):
        return KernelSpecManager(kernel_dirs=[], parent=self)


def outputs_of(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            yield from cell.get("outputs", [])


def execute(path, tmp_path, steps):
    """Run the notebook at ``path`` (committed without outputs) in a fresh kernel whose working directory
    is ``tmp_path`` and whose temporary directory is ``tmp_path/tmp``; ``(outputs, printed text, images)``."""
    nb = nbformat.read(path, as_version=4)
    assert not any(outputs_of(nb)), "commit the notebook without outputs"
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

    outputs = list(outputs_of(nb))
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    text += "".join(o.get("data", {}).get("text/plain", "") for o in outputs if "data" in o)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    return outputs, text, images
