"""Notebooks: what every notebook's first cell does after its `%pip` line, and running one headless.

    BASE, QUANTIZATION = setup("tiny")        # the first cell of every notebook
    run_notebook(path, workdir, settings)     # `make demo` and the tests: other sizes, no browser

`setup`:

- On Colab it turns on the custom widget manager, which the labeling widgets and live plots need.
- It picks the weights: embedded models ('tiny', 'smollm2-135m') and local directories load
  unquantized; a hub model on a GPU loads in 4-bit (QLoRA), so a T4's 15 GB holds it.
- It prints the model, the device and the precision in use, and says when a choice will be slow
  or cannot work here, instead of silently swapping the model.
"""

from __future__ import annotations

import importlib.resources
import sys
from pathlib import Path

from .embedded import NAMES as EMBEDDED_NAMES
from .embedded import SMOLLM2
from .models import default_device, precision_for


def setup(base: str = "tiny", quantization: str | None = "auto") -> tuple[str, str | None]:
    """Prepare the notebook and return (base, quantization) for every stage's loader.

    Args:
        base: 'tiny', 'smollm2-135m', a local model directory or a hub id.
        quantization: '4bit', '8bit', None, or 'auto' (4-bit for a hub model on a GPU, else None).
    """
    if "google.colab" in sys.modules:
        from google.colab import output

        output.enable_custom_widget_manager()
    device = default_device()
    from_hub = base not in EMBEDDED_NAMES and not Path(base).expanduser().is_dir()
    if quantization == "auto":
        quantization = "4bit" if from_hub and device != "cpu" else None
    weights = {None: "unquantized", "4bit": "4-bit nf4", "8bit": "8-bit"}[quantization]
    compute = {"no": "fp32", "bf16": "bf16", "fp16": "fp16 with loss scaling"}[precision_for(device).mixed_precision]
    print(f"model: {base} | device: {device} | precision: {compute} | weights: {weights}")
    if from_hub and device == "cpu":
        print(f"note: {base!r} comes from the hub and runs on the CPU here, which is slow for models of "
              f"0.5B parameters and more; {SMOLLM2!r} is a real instruct model that runs offline on a CPU. "
              "On Colab: Runtime > Change runtime type > T4 GPU.")
    if base == SMOLLM2:
        print("note: smollm2-135m has 53x the parameters of 'tiny': on a CPU every stage takes minutes, so "
              "start with the small settings of the parameters cell.")
    return base, quantization


def shipped_notebook(name: str) -> Path:
    """A notebook of the lab by file name, from the installed package (`rlhflab.notebooks`)."""
    path = Path(str(importlib.resources.files("rlhflab.notebooks").joinpath(name)))
    if not path.is_file():
        raise FileNotFoundError(f"no notebook {name!r} in rlhflab.notebooks; the lab ships "
                                f"{sorted(p.name for p in path.parent.glob('*.ipynb'))}")
    return path


def run_notebook(path: str | Path, workdir: str | Path, settings: str = "", timeout_s: int = 600,
                 save_to: str | Path | None = None):
    """Execute a notebook headless in `workdir`, with `settings` (Python lines) run right after its cell
    tagged 'parameters' (papermill's convention), so the same notebook runs at other sizes.

    Returns the executed notebook; `save_to` also writes it there, failed cells and all, when a cell raises.
    """
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    if not tagged:
        raise ValueError(f"{path} has no cell tagged 'parameters' to put the settings after; tag the cell that "
                         "holds its sizes (View > Cell toolbar > Tags in Jupyter)")
    notebook.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(settings))
    client = NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                            startup_timeout=180,  # 60 s was too short for a kernel start on 2 busy cores
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    finally:
        if save_to is not None:
            nbformat.write(notebook, save_to)
    return notebook
