"""Every notebook runs headless, top to bottom, with small settings."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
SMALL = {  # overrides of each notebook's parameters cell
    "01_sft.ipynb": "N_DEMONSTRATIONS = 64\nN_HELDOUT = 8\nEPOCHS = 1.0",
}


def run_notebook(name: str, workdir: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    index = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(SMALL[name]))
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    return notebook


def test_every_notebook_has_small_settings():
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} == set(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_runs(name, tmp_path):
    notebook = run_notebook(name, tmp_path)
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = "\n".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert "mean gold score: base" in text
    widgets = [o for c in notebook.cells for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, "the live plot did not render as a widget inside the kernel"
    assert (tmp_path / "runs/01_sft/adapter_model.safetensors").exists()
