"""What the labels say about the labelers and the policies: agreement, position bias, leaderboards.

    agreement        raw agreement of annotator pairs on shared items, Cohen's kappa per pair of
                     annotators, Fleiss' kappa over all items with two or more labels
    majority_agreement  per annotator: how often they side with the majority of the others
    position_bias    do left responses win more than half the decided pairs? (exact binomial test)
    wilson_interval  a confidence interval for a share (gold accuracy, say) that holds on few items
    win_rate_interval  a win-rate with ties counting half, and its bootstrap interval over prompts
    people_win_rates  people's blind verdicts on evaluation items: each checkpoint's win-rate against SFT
    leaderboard      Elo (the mean over shuffles of the games, so the order they came in does not
                     matter) and Bradley-Terry (maximum likelihood, the model reward training assumes,
                     with bootstrap intervals) ratings of the sources behind the responses, and
                     `leaderboard_plot`, the two as an interval plot; `source_games` are the games
    disagreements    the items where annotators split, to review by hand

`rlhflab.labeling.quality` puts these together per annotator, for a team lead.

Every function takes a `LabelStore` (or the label dicts `store.labels()` returns) and uses only the
labels in force. Pair labels count here; rankings enter the leaderboard through their expanded pairs.
"""

from __future__ import annotations

import html
import math
import random
from collections import Counter, defaultdict
from itertools import combinations
from statistics import NormalDist

from .exports import comparisons
from .store import CHOICES

__all__ = ["ELO_SHUFFLES", "cohen_kappa", "fleiss_kappa", "agreement", "majority_agreement",
           "binomial_two_sided", "wilson_interval", "win_rate_interval", "people_win_rates",
           "position_bias", "source_games", "elo", "elo_mean", "bradley_terry", "leaderboard",
           "leaderboard_plot", "disagreements"]

ELO_K = 32.0  # Elo update step: rating points moved by one fully unexpected result
ELO_BASE = 1000.0  # rating of a source before its first game
ELO_SHUFFLES = 100  # orders of the games that the reported Elo rating is the mean over
BT_PRIOR = 0.1  # pseudo-ties between every two sources, so a source that never won still gets a rating


def _pair_labels(source) -> list[dict]:
    labels = source.labels() if hasattr(source, "labels") else list(source)
    return [label for label in labels if label.get("choice") in CHOICES]


def _votes(source) -> dict[str, dict[str, str]]:
    """item_id -> {annotator: choice} of the pair labels in force."""
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for label in _pair_labels(source):
        by_item[label["item_id"]][label["annotator"]] = label["choice"]
    return by_item


# ---------------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------------

def cohen_kappa(first: list[str], second: list[str]) -> float:
    """Cohen's kappa of two raters' labels on the same items (Cohen 1960): (p_o - p_e) / (1 - p_e)."""
    if len(first) != len(second) or not first:
        raise ValueError("cohen_kappa needs two equally long, non-empty lists of labels for the same items")
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second)) / n
    count_a, count_b = Counter(first), Counter(second)
    expected = sum(count_a[c] * count_b[c] for c in set(first) | set(second)) / n**2
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(counts: list[list[int]]) -> float:
    """Fleiss' kappa (Fleiss 1971) from an items x categories table of how many raters chose each.

    Items may have different numbers of raters (at least 2 each).
    """
    rows = [row for row in counts if sum(row) >= 2]
    if not rows:
        raise ValueError("fleiss_kappa needs at least one item labeled by two or more annotators")
    per_item = [sum(n * (n - 1) for n in row) / (sum(row) * (sum(row) - 1)) for row in rows]
    observed = sum(per_item) / len(rows)
    total = sum(sum(row) for row in rows)
    shares = [sum(row[j] for row in rows) / total for j in range(len(rows[0]))]
    expected = sum(p * p for p in shares)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def agreement(source) -> dict:
    """Raw agreement and kappas over items that two or more annotators labeled.

    Returns: {'items', 'raw_agreement', 'fleiss_kappa', 'cohen_kappa': {(ann1, ann2): kappa}}; the
    statistics are None when no item has two labels yet.
    """
    shared = {item: votes for item, votes in _votes(source).items() if len(votes) >= 2}
    if not shared:
        return {"items": 0, "raw_agreement": None, "fleiss_kappa": None, "cohen_kappa": {}}
    pairs = [(a, b) for votes in shared.values() for a, b in combinations(votes.values(), 2)]
    table = [[list(votes.values()).count(c) for c in CHOICES] for votes in shared.values()]
    annotators = sorted({who for votes in shared.values() for who in votes})
    cohen = {}
    for first, second in combinations(annotators, 2):
        both = [votes for votes in shared.values() if first in votes and second in votes]
        if both:
            cohen[(first, second)] = cohen_kappa([v[first] for v in both], [v[second] for v in both])
    return {"items": len(shared), "raw_agreement": sum(a == b for a, b in pairs) / len(pairs),
            "fleiss_kappa": fleiss_kappa(table), "cohen_kappa": cohen}


def majority_agreement(source) -> dict[str, dict]:
    """Per annotator, on the items others labeled too: how often their choice is the one more than half
    of the others gave. Kappa speaks of pairs of annotators; this singles out the one who differs.

    Items where the others have no majority (one each way) say nothing about anyone and are left out.
    Returns: {annotator: {'items', 'agreed'}} for every annotator with a pair label, items 0 when none counts.
    """
    tally: dict[str, dict] = {}
    for votes in _votes(source).values():
        for who, choice in votes.items():
            counts = tally.setdefault(who, {"items": 0, "agreed": 0})
            others = Counter(c for other, c in votes.items() if other != who)
            top = others.most_common(1)
            if top and 2 * top[0][1] > len(votes) - 1:
                counts["items"] += 1
                counts["agreed"] += choice == top[0][0]
    return dict(sorted(tally.items()))


# ---------------------------------------------------------------------------------------------
# Position bias, and the test and interval behind per-annotator quality
# ---------------------------------------------------------------------------------------------

def binomial_two_sided(successes: int, trials: int, p: float = 0.5) -> float:
    """Exact two-sided p-value of `successes` in `trials` draws that each succeed with probability `p`
    (a fair coin by default): the total probability of the outcomes no likelier than the one seen."""
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie between 0 and trials ({trials}), not {successes}")
    if not 0 <= p <= 1:
        raise ValueError(f"p is a probability, between 0 and 1, not {p}")
    if p in (0, 1):  # only one outcome is possible
        return 1.0 if successes == trials * p else 0.0

    def log_probability(k: int) -> float:  # in logs: 0.5 ** 2000 underflows a float
        return (math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
                + k * math.log(p) + (trials - k) * math.log1p(-p))

    observed = log_probability(successes) + 1e-7  # outcomes as likely, up to rounding, count as no likelier
    return min(1.0, sum(math.exp(lp) for lp in map(log_probability, range(trials + 1)) if lp <= observed))


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's (1927) score interval of a share: unlike share +- z * standard error, it stays inside
    [0, 1] and keeps close to its level on a few items or a share near 0 or 1 (Brown, Cai and
    DasGupta 2001), which is what ten gold items per annotator give."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"a share needs trials >= 1 and 0 <= successes <= trials, not {successes} of {trials}")
    z = NormalDist().inv_cdf((1 + level) / 2)
    share, z2 = successes / trials, z * z / trials
    centre = (share + z2 / 2) / (1 + z2)
    half = z / (1 + z2) * math.sqrt(share * (1 - share) / trials + z2 / (4 * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate_interval(outcomes: list[float], level: float = 0.95, samples: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
    """The mean of per-prompt outcomes (1 win, 0.5 tie, 0 loss) and its percentile bootstrap interval over
    the prompts (Efron and Tibshirani 1993, ch. 13): (win-rate, low, high)."""
    if not outcomes:
        raise ValueError("a win-rate needs at least one outcome")
    rng, n = random.Random(f"win_rate:{seed}"), len(outcomes)
    means = [sum(rng.choices(outcomes, k=n)) / n for _ in range(samples)]
    tail = (1 - level) / 2
    return sum(outcomes) / n, _quantile(means, tail), _quantile(means, 1 - tail)


def people_win_rates(store, sources: list[str], baseline: str = "sft", seed: int = 0) -> dict[str, dict]:
    """People's blind verdicts on the evaluation items of each of `sources` against `baseline`: the win-rate (a
    tie counts half; 'both bad' says nothing and is left out) with its 95% interval over the verdicts, and how
    many verdicts it rests on; a source with no verdict yet is left out. This is InstructGPT's main evaluation
    (Ouyang et al. 2022, sec. 4.1). The store's evaluation labels are read once for all sources."""
    outcomes: dict[str, list[float]] = defaultdict(list)
    for first, second, score in source_games(store, evaluation=True):
        for source, won in ((first, score), (second, 1 - score)):
            if source in sources and baseline in (first, second) and source != baseline:
                outcomes[source].append(won)
    rates = {}
    for source in sources:
        if outcomes[source]:
            rate, low, high = win_rate_interval(outcomes[source], seed=seed)
            rates[source] = {f"people/win_rate_vs_{baseline}": rate, f"people/win_rate_vs_{baseline}_low": low,
                             f"people/win_rate_vs_{baseline}_high": high, "people/verdicts": len(outcomes[source])}
    return rates


def position_bias(source, alpha: float = 0.05) -> dict:
    """Share of decided pairs won by the response shown on the left, and whether it differs from 1/2.

    Returns: {'decided', 'left_wins', 'left_share', 'p_value', 'biased'}; ties and 'both bad' are
    not decided and are left out, as are labels without a recorded order.
    """
    decided = [label for label in _pair_labels(source) if label["choice"] in ("a", "b") and label["shown_order"]]
    left_wins = sum("ab".index(label["choice"]) == label["shown_order"][0] for label in decided)
    n = len(decided)
    p_value = binomial_two_sided(left_wins, n) if n else 1.0
    return {"decided": n, "left_wins": left_wins, "left_share": left_wins / n if n else None,
            "p_value": p_value, "biased": p_value < alpha}


# ---------------------------------------------------------------------------------------------
# Leaderboards of the sources behind the responses
# ---------------------------------------------------------------------------------------------

def source_games(store, evaluation: bool = False) -> list[tuple[str, str, float]]:
    """The games the labels decide between the sources behind the responses (the policies that wrote them):
    (source 1, source 2, score of source 1: 1 win, 0.5 tie, 0 loss), oldest label first; 'both bad' skipped.
    `evaluation`: the games of the evaluation items (blind comparisons of checkpoints) instead."""
    games = []
    for row in comparisons(store, evaluation=evaluation):
        first, second = row["chosen_source"], row["rejected_source"]
        if first == second or row["label"] == "both_bad":
            continue
        games.append((first, second, 1.0 if row["label"] == "preferred" else 0.5))
    return games


def elo(games: list[tuple[str, str, float]], k: float = ELO_K, base: float = ELO_BASE) -> dict[str, float]:
    """Sequential Elo ratings: after each game, move both ratings by k * (result - expected result).

    The result depends on the order of the games (the last ones weigh most); `elo_mean` does not.
    """
    ratings: dict[str, float] = defaultdict(lambda: base)
    for first, second, score in games:
        expected = 1 / (1 + 10 ** ((ratings[second] - ratings[first]) / 400))
        ratings[first] += k * (score - expected)
        ratings[second] -= k * (score - expected)
    return dict(ratings)


def elo_mean(games: list[tuple[str, str, float]], shuffles: int = ELO_SHUFFLES, seed: int = 0,
             k: float = ELO_K, base: float = ELO_BASE) -> dict[str, float]:
    """Elo ratings averaged over `shuffles` seeded random orders of the games, as Chatbot Arena reports
    Elo (Chiang et al. 2024): the same games give the same ratings in whatever order they were labeled.

    The games are sorted before they are shuffled, so the input order cannot leak through the seed.
    """
    if shuffles < 1:
        raise ValueError(f"shuffles must be 1 or more orders of the games to average over, not {shuffles}")
    rng, ordered = random.Random(seed), sorted(games)
    totals: dict[str, float] = defaultdict(float)
    for _ in range(shuffles):
        rng.shuffle(ordered)
        for source, rating in elo(ordered, k, base).items():
            totals[source] += rating
    return {source: total / shuffles for source, total in totals.items()}


def bradley_terry(games: list[tuple[str, str, float]], iterations: int = 200,
                  prior: float = BT_PRIOR) -> dict[str, float]:
    """Bradley-Terry strengths by Hunter's (2004) MM updates, on the Elo scale (mean ELO_BASE).

    P(i beats j) = p_i / (p_i + p_j); ties count half a win to each side.
    """
    players = sorted({p for g in games for p in g[:2]})
    wins: dict[str, float] = defaultdict(float)
    played: dict[tuple[str, str], float] = defaultdict(float)
    for first, second in combinations(players, 2):  # the prior: `prior` tied games between every two
        wins[first] += prior / 2
        wins[second] += prior / 2
        played[(first, second)] += prior
    for first, second, score in games:
        wins[first] += score
        wins[second] += 1 - score
        played[tuple(sorted((first, second)))] += 1
    strength = {p: 1.0 for p in players}
    for _ in range(iterations):
        updated = {}
        for p in players:
            denominator = sum(n / (strength[q] + strength[r]) for (q, r), n in played.items() if p in (q, r))
            updated[p] = wins[p] / denominator
        mean_log = sum(math.log(v) for v in updated.values()) / len(updated)
        strength = {p: v / math.exp(mean_log) for p, v in updated.items()}
    return {p: ELO_BASE + 400 * math.log10(v) for p, v in strength.items()}


def bradley_terry_intervals(games: list[tuple[str, str, float]], samples: int = 200, level: float = 0.95,
                            seed: int = 0) -> dict[str, tuple[float, float]]:
    """Bootstrap intervals of the Bradley-Terry ratings: the games resampled with replacement
    `samples` times, the central `level` share of each source's ratings (Chatbot Arena's method,
    Chiang et al. 2024). The games are sorted first, so the intervals do not depend on their order."""
    rng, games = random.Random(seed), sorted(games)
    draws: dict[str, list[float]] = defaultdict(list)
    for _ in range(samples):
        for source, rating in bradley_terry(rng.choices(games, k=len(games))).items():
            draws[source].append(rating)
    tail = (1 - level) / 2
    return {source: (_quantile(values, tail), _quantile(values, 1 - tail)) for source, values in draws.items()}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def leaderboard(store, intervals: int = 0, shuffles: int = ELO_SHUFFLES, seed: int = 0, evaluation: bool = False):
    """A pandas DataFrame of sources: games, wins, ties, losses, Elo and Bradley-Terry ratings, best first.

    `elo` is the mean over `shuffles` seeded orders of the games (`elo_mean`), so it does not depend on
    the order the labels came in. `intervals` > 0 adds 95% bootstrap bounds of the Bradley-Terry rating
    from that many resamples (`bt_low`, `bt_high`); `leaderboard_plot` draws them.
    """
    import pandas as pd

    games = source_games(store, evaluation)
    if not games:
        raise ValueError("no decided pairs between different sources yet; label items whose responses come "
                         "from different policies (GenerationQueue with two policies, or sources= in items_from)")
    tally: dict[str, Counter] = defaultdict(Counter)
    for first, second, score in games:
        for player, result in ((first, score), (second, 1 - score)):
            tally[player]["games"] += 1
            tally[player]["wins" if result == 1 else "ties" if result == 0.5 else "losses"] += 1
    ratings, strengths = elo_mean(games, shuffles, seed), bradley_terry(games)
    bounds = bradley_terry_intervals(games, intervals, seed=seed) if intervals > 0 else {}
    rows = [{"source": p, "games": t["games"], "wins": t["wins"], "ties": t["ties"], "losses": t["losses"],
             "elo": round(ratings[p], 1), "bradley_terry": round(strengths[p], 1),
             **({"bt_low": round(bounds[p][0], 1), "bt_high": round(bounds[p][1], 1)} if bounds else {})}
            for p, t in tally.items()]
    return pd.DataFrame(rows).sort_values("bradley_terry", ascending=False, ignore_index=True)


def leaderboard_plot(board):
    """The leaderboard as an interval plot, one row per source, best on top: its Bradley-Terry rating
    with the bootstrap interval (when `board` has `bt_low` / `bt_high`) and its Elo mean over shuffles.
    Source names are escaped: plotly would render tags in them."""
    import plotly.graph_objects as go

    sources = [html.escape(str(s)) for s in board["source"]]
    error = {}
    if {"bt_low", "bt_high"} <= set(board.columns):
        error = dict(error_x=dict(type="data", symmetric=False, array=board["bt_high"] - board["bradley_terry"],
                                  arrayminus=board["bradley_terry"] - board["bt_low"]))
    figure = go.Figure()
    figure.add_scatter(x=board["bradley_terry"], y=sources, mode="markers", marker=dict(size=10),
                       name="Bradley-Terry" + (" (95% bootstrap interval)" if error else ""), **error)
    figure.add_scatter(x=board["elo"], y=sources, mode="markers", name="Elo (mean over shuffles)",
                       marker=dict(symbol="diamond-open", size=10))
    figure.update_layout(title="Which source do the labels prefer?", height=160 + 40 * len(board),
                         xaxis_title="rating (Elo scale, 1000 = average)", legend=dict(orientation="h", y=-0.3),
                         yaxis=dict(title="source", type="category", autorange="reversed"))
    return figure


# ---------------------------------------------------------------------------------------------
# Disagreement review
# ---------------------------------------------------------------------------------------------

def disagreements(store):
    """A pandas DataFrame of items whose annotators chose differently: prompt, both responses, each vote."""
    import pandas as pd

    items = store.items()
    rows = []
    for item_id, votes in _votes(store).items():
        if len(set(votes.values())) > 1:
            item = items[item_id]
            rows.append({"item_id": item_id, "prompt": item.prompt, "response_a": item.responses[0],
                         "response_b": item.responses[1], "votes": dict(sorted(votes.items())),
                         "split": " / ".join(f"{c} {n}" for c, n in Counter(votes.values()).most_common())})
    return pd.DataFrame(rows, columns=["item_id", "prompt", "response_a", "response_b", "votes", "split"])
