"""Live training dashboards: one callback for every trainer, one designed layout per kind of run.

`LivePlot` is a transformers `TrainerCallback` (so TRL's SFT, reward, DPO and KTO trainers feed it as
is) and has a plain `log(step, metrics)` for the lab's own loops (PPO, ILQL, the RLHF loop's rounds).

Each chart answers one question ("Is the policy getting better?"): its axes have titles, it draws at
most 4 curves, and every axis holds one scale. The layout is the run's kind, `LAYOUTS[kind]`: given
(`LivePlot(..., layout="ppo")`) or recognised from the first metrics logged (PPO's `objective/kl`,
KTO's `kl`, DPO's `rewards/margins`, ILQL's `loss/q`, the reward trainer's `accuracy`, the loop's
`gold/win_rate_vs_sft`, else SFT).
A group of charts (PPO's health checks, the loop's rounds) is drawn as small multiples in one
figure, each on its own scale. Health charts mark the published rules of thumb: points past them
turn red. Metrics that no chart draws stay in `metrics.jsonl`.

- In a notebook kernel it shows one plotly FigureWidget per chart or group, updated in place. FigureWidget is
  an anywidget, so it renders in JupyterLab 4, Notebook 7, VS Code and Colab (after
  `google.colab.output.enable_custom_widget_manager()`).
- Everywhere, when given a `run_dir`, it appends each record to `metrics.jsonl` as it arrives, and
  when training ends writes `metrics.html`: the same figures, built by the same functions, frozen,
  with the latest samples (escaped) and self-contained CSS; plotly.js is inlined, so it works offline.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

__all__ = ["MAX_CURVES", "WARNING", "COLORS", "CSS", "Curve", "Chart", "HEALTH", "ROUNDS", "LAYOUTS",
           "layout_for", "LivePlot", "page"]

IGNORED = {"epoch", "total_flos", "step"}  # bookkeeping the Trainer logs, not worth a curve
HEADLESS_ENV = "RLHFLAB_HEADLESS"  # set to 1 to skip widgets even inside a kernel
MAX_CURVES = 4  # per axis: more cannot be told apart
WARNING = "#d62728"  # points past a rule of thumb
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")  # one per curve of a chart (plotly's first four, no red)
CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
p.summary{font-size:1.1em;background:#f4f7fb;border-left:4px solid #1f77b4;padding:.6em 1em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}th,td{border:1px solid #ddd;padding:.3em .6em;
text-align:left;vertical-align:top}th{background:#f4f4f4}td{white-space:pre-wrap}"""


@dataclass(frozen=True)
class Curve:
    metric: str  # the logged name, e.g. 'objective/scores'
    label: str  # what the legend says


@dataclass(frozen=True)
class Chart:
    """One chart: the question it answers and what it draws."""

    question: str  # the chart's title
    y_title: str  # the left axis, with its unit
    curves: tuple[Curve, ...]  # at most MAX_CURVES, all on the left axis's scale
    x_title: str = "step"
    against_sqrt_of: str | None = None  # x = sqrt(this metric) at each step, instead of the step
    y2: Curve | None = None  # one curve on a right-hand axis of its own scale
    y2_title: str = ""
    warn_above: float | None = None  # rule of thumb: a dashed line there, points above it in red
    warn_below: float | None = None  # ... and below it
    percent: bool = False  # values are shares: the axis shows percentages
    from_first_step: bool = False  # dashed lines at each curve's first value (PPO's first rollout is SFT's)
    group: str = ""  # charts of one group are drawn as small multiples under this heading

    def __post_init__(self):
        if not 1 <= len(self.curves) <= MAX_CURVES:
            raise ValueError(f"a chart draws 1 to {MAX_CURVES} curves, not {len(self.curves)}: {self.question!r}")
        if self.group and self.y2 is not None:
            raise ValueError(f"a chart of a group has one axis: {self.question!r}")

    @property
    def metrics(self) -> list[str]:
        return [c.metric for c in self.curves] + ([self.y2.metric] if self.y2 else [])


HEALTH = "Is the optimisation healthy?"
ROUNDS = "How did each round do? (held-out prompts, scored by the task's judge)"


def _health(metric: str, label: str, unit: str, **rules) -> Chart:
    return Chart(label, unit, (Curve(metric, label),), group=HEALTH, **rules)


LAYOUTS: dict[str, tuple[Chart, ...]] = {
    # Rules of thumb: clip fraction above 0.3 and approx KL above 0.1 per update mean steps too large
    # (Schulman et al. 2017; Huang et al. 2022, "The 37 implementation details of PPO"); explained
    # variance below 0 means the value head predicts worse than a constant.
    "ppo": (
        Chart("Is the policy getting better?", "score (reward: normalised; gold: -4 to 4)",
              (Curve("objective/scores", "proxy reward"), Curve("objective/gold_scores", "gold score")),
              from_first_step=True),
        Chart("Is it staying close to SFT?", "KL to SFT (nats per response)", (Curve("objective/kl", "KL"),),
              y2=Curve("objective/kl_coef", "KL coefficient beta"), y2_title="beta"),
        Chart("Over-optimisation: proxy and gold as KL grows", "score",
              (Curve("objective/scores", "proxy reward"), Curve("objective/gold_scores", "gold score")),
              x_title="sqrt(KL to SFT) (sqrt nats)", against_sqrt_of="objective/kl"),
        _health("policy/approxkl_avg", "approx KL per update", "nats", warn_above=0.1),
        _health("policy/clipfrac_avg", "clip fraction", "share of tokens", warn_above=0.3),
        _health("objective/entropy", "entropy", "nats per token"),
        _health("val/explained_variance", "value explained variance", "1 is perfect", warn_below=0.0),
        _health("val/response_length", "response length", "tokens"),
        _health("val/eos_rate", "responses that end with EOS", "share", percent=True),
        _health("loss/value_avg", "value loss", "squared error"),
    ),
    "sft": (
        Chart("Is it learning the demonstrations?", "loss (nats per response token)",
              (Curve("loss", "train"), Curve("eval_loss", "held out"))),
        Chart("How often is the next token right?", "token accuracy",
              (Curve("mean_token_accuracy", "train"), Curve("eval_mean_token_accuracy", "held out")), percent=True),
    ),
    "reward": (
        Chart("Is it learning the comparisons?", "Bradley-Terry loss",
              (Curve("loss", "train"), Curve("eval_loss", "held out"))),
        Chart("Does it rank chosen above rejected?", "accuracy",
              (Curve("accuracy", "train"), Curve("eval_accuracy", "held out")), percent=True, warn_below=0.5),
        Chart("How far apart are chosen and rejected?", "reward margin (chosen - rejected)",
              (Curve("margin", "train"), Curve("eval_margin", "held out"))),
    ),
    "dpo": (
        Chart("Is it learning the preferences?", "DPO loss", (Curve("loss", "train"),)),
        Chart("Does the implicit reward rank chosen above rejected?", "accuracy",
              (Curve("rewards/accuracies", "implicit-reward accuracy"),), percent=True, warn_below=0.5),
        Chart("Implicit rewards: beta * log(policy / reference)", "implicit reward",
              (Curve("rewards/chosen", "chosen"), Curve("rewards/rejected", "rejected"),
               Curve("rewards/margins", "margin"))),
    ),
    "critic_free": (
        Chart("Is the reward going up?", "reward (mean over the sampled groups)",
              (Curve("reward", "mean"), Curve("reward_std", "spread within a batch"))),
        Chart("How far has it moved from the reference?", "KL (nats per token)", (Curve("kl", "KL"),)),
        Chart("Is the optimisation healthy?", "nats per token", (Curve("entropy", "entropy"),)),
        Chart("How long are the answers?", "tokens", (Curve("completions/mean_length", "mean length"),)),
    ),
    "kto": (
        Chart("Is it learning the verdicts?", "KTO loss", (Curve("loss", "train"),)),
        Chart("Implicit rewards: beta * log(policy / reference)", "implicit reward",
              (Curve("rewards/chosen", "thumbs up"), Curve("rewards/rejected", "thumbs down"),
               Curve("rewards/margins", "margin"))),
        Chart("How far has it moved from the reference?", "KL estimate z (nats per response)", (Curve("kl", "KL"),)),
    ),
    "ilql": (
        Chart("Are the Q and V heads fitting?", "loss",
              (Curve("loss/q", "Q (TD error)"), Curve("loss/v", "V (expectile)"))),
        Chart("Is the LM staying with the data?", "loss (nats per token)",
              (Curve("loss/awac", "behaviour cloning (AWAC)"), Curve("loss/cql", "CQL (both Q heads)"))),
        Chart("What do the heads expect?", "value (standardised reward)",
              (Curve("values/terminal_q", "Q of the last token (the reward)"), Curve("values/v", "V"),
               Curve("values/advantage", "advantage target Q - V"))),
    ),
    "rounds": (
        Chart("Is RLHF beating SFT?", "win-rate against SFT", (Curve("gold/win_rate_vs_sft", "win-rate (gold)"),
                                                              Curve("judge/win_rate_vs_sft", "win-rate (judge)")),
              x_title="round", percent=True, group=ROUNDS),
        Chart("Gold score of the answers", "mean gold score (-4 to 4)", (Curve("gold/mean", "this round's policy"),),
              x_title="round", group=ROUNDS),
        Chart("How far has it moved from SFT?", "KL to SFT (nats per response)", (Curve("kl/to_sft", "KL"),),
              x_title="round", group=ROUNDS),
        Chart("Does the reward model agree with the judge?", "agreement on (policy, SFT) pairs",
              (Curve("reward/gold_agreement", "with gold"), Curve("reward/judge_agreement", "with the judge")),
              x_title="round", percent=True, warn_below=0.5, group=ROUNDS),
    ),
}
RECOGNISED_BY = (("objective/kl", "ppo"), ("gold/win_rate_vs_sft", "rounds"), ("judge/win_rate_vs_sft", "rounds"),
                 ("reward_std", "critic_free"),
                 ("kl", "kto"), ("rewards/margins", "dpo"), ("loss/q", "ilql"),
                 ("accuracy", "reward"))  # the first metric of a run that names its kind; else 'sft'


def layout_for(metrics) -> str:
    return next((kind for metric, kind in RECOGNISED_BY if metric in metrics), "sft")


def in_notebook() -> bool:
    if os.environ.get(HEADLESS_ENV) == "1":
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


def chart_figure(chart: Chart, history: dict, references: dict | None = None):
    """The plotly figure of one chart from a run's `history` ({metric: [(step, value), ...]}).

    `references` ({metric: [(value, label), ...]}) adds dashed lines, e.g. PPO's target KL.
    """
    import plotly.graph_objects as go

    figure = go.Figure()
    _draw_chart(figure, chart, history, references or {})
    if chart.y2 is not None:
        x, y = _points(chart, history, chart.y2.metric)
        figure.add_scatter(x=x, y=y, name=chart.y2.label, mode="lines", line_dash="dash", yaxis="y2")
        figure.update_layout(yaxis2=dict(title=chart.y2_title, overlaying="y", side="right", showgrid=False))
    figure.update_layout(title=dict(text=chart.question, font_size=14), height=320,
                         margin=dict(t=50, b=45, l=60, r=60 if chart.y2 else 20),
                         showlegend=len(chart.curves) > 1 or bool(chart.y2), legend=dict(orientation="h", y=-0.25))
    return figure


def group_figure(title: str, charts: list[Chart], history: dict, references: dict | None = None):
    """Small multiples: one subplot per chart of a group, each on its own scale, in one figure."""
    from plotly.subplots import make_subplots

    cols = 2 if len(charts) == 4 else min(3, len(charts))
    rows = math.ceil(len(charts) / cols)
    cells = [{} if i < len(charts) else None for i in range(rows * cols)]  # no axes in empty cells
    figure = make_subplots(rows=rows, cols=cols, subplot_titles=[c.question for c in charts],
                           specs=[cells[r * cols:(r + 1) * cols] for r in range(rows)],
                           horizontal_spacing=0.1, vertical_spacing=0.45 / rows)
    for index, chart in enumerate(charts):
        _draw_chart(figure, chart, history, references or {}, row=index // cols + 1, col=index % cols + 1)
    figure.update_layout(title=dict(text=title, font_size=15), height=250 * rows + 70, showlegend=False,
                         margin=dict(t=70, b=45, l=60, r=20))
    return figure


def _draw_chart(figure, chart: Chart, history: dict, references: dict, row: int | None = None,
                col: int | None = None) -> None:
    at = dict(row=row, col=col) if row else {}
    for index, curve in enumerate(chart.curves):
        x, y = _points(chart, history, curve.metric)
        color = COLORS[index]
        mode = "markers" if chart.against_sqrt_of else "lines+markers"  # KL goes back and forth: no lines
        figure.add_scatter(x=x, y=y, name=curve.label, mode=mode, line_color=color,
                           marker_color=[color if _fine(chart, v) else WARNING for v in y], **at)
        if chart.from_first_step and y:
            figure.add_hline(y=y[0], line_dash="dot", annotation_text=f"{curve.label} at step {x[0]} (SFT)",
                             annotation_position="bottom right", **at)
    for threshold in (chart.warn_above, chart.warn_below):
        if threshold is not None:
            figure.add_hline(y=threshold, line_dash="dash", line_color=WARNING, annotation_text="rule of thumb",
                             annotation_position="top left", **at)
    for value, label in references.get(chart.curves[0].metric, []):
        figure.add_hline(y=value, line_dash="dash", annotation_text=label, annotation_position="top left", **at)
    figure.update_xaxes(title_text=chart.x_title, dtick=1 if chart.x_title == "round" else None, **at)
    figure.update_yaxes(title_text=chart.y_title, tickformat=".0%" if chart.percent else None, **at)


def _points(chart: Chart, history: dict, metric: str) -> tuple[list, list]:
    points = history.get(metric, [])
    if chart.against_sqrt_of is None:
        return [s for s, _ in points], [v for _, v in points]
    x_at = dict(history.get(chart.against_sqrt_of, []))
    kept = [(math.sqrt(max(x_at[s], 0.0)), v) for s, v in points if s in x_at]
    return [x for x, _ in kept], [v for _, v in kept]


def _fine(chart: Chart, value: float) -> bool:
    return not ((chart.warn_above is not None and value > chart.warn_above)
                or (chart.warn_below is not None and value < chart.warn_below))


class LivePlot(TrainerCallback):
    """Collects metrics, draws the run's dashboard live in notebooks, and keeps it in JSONL and HTML.

    Args:
        run_dir: where metrics.jsonl, samples.jsonl and metrics.html go; None keeps them in memory only.
        title: heading of the dashboard and the HTML page.
        widgets: show FigureWidgets; by default only inside a notebook kernel.
        layout: a key of LAYOUTS ('ppo', 'sft', 'reward', 'dpo', 'kto', 'ilql', 'critic_free', 'rounds'); by
            default recognised from the first metrics logged.

    Examples:
        >>> live = LivePlot(run_dir=None, widgets=False)
        >>> live.log(1, {"objective/kl": 0.1, "objective/scores": 0.5})
        >>> live.history["objective/kl"], live.layout
        ([(1, 0.1)], 'ppo')
    """

    def __init__(self, run_dir: str | Path | None = None, title: str = "training", widgets: bool | None = None,
                 layout: str | None = None):
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.title, self.layout = title, layout
        self.widgets = in_notebook() if widgets is None else widgets
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.references: dict[str, list[tuple[float, str]]] = defaultdict(list)
        self.latest_samples = None  # (step, DataFrame) of the last `samples` call
        self.calibration_table = None  # a reward model's calibration at the end of training
        self._figures: dict = {}  # panel title -> FigureWidget
        self._box = None
        self._samples = None  # HTML widget with the latest sample table
        self._tensorboard = None  # a SummaryWriter once `track("tensorboard")` asked for one
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.jsonl_path.write_text("")

    @property
    def jsonl_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def html_path(self) -> Path:
        return self.run_dir / "metrics.html"

    @property
    def charts(self) -> tuple[Chart, ...]:
        """The layout's charts that have something to draw."""
        return tuple(c for c in LAYOUTS[self.layout or "sft"] if any(m in self.history for m in c.metrics))

    # -- what trainers call ---------------------------------------------------------------------

    def track(self, report_to: str | list[str]) -> None:
        """Also write every logged metric where `report_to` says, as transformers' `report_to` does for the
        TRL-backed stages: "tensorboard" (or "all") writes event files under run_dir/runs/; "none" nothing.
        Our own trainers (PPO, NLPO, ILQL) and the loop's rounds call it with their config's `report_to`."""
        names = {report_to} if isinstance(report_to, str) else set(report_to)
        unknown = names - {"none", "tensorboard", "all"}
        if unknown:
            raise ValueError(f"report_to={sorted(unknown)}: our own trainers and the loop report to 'tensorboard' "
                             "(or 'all', which is tensorboard here) or 'none'; W&B and MLflow take the TRL-backed "
                             "stages only")
        if names & {"tensorboard", "all"} and self.run_dir is not None and self._tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._tensorboard = SummaryWriter(log_dir=str(self.run_dir / "runs"))

    def log(self, step: int, metrics: dict) -> None:
        """Record one step's metrics (non-numeric and non-finite values are kept out of the curves)."""
        curves = {k: float(v) for k, v in metrics.items()
                  if k not in IGNORED and isinstance(v, (int, float)) and math.isfinite(v)}
        if self.layout is None and curves:
            self.layout = layout_for(curves)
        for name, value in curves.items():
            self.history[name].append((step, value))
        if self.run_dir is not None:
            with self.jsonl_path.open("a") as f:
                f.write(json.dumps({"step": step, **curves}) + "\n")
        if self._tensorboard is not None:
            for name, value in curves.items():
                self._tensorboard.add_scalar(name, value, step)
        if self.widgets and curves:
            self._draw(curves)

    def reference(self, metric: str, value: float, label: str) -> None:
        """A dashed line at `value` on the chart of `metric`, e.g. PPO's target KL."""
        self.references[metric].append((float(value), label))

    def samples(self, step: int, table) -> None:
        """Show a table of samples (a DataFrame; model text is escaped) and keep it in samples.jsonl."""
        self.latest_samples = (step, table)
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
            self._samples.value = samples_html(step, table)

    def calibration(self, table) -> None:
        """A reward model's calibration at the end of training (`evaluate_reward_model`'s table)."""
        self.calibration_table = table
        if self.widgets:
            from IPython.display import display

            display(calibration_figure(table, widget=True))

    def close(self) -> None:
        """Write the static dashboard; call when training ends (trainers do it for you)."""
        if self.run_dir is not None and self.history:
            self.html_path.write_text(page(self.title, self.sections(include_plotlyjs=True)))
        if self._tensorboard is not None:
            self._tensorboard.flush()

    # -- transformers TrainerCallback hooks --------------------------------------------------------

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.log(state.global_step, logs or {})

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    # -- drawing ---------------------------------------------------------------------------------

    def panels(self) -> list[tuple[str, list[Chart]]]:
        """(title, charts) in layout order: a chart alone, or a group's charts as small multiples."""
        panels: dict[str, list[Chart]] = {}
        for chart in self.charts:
            panels.setdefault(chart.group or chart.question, []).append(chart)
        return list(panels.items())

    def figures(self) -> list:
        """One plotly figure per panel with data, in layout order."""
        return [self._figure(title, charts) for title, charts in self.panels()]

    def sections(self, include_plotlyjs: bool) -> list[str]:
        """The dashboard as HTML pieces (the figures, the calibration, the latest samples), for a page."""
        parts = []
        for figure in self.figures():
            parts.append(figure.to_html(full_html=False, include_plotlyjs=include_plotlyjs,
                                        config={"responsive": True}))
            include_plotlyjs = False  # plotly.js once per page
        if self.calibration_table is not None:
            parts.append(calibration_figure(self.calibration_table).to_html(full_html=False, include_plotlyjs=False))
        if self.latest_samples is not None:
            parts.append(samples_html(*self.latest_samples))
        return parts

    def _figure(self, title: str, charts: list[Chart]):
        if len(charts) == 1 and not charts[0].group:
            return chart_figure(charts[0], self.history, self.references)
        return group_figure(title, charts, self.history, self.references)

    def _draw(self, curves: dict) -> None:
        """Update the panels these metrics appear on; one FigureWidget per panel, made once."""
        import ipywidgets
        import plotly.graph_objects as go
        from IPython.display import display

        if self._box is None:
            self._box = ipywidgets.VBox([ipywidgets.HTML(f"<b>{html.escape(self.title)}</b>")])
            display(self._box)
        for title, charts in self.panels():
            if not {m for c in charts for m in c.metrics} & set(curves):
                continue
            widget = self._figures.get(title)
            if widget is None:  # the whole figure once; afterwards only its curves' data change
                self._figures[title] = go.FigureWidget(self._figure(title, charts))
                self._box.children = (*self._box.children, self._figures[title])
                continue
            with widget.batch_update():
                for trace, (chart, metric) in zip(widget.data, _traced(charts)):
                    x, y = _points(chart, self.history, metric)
                    trace.x, trace.y = x, y
                    if chart.y2 is None or metric != chart.y2.metric:
                        color = COLORS[chart.metrics.index(metric)]
                        trace.marker.color = [color if _fine(chart, v) else WARNING for v in y]


def _traced(charts: list[Chart]) -> list[tuple[Chart, str]]:
    """(chart, metric) of each trace, in the order the figures add them: a chart's curves, then its y2."""
    return [(chart, metric) for chart in charts for metric in chart.metrics]


def calibration_figure(table, widget: bool = False):
    """Is the reward model calibrated? Predicted P(first wins) against the observed share, per bin."""
    import plotly.graph_objects as go

    figure = (go.FigureWidget if widget else go.Figure)()
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated", line_dash="dot")
    figure.add_scatter(x=table["mean predicted"], y=table["observed first wins"], mode="lines+markers",
                       name="reward model", text=[f"{n} pairs" for n in table["pairs"]])
    figure.update_layout(title=dict(text="Is the reward model calibrated? (held-out pairs)", font_size=14), height=320,
                         xaxis=dict(title="predicted P(first wins)", tickformat=".0%", range=[0, 1]),
                         yaxis=dict(title="observed share of first wins", tickformat=".0%", range=[0, 1]),
                         legend=dict(orientation="h", y=-0.25), margin=dict(t=50, b=45, l=60, r=20))
    return figure


def samples_html(step: int, table) -> str:
    """The sample table as HTML; model text is escaped (pandas escape=True)."""
    return f"<h2>Samples at step {step}</h2>" + table.to_html(index=False, escape=True, float_format="{:.2f}".format)


def page(title: str, sections: list[str]) -> str:
    """A self-contained HTML page: our CSS inline, no CDN."""
    return ("<!doctype html><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style><h1>{html.escape(title)}</h1>\n"
            + "\n".join(sections))
