"""Per-annotator quality (issue 14): the table catches a careless annotator, and its statistics match
hand computations."""

import math
import random
import time

import pytest

from rlhflab.labeling.metrics import binomial_two_sided, majority_agreement, wilson_interval
from rlhflab.labeling.quality import annotator_quality, quality_dashboard
from rlhflab.labeling.records import Item
from rlhflab.labeling.store import LabelStore, StoreConfig
from rlhflab.tiny import GoldAnnotator
from rlhflab.tiny.annotate import calibration_items, label_with_gold, world_items


@pytest.fixture(scope="module")
def team(tmp_path_factory, world, gold):
    """Two noisy gold annotators and one who always picks the left response, on 24 items and 6 gold items;
    built once, since no test writes to it."""
    store = LabelStore(tmp_path_factory.mktemp("team") / "l.db", config=StoreConfig(overlap=3))
    store.add_items(world_items(world, 24, seed=1) + calibration_items(world, gold, 6, seed=42))
    for k, who in enumerate(("ann1", "ann2")):
        label_with_gold(store, GoldAnnotator(world, noise=0.25, seed=k), annotator=who)
    rng = random.Random(0)
    while (item := store.next_item("lefty")) is not None:
        order = rng.sample([0, 1], 2)
        store.record(item.item_id, "lefty", choice="ab"[order[0]], strength="clearly", shown_order=order)
    yield store
    store.close()


def test_the_table_singles_out_the_annotator_who_always_picks_left(team):
    table = annotator_quality(team).set_index("annotator")
    assert list(table.index) == ["ann1", "ann2", "lefty"] and (table["labels"] == 30).all()
    assert table.loc["lefty", "left_share"] == 1.0 and table.loc["lefty", "left_p"] < 1e-6
    assert "left share" in table.loc["lefty", "unusual"]
    assert (table.loc[["ann1", "ann2"], "left_p"] > 0.05).all()
    assert not any("left share" in text for text in table.loc[["ann1", "ann2"], "unusual"])
    assert table.loc["lefty", "majority_agreement"] < min(table.loc[["ann1", "ann2"], "majority_agreement"])


def test_rates_are_tested_against_the_pooled_team_rate(team):
    table = annotator_quality(team).set_index("annotator")
    labels = team.labels()
    pooled = sum(label["choice"] == "both_bad" for label in labels) / len(labels)
    mine = [label for label in labels if label["annotator"] == "ann1"]
    k = sum(label["choice"] == "both_bad" for label in mine)
    assert table.loc["ann1", "both_bad_rate"] == k / len(mine)
    assert table.loc["ann1", "both_bad_p"] == pytest.approx(binomial_two_sided(k, len(mine), pooled))


def test_skips_count_as_answers_and_a_frequent_skipper_stands_out(tmp_path):
    store = LabelStore(tmp_path / "l.db")
    items = [Item(f"p{i}", (f"x{i}", f"y{i}")) for i in range(20)]
    store.add_items(items)
    for item in items:
        store.record(item.item_id, "ada", choice="a", shown_order=[0, 1])
        store.record(item.item_id, "bob", choice="tie")
    for item in items[:12]:
        store.skip(item.item_id, "cy")
    store.undo("cy")  # an undone skip is no answer
    table = annotator_quality(store).set_index("annotator")
    assert table.loc["cy", "skips"] == 11 and table.loc["cy", "skip_rate"] == 1.0
    pooled = 11 / (20 + 20 + 11)
    assert table.loc["cy", "skip_p"] == pytest.approx(binomial_two_sided(11, 11, pooled))
    assert table.loc["cy", "unusual"] == "skip rate" and math.isnan(table.loc["cy", "left_share"])
    assert table.loc["bob", "tie_rate"] == 1.0 and "tie rate" in table.loc["bob", "unusual"]


def test_time_per_label_is_the_median_from_shown_to_stored(tmp_path):
    store = LabelStore(tmp_path / "l.db")
    items = [Item(f"p{i}", (f"x{i}", f"y{i}")) for i in range(3)]
    store.add_items(items)
    for item, seconds in zip(items, (4, 5, 300)):  # one long pause does not move the median
        store.record(item.item_id, "ada", choice="a", shown_at=time.time() - seconds)
        store.record(item.item_id, "script", choice="a")  # written by code: it was never shown
    table = annotator_quality(store).set_index("annotator")
    assert table.loc["ada", "seconds_per_label"] == pytest.approx(5, abs=0.5)
    assert math.isnan(table.loc["script", "seconds_per_label"])


def test_gold_accuracy_carries_its_wilson_interval(team):
    table = annotator_quality(team, level=0.9).set_index("annotator")
    for who, score in team.gold_accuracy().items():
        hits = round(score["accuracy"] * score["gold_items"])
        assert table.loc[who, "gold_items"] == score["gold_items"] == 6
        assert (table.loc[who, "gold_low"], table.loc[who, "gold_high"]) == wilson_interval(hits, 6, 0.9)


def test_wilson_interval_matches_hand_computation():
    # 8 of 10 at 95%: z = 1.959964, z^2/n = 0.3841459; centre (0.8 + 0.1920729) / 1.3841459 = 0.7167402,
    # half-width 1.959964 / 1.3841459 * sqrt(0.016 + 0.0096036) = 0.2265777 (textbooks: 0.4902 to 0.9433)
    low, high = wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4901625, abs=1e-6), pytest.approx(0.9433178, abs=1e-6))
    # none of n: the upper bound is z^2 / (n + z^2), the lower bound 0
    assert wilson_interval(0, 10)[1] == pytest.approx(1.959964**2 / (10 + 1.959964**2), abs=1e-6)
    assert wilson_interval(0, 10)[0] == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="trials >= 1"):
        wilson_interval(0, 0)


def test_binomial_p_value_for_any_rate_against_exact_fractions():
    from fractions import Fraction

    def slow(k, n, p):
        p = Fraction(p)
        probability = [math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(n + 1)]
        return float(sum(q for q in probability if q <= probability[k]))

    for k, n, p in ((7, 20, "1/10"), (0, 15, "1/5"), (3, 12, "1/4"), (12, 12, "9/10")):
        assert binomial_two_sided(k, n, float(Fraction(p))) == pytest.approx(slow(k, n, p), rel=1e-9)
    assert binomial_two_sided(0, 10, 0.0) == 1.0 and binomial_two_sided(1, 10, 0.0) == 0.0


def test_majority_agreement_by_hand():
    # ada a a a / bob a b a / cy a b b. ada: item 1 others a,a (agreed), item 2 others b,b (not), item 3
    # others a,b (no majority); bob: only item 1 has a majority of others; cy: item 1 agreed, item 3 not.
    labels = [{"item_id": f"i{i}", "annotator": who, "choice": choice}
              for who, choices in (("ada", "aaa"), ("bob", "aba"), ("cy", "abb")) for i, choice in enumerate(choices)]
    assert majority_agreement(labels) == {"ada": {"items": 2, "agreed": 1}, "bob": {"items": 1, "agreed": 1},
                                          "cy": {"items": 2, "agreed": 1}}


def test_dashboard_escapes_names_and_marks_the_unusual(team):
    table = annotator_quality(team)
    table.loc[len(table)] = {**table.iloc[0], "annotator": "<img src=x onerror=alert(1)>"}
    figure = quality_dashboard(table)
    names = {name for trace in figure.data for name in trace.x}
    assert "&lt;img src=x onerror=alert(1)&gt;" in names and not any("<img" in name for name in names)
    [left] = [trace for trace in figure.data if trace.name == "left share"]
    colors = dict(zip(left.x, left.marker.color))
    assert colors["lefty"] == "red" and colors["ann1"] != "red"
    assert len(figure.layout.annotations) == 4  # the four panel titles


def test_an_empty_store_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="no labels yet"):
        annotator_quality(LabelStore(tmp_path / "l.db"))
