"""Notebooks: what every notebook's first cell does after its `%pip` line, and running one headless.

    BASE, QUANTIZATION = setup("tiny")        # the first cell of every notebook
    run_notebook(path, workdir, settings)     # `make demo` and the tests: other sizes, no browser
    static_page(executed, "reports/notebooks/00_quickstart.html")  # `make pages`: a copy to read first

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

`static_page` turns an executed notebook into an HTML page that needs neither a kernel nor the widgets'
saved state, and `write_pages` (`make pages`, `python -m rlhflab.lab.notebook [--quick]`) writes one for
each notebook, so a participant can read the results before running anything.

`INSTALL` is the one requirement every notebook's install cell installs on Colab, pinned to the
release tag of this version, and `colab_url` the link that opens a notebook at that same tag, so a
notebook always runs with the package it was written for (tests/test_notebooks.py checks that each
notebook's cell says exactly `INSTALL`, and that the README's links are `colab_url`'s).
"""

from __future__ import annotations

import argparse
import copy
import html
import importlib.metadata
import importlib.resources
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from .. import __version__
from ..trainers.embedded import NAMES as EMBEDDED_NAMES
from ..trainers.embedded import SMOLLM2
from ..trainers.models import default_device, precision_for

__all__ = ["INSTALL", "colab_url", "DRIVE", "WIDGET_STATE", "WIDGET_VIEW", "PLOTLY_JS", "LAST_PICTURES",
           "setup", "replaced_under_the_kernel", "label_store", "earlier_output", "shipped_notebook",
           "run_notebook", "static_page", "write_pages", "main"]

REPOSITORY = "rlhflab/rlhflab"  # on GitHub: the code, and a tag for every release
RELEASE = f"v{__version__}"  # the tag of this version: what every notebook installs and every Colab link opens
INSTALL = f"rlhflab @ git+https://github.com/{REPOSITORY}@{RELEASE}"


def colab_url(notebook: str) -> str:
    """The Colab link that opens `notebook` (e.g. '00_quickstart.ipynb') at this version's release tag."""
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{RELEASE}/notebooks/{notebook}"


RESTART_AFTER_UPGRADE = ("torch", "ipywidgets")  # what a kernel keeps using once imported, whatever pip does
DRIVE = "/content/drive"  # where Colab mounts Google Drive
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"  # nbclient's key in the notebook metadata
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"  # an output that only a widget manager can draw
PLOTLY = "application/vnd.plotly.v1+json"  # a plotly figure's output, drawn by plotly.js
PLOTLY_JS = "plotly.min.js"  # written once beside the pages, which load it from there (no CDN)
# nbconvert's JupyterLab page, less require.js (with it, plotly.js would register as an AMD module instead of
# `window.Plotly`), plus plotly.js, and with cells collapsed in the notebook (solutions) collapsed on the page
PAGE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}
{%- if resources.plotly_js %}<script charset="utf-8" src="{{ resources.plotly_js }}"></script>{% endif -%}
{%- endblock html_head_js_requirejs -%}
{%- block input -%}
{%- if cell.metadata.get('jupyter', {}).get('source_hidden') -%}
<details><summary>collapsed in the notebook: click to show the code</summary>{{ super() }}</details>
{%- else -%}{{ super() }}{%- endif -%}
{%- endblock input -%}
"""
# What `write_pages` runs after a notebook's last cell. A FigureWidget sends each change after its display to
# the front end as a delta, which the saved widget state does not keep; this re-sends each one's whole figure
# (as plain JSON), so that the state, and so the page, hold its last picture.
LAST_PICTURES = """import gc, json
from plotly.graph_objects import FigureWidget  # once: `go.FigureWidget` is a lazy lookup, slow 400,000 times
for widget in [o for o in gc.get_objects() if issubclass(type(o), FigureWidget)]:  # type(): no proxy's __class__
    figure = json.loads(widget.to_json())
    widget._widget_data, widget._widget_layout = figure["data"], figure["layout"]
"""


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
        running = str(getattr(module, "__version__", on_disk))
        if not same_release(running, on_disk):
            replaced.append(f"{name} {running} -> {on_disk}")
    return replaced


def same_release(running: str, on_disk: str) -> bool:
    """Whether two version strings name one release. A build tag such as '+cu130' counts only when both
    carry one: some images install CUDA torch under metadata that omits it ('2.11.0' for '2.11.0+cu130')."""
    from packaging.version import InvalidVersion, Version

    try:
        a, b = Version(running), Version(on_disk)
    except InvalidVersion:
        return running == on_disk
    return a.public == b.public and (a.local == b.local or a.local is None or b.local is None)


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
    print(f"labels go to {kept}: written into that one file at every click (no -wal file on Drive), and durable in "
          "your Google Drive once Drive has uploaded it, which it does in the background: before you close the "
          "runtime, run `from google.colab import drive; drive.flush_and_unmount()` (one person at a time; a team "
          "on separate machines needs a Postgres URL)")
    return str(kept)


def earlier_output(path: str | Path, what: str, notebook: str, otherwise: str,
                   marker: str | None = "adapter_config.json") -> Path | None:
    """`path` when the earlier `notebook` left `what` there, else None; prints which, and what this notebook
    does `otherwise`, so a participant who skipped a notebook knows the next one still runs.

    When `path` is a directory, `marker` is the file inside it that a finished save writes last or alone
    (peft's adapter_config.json), so a half-written directory is not reused. A file (a label store) is the
    output itself.
    """
    found = Path(path) / marker if marker and Path(path).is_dir() else Path(path)
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
    from traitlets.config import Config

    notebook = nbformat.read(path, as_version=4)
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    if not tagged:
        raise ValueError(f"{path} has no cell tagged 'parameters' to put the settings after; tag the cell that "
                         "holds its sizes (View > Cell toolbar > Tags in Jupyter)")
    notebook.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(settings))
    client = NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                            startup_timeout=180,  # 60 s was too short for a kernel start on 2 busy cores
                            resources={"metadata": {"path": str(workdir)}},
                            config=Config(KernelManager=local_sockets()))
    try:
        client.execute()
    finally:
        if save_to is not None:
            nbformat.write(notebook, save_to)
    return notebook


def local_sockets() -> dict:
    """Kernel settings for local sockets instead of TCP: no open port, and no "Kernel is running over TCP
    without encryption" warning. The socket path is absolute: a relative one would resolve against the
    kernel's working directory (the notebook's) and this process's apart."""
    return {"transport": "ipc", "ip": str(Path(tempfile.gettempdir()) / f"rlhflab-kernel-{uuid.uuid4().hex[:12]}")}


def static_page(notebook, path: str | Path) -> Path:
    """Write an executed notebook as an HTML page that needs neither a kernel nor the widgets' saved state.

    nbclient saves every widget's state in the notebook, and each plotly FigureWidget's state carries
    plotly's whole JavaScript bundle (5 MB), so an executed quickstart weighs 26-36 MB. The page leaves that
    state out and draws each widget from it: a plotly FigureWidget as a static chart, a progress bar as a
    bar, and a widget that needs a kernel to act (a labeler) as one line that says so. A FigureWidget's
    saved state is its figure when it was first shown, unless the notebook ran `LAST_PICTURES` at the end
    (as `write_pages` does): then every live plot shows its last picture, wherever it was shown.
    plotly.js is written once beside the page, which loads it from there. Returns the path.
    """
    try:
        from jinja2 import DictLoader
        from nbconvert import HTMLExporter
    except ImportError as error:
        raise ImportError(f"a page needs nbconvert ({error}), which JupyterLab brings: pip install 'rlhflab[lab]', "
                          "or pip install nbconvert") from error

    notebook = copy.deepcopy(notebook)
    state = notebook.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    charts = 0
    for output in (o for cell in notebook.cells for o in cell.get("outputs", [])):
        data = output.get("data", {})
        if WIDGET_VIEW in data:
            output["data"] = {"text/html": _widget_html(state, data[WIDGET_VIEW]["model_id"])}
        elif PLOTLY in data:  # plotly's notebook renderer may have inlined its own copy of plotly.js
            output["data"] = {"text/html": _chart_html(data[PLOTLY])}
        charts += "plotly-graph-div" in output.get("data", {}).get("text/html", "")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if charts:
        from plotly.offline import get_plotlyjs

        (path.parent / PLOTLY_JS).write_text(get_plotlyjs())  # the plotly.js of the plotly that drew the charts
    exporter = HTMLExporter(extra_loaders=[DictLoader({"page.html.j2": PAGE_TEMPLATE})], template_file="page.html.j2")
    body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": path.stem},
                                                               "plotly_js": PLOTLY_JS if charts else ""})
    path.write_text(body)
    return path


def _widget_html(state: dict, model_id: str) -> str:
    """A widget from its saved state, as static HTML (its children too)."""
    if model_id not in state:
        return "<p><i>(a widget whose state was not saved)</i></p>"
    name, traits = state[model_id]["model_name"], state[model_id]["state"]
    kind = traits.get("_anywidget_id", "")
    if kind.startswith("plotly."):
        return _chart_html({"data": traits["_widget_data"], "layout": traits["_widget_layout"]})
    if name in ("VBoxModel", "HBoxModel", "BoxModel"):
        direction = "row; align-items: center" if name == "HBoxModel" else "column"
        children = "".join(_widget_html(state, child.removeprefix("IPY_MODEL_")) for child in traits["children"])
        return f"<div style='display: flex; flex-direction: {direction}; gap: 4px'>{children}</div>"
    if name == "HTMLModel":
        return traits["value"]  # HTML the kernel made and the notebook showed as is (rlhflab escapes model text)
    if name in ("FloatProgressModel", "IntProgressModel"):
        return f"<progress value='{float(traits['value'])}' max='{float(traits['max'])}'></progress>"
    return f"<p><i>({html.escape(kind or name)}: an interactive widget; run the notebook to use it)</i></p>"


def _chart_html(figure: dict) -> str:
    import plotly.graph_objects as go

    return go.Figure(figure).to_html(full_html=False, include_plotlyjs=False, config={"responsive": True})


def write_pages(out_dir: str | Path = "reports/notebooks", quick: bool = False,
                workdir: str | Path = "runs/pages") -> list[Path]:
    """`make pages`: run every notebook of the lab headless, in order and in one `workdir` (so each one reuses
    what the one before it left, as for a participant), and write each as a `static_page` in `out_dir`.

    `quick` sets each notebook's QUICK toggle. Returns the pages' paths.
    """
    import nbformat

    out_dir, workdir = Path(out_dir), Path(workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)  # every run starts afresh, like `make demo`
    workdir.mkdir(parents=True)
    pages = []
    for notebook in sorted(shipped_notebook("00_quickstart.ipynb").parent.glob("*.ipynb")):
        started = time.time()
        ending = nbformat.read(notebook, as_version=4)
        ending.cells.append(nbformat.v4.new_code_cell(LAST_PICTURES))
        nbformat.write(ending, workdir / notebook.name)
        executed = run_notebook(workdir / notebook.name, workdir, f"QUICK = {quick}", timeout_s=3600,
                                save_to=workdir / notebook.name)
        executed.cells.pop()  # LAST_PICTURES, which is no part of the notebook
        pages.append(static_page(executed, out_dir / f"{notebook.stem}.html"))
        print(f"{notebook.name}: ran in {time.time() - started:.0f} s; {pages[-1]} "
              f"({pages[-1].stat().st_size / 2**20:.1f} MB)", flush=True)
    return pages


def main() -> None:
    parser = argparse.ArgumentParser(description="Run every notebook headless and write one HTML page per "
                                                 "notebook (`make pages`).")
    parser.add_argument("--out", default="reports/notebooks", help="where the pages go")
    parser.add_argument("--quick", action="store_true", help="each notebook's QUICK settings (minutes, not an hour)")
    args = parser.parse_args()
    write_pages(args.out, quick=args.quick)


if __name__ == "__main__":
    main()
