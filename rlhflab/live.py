"""Live training plots: one callback for every trainer in the lab.

`LivePlot` is a transformers `TrainerCallback` (so TRL's SFT, reward and DPO trainers feed it as is)
and has a plain `log(step, metrics)` for the lab's own loops (PPO). Metrics are grouped into
panels by the prefix of their slash-separated name (`objective/kl` goes to the `objective` panel).

- In a notebook kernel it shows one plotly FigureWidget per panel, updated in place. FigureWidget is
  an anywidget, so it renders in JupyterLab 4, Notebook 7, VS Code and Colab (after
  `google.colab.output.enable_custom_widget_manager()`).
- Everywhere, when given a `run_dir`, it appends each record to `metrics.jsonl` as it arrives and
  writes a static `metrics.html` (plotly inlined, viewable offline) when training ends.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections import defaultdict
from pathlib import Path

from transformers import TrainerCallback

IGNORED = {"epoch", "total_flos", "step"}  # bookkeeping the Trainer logs, not worth a curve
HEADLESS_ENV = "RLHFLAB_HEADLESS"  # set to 1 to skip widgets even inside a kernel


def panel_of(name: str) -> str:
    """'objective/kl' -> 'objective'; the Trainer's bare names ('loss') -> 'train', 'eval_loss' -> 'eval'."""
    if "/" in name:
        return name.split("/", 1)[0]
    return "eval" if name.startswith("eval_") else "train"


def in_notebook() -> bool:
    if os.environ.get(HEADLESS_ENV) == "1":
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


class LivePlot(TrainerCallback):
    """Collects metrics, draws them live in notebooks, and keeps them in JSONL and HTML.

    Args:
        run_dir: where metrics.jsonl and metrics.html go; None keeps them in memory only.
        title: heading of the dashboard and the HTML page.
        widgets: show FigureWidgets; by default only inside a notebook kernel.

    Examples:
        >>> live = LivePlot(run_dir=None, widgets=False)
        >>> live.log(1, {"objective/kl": 0.1, "objective/scores": 0.5})
        >>> live.history["objective/kl"]
        [(1, 0.1)]
    """

    def __init__(self, run_dir: str | Path | None = None, title: str = "training", widgets: bool | None = None):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.title = title
        self.widgets = in_notebook() if widgets is None else widgets
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self._figures: dict = {}  # panel -> FigureWidget
        self._box = None
        self._samples = None  # HTML widget with the latest sample table
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.jsonl_path.write_text("")

    @property
    def jsonl_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def html_path(self) -> Path:
        return self.run_dir / "metrics.html"

    # -- the one entry point every trainer uses ---------------------------------------------------

    def log(self, step: int, metrics: dict) -> None:
        """Record one step's metrics (non-numeric and non-finite values are kept out of the curves)."""
        curves = {k: float(v) for k, v in metrics.items()
                  if k not in IGNORED and isinstance(v, (int, float)) and math.isfinite(v)}
        for name, value in curves.items():
            self.history[name].append((step, value))
        if self.run_dir is not None:
            with self.jsonl_path.open("a") as f:
                f.write(json.dumps({"step": step, **curves}) + "\n")
        if self.widgets and curves:
            self._draw(curves)

    def samples(self, step: int, table) -> None:
        """Show a table of samples (a DataFrame; model text is escaped) and keep it in samples.jsonl."""
        if self.run_dir is not None:
            with (self.run_dir / "samples.jsonl").open("a") as f:
                for row in table.to_dict("records"):
                    f.write(json.dumps({"step": step, **row}) + "\n")
        if self.widgets:
            import ipywidgets
            from IPython.display import display

            if self._samples is None:
                self._samples = ipywidgets.HTML()
                display(self._samples)
            self._samples.value = f"<b>samples at step {step}</b>" + table.to_html(index=False, escape=True)

    def close(self) -> None:
        """Write the static HTML plot; call when training ends (trainers do it for you)."""
        if self.run_dir is not None and self.history:
            self.figure().write_html(self.html_path, include_plotlyjs=True)

    # -- transformers TrainerCallback hooks --------------------------------------------------------

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.log(state.global_step, logs or {})

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    # -- drawing ---------------------------------------------------------------------------------

    def panels(self) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = defaultdict(list)
        for name in self.history:
            grouped[panel_of(name)].append(name)
        return dict(grouped)

    def figure(self):
        """A static plotly figure: one row per panel, one trace per metric."""
        from plotly.subplots import make_subplots

        panels = self.panels()
        figure = make_subplots(rows=len(panels), cols=1, subplot_titles=list(panels), vertical_spacing=0.08)
        for row, names in enumerate(panels.values(), start=1):
            for name in names:
                steps, values = zip(*self.history[name])
                figure.add_scatter(x=steps, y=values, name=name, mode="lines+markers", row=row, col=1)
        figure.update_layout(title=self.title, height=260 * len(panels) + 80)
        return figure

    def _draw(self, curves: dict) -> None:
        import ipywidgets
        import plotly.graph_objects as go
        from IPython.display import display

        if self._box is None:
            self._box = ipywidgets.VBox([ipywidgets.HTML(f"<b>{html.escape(self.title)}</b>")])
            display(self._box)
        for name in curves:
            panel = panel_of(name)
            if panel not in self._figures:
                figure = go.FigureWidget(layout=dict(title=panel, height=260, margin=dict(t=40, b=30)))
                self._figures[panel] = figure
                self._box.children = (*self._box.children, figure)
            figure = self._figures[panel]
            steps, values = zip(*self.history[name])
            trace = next((t for t in figure.data if t.name == name), None)
            if trace is None:
                figure.add_scatter(x=steps, y=values, name=name, mode="lines+markers")
            else:
                with figure.batch_update():
                    trace.x, trace.y = steps, values
