"""Notebooks: what every notebook's first cell does after its `%pip` line, and running one headless.

    BASE, QUANTIZATION = setup("tiny")        # the first cell of every notebook
    run_notebook(path, workdir, settings)     # `make demo` and the tests: other sizes, no browser

`setup`:

- On Colab it turns on the custom widget manager, which the labeling widgets and live plots need.
- It picks the weights: embedded models ('tiny', 'smollm2-135m') and local directories load
  unquantized; a hub model on a GPU loads in 4-bit (QLoRA), so a T4's 15 GB holds it.
- It prints the model, the device and the precision in use, and says when a choice will be slow
  or cannot work here, instead of silently swapping the model.
- It stops with the fix when the install cell's `%pip` replaced torch or ipywidgets under a kernel
  that had already imported them: only a restart loads the new version.

`label_store` says whether a notebook's labels outlive the session (on Colab: only in Google Drive or
Postgres), and `earlier_output` lets a notebook reuse what the one before it left (SFT adapter,
labels, reward model) and say so, or say what it does instead when that notebook never ran.

`INSTALL` is the one requirement every notebook's install cell installs on Colab, pinned to the
release tag of this version, so a notebook always gets the package it was written for
(tests/test_notebooks.py checks that each notebook's cell says exactly this).
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import sys
from pathlib import Path

from . import __version__
from .embedded import NAMES as EMBEDDED_NAMES
from .embedded import SMOLLM2
from .models import default_device, precision_for

INSTALL = f"rlhflab @ git+https://github.com/rlhflab/rlhflab@v{__version__}"  # the tag must exist on release
RESTART_AFTER_UPGRADE = ("torch", "ipywidgets")  # what a kernel keeps using once imported, whatever pip does
DRIVE = "/content/drive"  # where Colab mounts Google Drive


def setup(base: str = "tiny", quantization: str | None = "auto") -> tuple[str, str | None]:
    """Prepare the notebook and return (base, quantization) for every stage's loader.

    Args:
        base: 'tiny', 'smollm2-135m', a local model directory or a hub id.
        quantization: '4bit', '8bit', None, or 'auto' (4-bit for a hub model on a GPU, else None).
    """
    replaced = replaced_under_the_kernel()
    if replaced:
        raise RuntimeError(f"the install cell upgraded {', '.join(replaced)} while this kernel still runs the old "
                           "version; restart it (Colab: Runtime > Restart session; Jupyter: Kernel > Restart), then "
                           "run the notebook from the top again: the install is then instant and changes nothing")
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
              "start with QUICK = True in the parameters cell.")
    return base, quantization


def replaced_under_the_kernel() -> list[str]:
    """'name old -> new' for each of RESTART_AFTER_UPGRADE that this kernel imported before pip put
    another version on disk."""
    replaced = []
    for name in RESTART_AFTER_UPGRADE:
        module = sys.modules.get(name)
        if module is None:
            continue
        try:
            on_disk = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        running = getattr(module, "__version__", on_disk)
        if running != on_disk:
            replaced.append(f"{name} {running} -> {on_disk}")
    return replaced


def label_store(url: str, drive: bool = False) -> str:
    """Where a notebook's labels go, saying whether they outlive the session.

    A Postgres URL, or a file on this computer's disk, is durable. On Colab a file lives on the
    runtime's disk and vanishes with the runtime; with `drive` it goes to Google Drive instead
    (MyDrive/rlhflab/, after Colab asks for access), which outlives it. Returns the store's URL or path.
    """
    if "://" in url:
        print(f"labels go to {url.split('@')[-1]}: durable in that database, and shared with whoever uses it")
        return url
    if "google.colab" not in sys.modules:
        print(f"labels go to {Path(url).resolve()}: durable on this disk, committed the moment you click")
        return url
    if not drive:
        print(f"labels go to {url} on this Colab runtime: committed the moment you click, but gone when the "
              "runtime is recycled (idle or closed); keep them with label_store(..., drive=True) (02_label: "
              "KEEP_ON_DRIVE = True), which puts them in Google Drive, or with a Postgres URL")
        return url
    from google.colab import drive as google_drive

    google_drive.mount(DRIVE)
    kept = Path(DRIVE) / "MyDrive" / "rlhflab" / Path(url).name
    kept.parent.mkdir(parents=True, exist_ok=True)
    print(f"labels go to {kept}: durable in your Google Drive after the runtime is gone (one person at a time; a team "
          "on separate machines needs a Postgres URL)")
    return str(kept)


def earlier_output(path: str | Path, what: str, notebook: str, otherwise: str,
                   marker: str | None = "adapter_config.json") -> Path | None:
    """`path` when the earlier `notebook` left `what` there, else None; prints which, and what this notebook
    does `otherwise`, so a participant who skipped a notebook knows the next one still runs.

    `marker` is the file inside the directory `path` that a finished save writes last or alone (peft's
    adapter_config.json), so a half-written directory is not reused; None when `path` is itself the file.
    """
    found = Path(path) / marker if marker else Path(path)
    if found.is_file():
        print(f"reusing the {what} of {notebook}: {path}")
        return Path(path)
    print(f"no {what} of {notebook} at {path} ({notebook} did not run here): {otherwise}")
    return None


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
