"""The report of an `RLHFLoop` run: one self-contained HTML page (the quickstart's `reports/quickstart.html`).

It opens with one summary sentence, then shows:
- the per-round table, with readable headers, percentages and units (`COLUMNS`);
- the rounds' gold win-rate against KL, and the per-round dashboard (integer round ticks);
- the leaderboard of the rounds' policies as Bradley-Terry ratings with bootstrap intervals;
- before / after samples with the gold score difference;
- the PPO dashboard of the whole run (`rlhflab.trainers.live`), the same charts the notebook drew live.

Styling is the page's own CSS, plotly.js is inlined once (no CDN), and model text is escaped
(pandas `escape=True`), so the page works offline and is safe to open.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from ..labeling.metrics import leaderboard_plot
from ..trainers.live import page

__all__ = ["summary", "readable", "write_report"]

# stages.METRICS' names as table headers, with how to print them
COLUMNS = {
    "round": ("round", "{:.0f}"),
    "labels": ("labels so far", "{:,.0f}"),
    "gold/win_rate_vs_sft": ("gold win-rate vs SFT", "{:.1%}"),
    "gold/win_rate_vs_sft_low": ("win-rate, 95% interval: low", "{:.1%}"),
    "gold/win_rate_vs_sft_high": ("high", "{:.1%}"),
    "gold/mean": ("gold mean (-4 to 4)", "{:.2f}"),
    "gold/sft_mean": ("SFT's gold mean", "{:.2f}"),
    "kl/to_sft": ("KL to SFT (nats)", "{:.2f}"),
    "reward/mean": ("reward mean (SFT = 0)", "{:.2f}"),
    "reward/sft_mean": ("SFT's reward mean", "{:.2f}"),
    "reward/gold_agreement": ("reward model agrees with gold", "{:.1%}"),
}


def summary(table: pd.DataFrame) -> str:
    """One sentence: rounds, labels, the win-rate against SFT and its KL, the reward model's agreement."""
    last = table.iloc[-1]
    rounds = f"{len(table)} round{'s' if len(table) > 1 else ''}"
    trend = "rose" if last["gold/win_rate_vs_sft"] >= 0.5 else "fell"
    kl = max(last["kl/to_sft"], 0.0)  # k1 on a few dozen samples can dip below 0; KL itself cannot
    sentence = (f"{rounds}, {last['labels']:,.0f} labels: gold win-rate against SFT {trend} from 50% to "
                f"{last['gold/win_rate_vs_sft']:.0%}")
    if "gold/win_rate_vs_sft_low" in table:
        sentence += f" (95% interval {last['gold/win_rate_vs_sft_low']:.0%}-{last['gold/win_rate_vs_sft_high']:.0%})"
    sentence += f" at {kl:.1f} nats of KL"
    if "reward/gold_agreement" in table and pd.notna(last.get("reward/gold_agreement")):
        sentence += f"; the reward model agreed with gold on {last['reward/gold_agreement']:.0%} of pairs"
    return sentence + "."


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with COLUMNS' headers and formats (unknown columns keep their names)."""
    out = pd.DataFrame(index=table.index)
    for column in table.columns:
        header, form = COLUMNS.get(column, (column, "{}"))
        out[header] = [form.format(v) if pd.notna(v) else "" for v in table[column]]
    return out


def win_rate_against_kl(table: pd.DataFrame):
    """Each round as a point: gold win-rate against SFT by KL to SFT, SFT itself at (0, 50%)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    figure.add_scatter(x=[0.0, *table["kl/to_sft"]], y=[0.5, *table["gold/win_rate_vs_sft"]], mode="lines+markers+text",
                       text=["SFT", *[f"round {r}" for r in table["round"]]], textposition="top center")
    figure.update_layout(title="What each round bought, and what it cost", height=360, showlegend=False,
                         xaxis_title="KL to SFT (nats per response)", yaxis=dict(title="gold win-rate against SFT",
                                                                                  tickformat=".0%"))
    return figure


def before_after(samples: pd.DataFrame) -> pd.DataFrame:
    """SFT's answer and the last round's, side by side, with the gold score difference, biggest gain first."""
    after = samples.columns[3]  # prompt, SFT, SFT gold, <round r>, <round r> gold
    table = samples.assign(**{"gold gain": samples[f"{after} gold"] - samples["SFT gold"]})
    return table.sort_values("gold gain", ascending=False)


def write_report(loop, path: str | Path, leaderboard: pd.DataFrame | None = None) -> Path:
    """Write the page for `loop` (an `RLHFLoop` with at least one round) to `path`; returns the path.

    `leaderboard` (from `rlhflab.labeling.metrics.leaderboard(store, intervals=...)`) adds the interval plot.
    """
    if not loop.results:
        raise ValueError("the loop has no finished round to report yet; run loop.run() or loop.finish_round() first")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table, last = loop.table(), loop.results[-1]
    figures = [win_rate_against_kl(table)]
    figures += loop.rounds_live.figures()
    sections = [f"<p class='summary'>{html.escape(summary(table))}</p>",
                "<h2>Per round (held-out prompts, scored by the gold annotator)</h2>",
                readable(table).to_html(index=False, escape=True)]
    sections += [_div(f, include_plotlyjs=i == 0) for i, f in enumerate(figures)]  # plotly.js once per page
    if leaderboard is not None:
        sections += ["<h2>Leaderboard of the rounds' policies (labels between them)</h2>",
                     _div(leaderboard_plot(leaderboard), include_plotlyjs=False),
                     leaderboard.to_html(index=False, escape=True)]
    sections += [f"<h2>Before / after: SFT and round {last.round} on the same prompts</h2>",
                 before_after(last.samples).head(12).to_html(index=False, escape=True, float_format="{:.2f}".format)]
    if loop.live.history:
        sections += [f"<h2>{html.escape(loop.live.title)}</h2>", *loop.live.sections(include_plotlyjs=False)]
    method = html.escape(loop.config.method.upper())
    path.write_text(page(f"rlhflab: {len(loop.results)} rounds of RLHF ({method}) on the tiny world", sections))
    return path


def _div(figure, include_plotlyjs: bool) -> str:
    return figure.to_html(full_html=False, include_plotlyjs=include_plotlyjs, config={"responsive": True})
