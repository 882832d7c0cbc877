"""Per-annotator quality: what a team lead reads before trusting a teammate's labels.

    annotator_quality   one row per annotator: time per label, tie / skip / both-bad rates and the
                        share of "left" choices, each with an exact binomial test; gold accuracy with
                        a Wilson interval; agreement with the majority of the others
    quality_dashboard   the same table as four plotly panels, one point or bar per annotator

The signs of a careless annotator each have their test. Someone who clicks the left response without
reading shows a left share far from 1/2; someone who avoids hard calls ties, skips or says "both bad"
more often than the team does; someone who rushes labels in seconds. Gold (calibration) items, which
everyone gets, measure accuracy directly; agreement with the majority of the others measures it where
there is no gold answer. Everything reads the labels in force (`LabelStore.current`) through the
statistics of `rlhflab.labeling.metrics`; nothing is written.
"""

from __future__ import annotations

import html
import math
from collections import Counter

import pandas as pd

from .metrics import binomial_two_sided, majority_agreement, position_bias, wilson_interval
from .store import CHOICES

__all__ = ["annotator_quality", "quality_dashboard"]

# The rates tested against the team's pooled rate: what is counted -> (the field that says it, among which answers)
RATES = {"tie": ("choice", "pair labels"), "both_bad": ("choice", "pair labels"), "skip": ("action", "answers")}
TESTS = {"left_p": "left share", "tie_p": "tie rate", "both_bad_p": "both-bad rate", "skip_p": "skip rate"}


def annotator_quality(store, alpha: float = 0.05, level: float = 0.95) -> pd.DataFrame:
    """A pandas DataFrame, one row per annotator with an answer in force, sorted by name.

    Columns:
        labels, skips, prompt_flags: the annotator's answers in force (an edit replaces, an undo removes).
        seconds_per_label: median of created_at - shown_at over their labels; NaN where the store does
            not know when the item was shown (labels written by code, or by an older version).
        tie_rate, both_bad_rate (of their pair labels) and skip_rate (of their answers), each with `_p`:
            the exact two-sided binomial p-value against the team's pooled rate (all annotators).
        left_share, left_p: the share of decided pairs (a or b won, order recorded) won by the response
            shown first, and its p-value against 1/2 (`rlhflab.labeling.metrics.position_bias`).
        gold_items, gold_accuracy, gold_low, gold_high: labels on gold items, the share that matched the
            gold answer, and its Wilson interval at `level` (NaN without gold items).
        majority_items, majority_agreement: items where more than half of the other annotators chose
            alike, and the share of them where this annotator chose the same.
        unusual: the tests with p < `alpha`, e.g. "left share, tie rate".

    With many annotators a few tests fall below `alpha` by chance (4 tests each): read the p-values,
    and look at the labels of whoever is unusual before acting on it.
    """
    answers = list(store.current().values())
    if not answers:
        raise ValueError(f"{store!r} holds no labels yet; label some items (or run label_with_gold) first")
    labels = [e for e in answers if e["action"] == "label"]
    pair = [e for e in labels if e["choice"] in CHOICES]
    counted = {"pair labels": pair, "answers": answers}
    count = {what: Counter(e["annotator"] for e in counted[among] if e[field] == what)
             for what, (field, among) in RATES.items()}
    total = {among: Counter(e["annotator"] for e in events) for among, events in counted.items()}
    team = {what: sum(count[what].values()) / max(1, len(counted[among])) for what, (_, among) in RATES.items()}
    gold, majority = store.gold_accuracy(), majority_agreement(labels)
    rows = []
    for who in sorted({e["annotator"] for e in answers}):
        mine = [e for e in labels if e["annotator"] == who]
        actions = Counter(e["action"] for e in answers if e["annotator"] == who)
        row = {"annotator": who, "labels": actions["label"], "skips": actions["skip"],
               "prompt_flags": actions["flag_prompt"], "seconds_per_label": _median_seconds(mine)}
        for what, (_, among) in RATES.items():
            n, k = total[among][who], count[what][who]
            row[f"{what}_rate"] = k / n if n else math.nan
            row[f"{what}_p"] = binomial_two_sided(k, n, team[what]) if n else math.nan
        bias = position_bias(mine)
        row["left_share"] = math.nan if bias["left_share"] is None else bias["left_share"]
        row["left_p"] = bias["p_value"] if bias["decided"] else math.nan
        n_gold = gold.get(who, {}).get("gold_items", 0)
        hits = round(gold[who]["accuracy"] * n_gold) if n_gold else 0
        low, high = wilson_interval(hits, n_gold, level) if n_gold else (math.nan, math.nan)
        row.update(gold_items=n_gold, gold_accuracy=hits / n_gold if n_gold else math.nan, gold_low=low, gold_high=high)
        agreed = majority.get(who, {"items": 0, "agreed": 0})
        row.update(majority_items=agreed["items"],
                   majority_agreement=agreed["agreed"] / agreed["items"] if agreed["items"] else math.nan)
        row["unusual"] = ", ".join(name for column, name in TESTS.items() if row[column] < alpha)
        rows.append(row)
    return pd.DataFrame(rows)


def _median_seconds(labels: list[dict]) -> float:
    """Median seconds from showing an item to storing its label; NaN when no label knows when it was shown."""
    seconds = pd.Series([e["created_at"] - e["shown_at"] for e in labels if e.get("shown_at") is not None],
                        dtype=float)
    return float(seconds.median()) if len(seconds) else math.nan


def quality_dashboard(table: pd.DataFrame, level: float = 0.95):
    """Four plotly panels of `annotator_quality`'s table, one mark per annotator (names escaped: plotly
    would render tags in them): gold accuracy with its interval, seconds per label, the left share
    against 1/2, and the tie / both-bad / skip rates. Red marks an annotator the tests single out."""
    from plotly.subplots import make_subplots

    names = [html.escape(str(who)) for who in table["annotator"]]
    unusual = [set(filter(None, text.split(", "))) for text in table["unusual"]]
    figure = make_subplots(rows=2, cols=2, vertical_spacing=0.2, subplot_titles=(
        f"Accuracy on gold items ({level:.0%} Wilson interval)", "Median seconds per label",
        "Share of 'left' choices (1/2 = no position bias)", "Tie, both-bad and skip rates"))
    figure.add_scatter(x=names, y=table["gold_accuracy"], mode="markers", name="gold accuracy", row=1, col=1,
                       marker=dict(size=10), showlegend=False,
                       error_y=dict(type="data", symmetric=False, array=table["gold_high"] - table["gold_accuracy"],
                                    arrayminus=table["gold_accuracy"] - table["gold_low"]),
                       customdata=table["gold_items"], hovertemplate="%{x}: %{y:.0%} of %{customdata} gold items")
    figure.add_bar(x=names, y=table["seconds_per_label"], name="seconds per label", row=1, col=2, showlegend=False)
    figure.add_scatter(x=names, y=table["left_share"], mode="markers", name="left share", row=2, col=1,
                       marker=dict(size=10, color=["red" if "left share" in u else "steelblue" for u in unusual]),
                       customdata=table["left_p"], hovertemplate="%{x}: %{y:.0%} left (p = %{customdata:.2g})",
                       showlegend=False)
    figure.add_hline(y=0.5, line_dash="dot", row=2, col=1)
    for what in RATES:
        name = TESTS[f"{what}_p"]
        figure.add_bar(x=names, y=table[f"{what}_rate"], name=name, row=2, col=2, customdata=table[f"{what}_p"],
                       marker_line=dict(color=["red" if name in u else "rgba(0,0,0,0)" for u in unusual], width=3),
                       hovertemplate=f"%{{x}}: %{{y:.0%}} {name} (p = %{{customdata:.2g}})")
    figure.update_xaxes(type="category")  # names such as "1" stay names
    figure.update_yaxes(tickformat=".0%", range=[-0.05, 1.05], row=1, col=1)  # a margin: 0% and 100% stay visible
    figure.update_yaxes(title_text="seconds", row=1, col=2)
    figure.update_yaxes(tickformat=".0%", range=[-0.05, 1.05], row=2, col=1)
    figure.update_yaxes(tickformat=".0%", row=2, col=2)
    figure.update_layout(title="Per-annotator quality", height=640, barmode="group",
                         legend=dict(orientation="h", y=-0.15))
    return figure
