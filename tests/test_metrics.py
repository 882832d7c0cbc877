"""Agreement statistics against textbook values, position bias, leaderboards and disagreement review."""

import math
import random

import pytest

from rlhflab.labeling.metrics import (agreement, binomial_two_sided, bradley_terry, cohen_kappa, disagreements, elo,
                                      elo_mean, fleiss_kappa, leaderboard, leaderboard_plot, position_bias)
from rlhflab.labeling.records import Item
from rlhflab.labeling.store import LabelStore, StoreConfig
from rlhflab.tiny import GoldAnnotator
from rlhflab.tiny.annotate import label_with_gold, world_items


def test_cohen_kappa_matches_the_textbook_example():
    # 50 items, yes/yes 20, yes/no 5, no/yes 10, no/no 15: p_o = 0.7, p_e = 0.5, kappa = 0.4
    first = ["y"] * 25 + ["n"] * 25
    second = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(first, second) == pytest.approx(0.4)


def test_fleiss_kappa_matches_fleiss_1971_worked_example():
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)


def test_binomial_p_value_against_the_slow_sum():
    assert binomial_two_sided(5, 10) == pytest.approx(1.0)
    assert binomial_two_sided(0, 10) == pytest.approx(2 / 1024)
    slow = sum(math.comb(20, k) for k in range(21) if k <= 5 or k >= 15) / 2**20
    assert binomial_two_sided(15, 20) == pytest.approx(slow)


def test_elo_and_bradley_terry_rank_the_stronger_source_first():
    games = [("strong", "weak", 1.0)] * 30 + [("strong", "weak", 0.0)] * 10 + [("strong", "weak", 0.5)] * 4
    random.Random(0).shuffle(games)  # Elo is sequential: a run of losses at the end would dominate
    assert elo(games)["strong"] > elo(games)["weak"]
    ratings = bradley_terry(games)
    # the maximum-likelihood share of 32 of 44 wins (with the tiny prior) gives P(strong) ~ 0.727
    p = 1 / (1 + 10 ** ((ratings["weak"] - ratings["strong"]) / 400))
    assert p == pytest.approx(32 / 44, abs=0.01)


def test_elo_mean_over_shuffles_does_not_depend_on_the_order_of_the_games():
    games = [("strong", "weak", 1.0)] * 20 + [("strong", "weak", 0.0)] * 12  # every loss at the end
    assert elo(games)["weak"] > elo(games)["strong"]  # sequential Elo believes the last games most
    assert elo(games[::-1])["strong"] > elo(games[::-1])["weak"]
    shuffled = games[:]
    random.Random(1).shuffle(shuffled)
    assert elo_mean(games) == elo_mean(games[::-1]) == elo_mean(shuffled)
    assert elo_mean(games, seed=1) != elo_mean(games)  # the seed picks the orders; the input order does not
    # it settles near the Bradley-Terry rating of the same games, which no order moves
    for source, rating in bradley_terry(games).items():
        assert elo_mean(games)[source] == pytest.approx(rating, abs=10)
    with pytest.raises(ValueError, match="shuffles must be 1 or more"):
        elo_mean(games, shuffles=0)


@pytest.fixture(scope="module")
def team_store(tmp_path_factory, world):
    """Three noisy gold annotators on the same 40 items; built once, since no test writes to it."""
    store = LabelStore(tmp_path_factory.mktemp("team") / "l.db", config=StoreConfig(overlap=3))
    store.add_items(world_items(world, 40, seed=1))
    for k, who in enumerate(("ann1", "ann2", "ann3")):
        label_with_gold(store, GoldAnnotator(world, noise=0.25, seed=k), annotator=who)
    return store


def test_agreement_of_noisy_gold_annotators(team_store):
    stats = agreement(team_store)
    assert stats["items"] == 40
    assert 0.4 < stats["raw_agreement"] < 0.95 and 0 < stats["fleiss_kappa"] < 0.9
    assert set(stats["cohen_kappa"]) == {("ann1", "ann2"), ("ann1", "ann3"), ("ann2", "ann3")}


def test_position_bias_sees_a_left_leaning_annotator(tmp_path):
    store = LabelStore(tmp_path / "l.db")
    items = [Item(f"p{i}", (f"x{i}", f"y{i}")) for i in range(40)]
    store.add_items(items)
    for i, item in enumerate(items):  # always picks the left one, whichever that is
        order = [i % 2, 1 - i % 2]
        store.record(item.item_id, "lefty", choice="ab"[order[0]], strength="slightly", shown_order=order)
    bias = position_bias(store)
    assert bias["decided"] == 40 and bias["left_wins"] == 40 and bias["biased"] and bias["p_value"] < 1e-9


def test_gold_annotator_shows_no_position_bias_and_the_better_source_leads(team_store):
    assert not position_bias(team_store)["biased"]
    board = leaderboard(team_store)
    assert list(board["source"]) == ["world-p0.7", "world-p0.3"]
    assert board["wins"].sum() + board["ties"].sum() + board["losses"].sum() == 2 * board["games"].iloc[0]


def test_leaderboard_keeps_its_columns_and_its_elo_ignores_the_order_of_labeling(team_store, tmp_path):
    board = leaderboard(team_store, intervals=20)
    assert list(board.columns) == ["source", "games", "wins", "ties", "losses", "elo", "bradley_terry", "bt_low",
                                   "bt_high"]
    assert (board["bt_low"] <= board["bradley_terry"]).all() and (board["bradley_terry"] <= board["bt_high"]).all()
    assert board["elo"].iloc[0] > board["elo"].iloc[1]
    reversed_store = LabelStore(tmp_path / "reversed.db")  # the same labels, given newest first
    reversed_store.add_items(team_store.items().values())
    reversed_store.record_many([{k: label[k] for k in ("item_id", "annotator", "choice", "strength", "shown_order")}
                                for label in team_store.labels()[::-1]])
    again = leaderboard(reversed_store, intervals=20)
    assert again.equals(board)


def test_leaderboard_plot_has_one_row_per_source_with_its_interval():
    import pandas as pd

    board = pd.DataFrame({"source": ["<b>sft</b>", "round 1"], "elo": [1010.0, 990.0],
                          "bradley_terry": [1020.0, 980.0], "bt_low": [1000.0, 950.0], "bt_high": [1050.0, 1000.0]})
    figure = leaderboard_plot(board)
    bt, elo_points = figure.data
    assert list(bt.y) == ["&lt;b&gt;sft&lt;/b&gt;", "round 1"] and list(elo_points.x) == [1010.0, 990.0]
    assert list(bt.error_x.array) == [30.0, 20.0] and list(bt.error_x.arrayminus) == [20.0, 30.0]
    assert leaderboard_plot(board.drop(columns=["bt_low", "bt_high"])).data[0].error_x.array is None


def test_disagreements_lists_split_items_with_every_vote(team_store):
    review = disagreements(team_store)
    assert len(review) > 0 and len(review) < 40
    row = review.iloc[0]
    assert set(row["votes"]) == {"ann1", "ann2", "ann3"} and len(set(row["votes"].values())) > 1


def test_leaderboard_without_games_says_what_to_label(tmp_path):
    with pytest.raises(ValueError, match="different policies"):
        leaderboard(LabelStore(tmp_path / "l.db"))
