"""The report of an `RLHFLoop` run: one self-contained HTML page (the quickstart's `reports/quickstart.html`).

It holds the per-round table in `rlhflab.stages.METRICS`' names, the leaderboard, before / after
samples and the live plots' curves, with plotly.js inlined once so the page works offline. Model
text is escaped (pandas `escape=True`).
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd


def write_report(loop, path: str | Path, leaderboard: pd.DataFrame | None = None) -> Path:
    """Write the page for `loop` (an `RLHFLoop` with at least one round) to `path`; returns the path."""
    if not loop.results:
        raise ValueError("the loop has no finished round to report yet; run loop.run() or loop.finish_round() first")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    last = loop.results[-1]
    sections = [
        "<!doctype html><meta charset='utf-8'><title>rlhflab quickstart</title>",
        f"<h1>rlhflab quickstart: {len(loop.results)} rounds of RLHF ({html.escape(loop.config.method.upper())}) "
        "on the tiny world</h1>",
        "<h2>Per round (held-out prompts, gold annotator)</h2>",
        loop.table().round(4).to_html(index=False, escape=True),
    ]
    if leaderboard is not None:
        sections += ["<h2>Leaderboard (Elo / Bradley-Terry over the labeled pairs)</h2>",
                     leaderboard.to_html(index=False, escape=True)]
    sections += [f"<h2>Before / after samples (SFT vs round {last.round})</h2>",
                 last.samples.head(12).round(2).to_html(index=False, escape=True), "<h2>Curves</h2>"]
    figures = [live.figure() for live in (loop.rounds_live, loop.live) if live.history]
    for index, figure in enumerate(figures):  # plotly.js inlined once, so the page works offline
        sections.append(figure.to_html(full_html=False, include_plotlyjs=index == 0))
    path.write_text("\n".join(sections))
    return path
