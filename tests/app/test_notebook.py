"""The quickstart notebook: committed with the outputs of a run top to bottom (its figures show where it is
browsed), and executed again here, so it cannot drift from the library."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "01_quickstart.ipynb"


def _outputs(notebook) -> list:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]


def test_quickstart_is_committed_with_the_outputs_of_one_run_in_order():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))  # one run, top to bottom
    outputs = _outputs(notebook)
    assert not [o for o in outputs if o.output_type == "error"]
    assert len([o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]) >= 6


@pytest.mark.slow
def test_quickstart_runs(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TL_QUICKSTART_OUT", str(tmp_path))  # the kernel inherits this process's environment
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    outputs = _outputs(notebook)
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) >= 6  # confusion, reliability, top losses, three Grad-CAM overlays
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "linear probe: val" in text and "start with: python train.py finetuning=" in text
    assert "int8 in ExecuTorch's runtime: test accuracy" in text and "same answer as PyTorch on" in text
    assert (tmp_path / "train" / "report.md").is_file() and (tmp_path / "probe" / "probe.json").is_file()
    assert (tmp_path / "phone" / "model.int8.pte").is_file()
