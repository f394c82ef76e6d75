"""The quickstart notebook: committed without outputs, and executed top to bottom."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "01_quickstart.ipynb"


def test_quickstart_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_quickstart_runs(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TL_QUICKSTART_OUT", str(tmp_path))  # the kernel inherits this process's environment
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) >= 6  # confusion, reliability, top losses, three Grad-CAM overlays
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "linear probe: val" in text and "start with: python train.py finetuning=" in text
    assert (tmp_path / "train" / "report.md").is_file() and (tmp_path / "probe" / "probe.json").is_file()
