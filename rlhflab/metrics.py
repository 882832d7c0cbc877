"""What the labels say about the labelers and the policies: agreement, position bias, leaderboards.

    agreement        raw agreement of annotator pairs on shared items, Cohen's kappa per pair of
                     annotators, Fleiss' kappa over all items with two or more labels
    position_bias    do left responses win more than half the decided pairs? (exact binomial test)
    leaderboard      Elo (sequential, as chess rates players) and Bradley-Terry (maximum likelihood,
                     the model reward training assumes) ratings of the sources behind the responses
    disagreements    the items where annotators split, to review by hand

Every function takes a `LabelStore` (or the label dicts `store.labels()` returns) and uses only the
labels in force. Pair labels count here; rankings enter the leaderboard through their expanded pairs.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from itertools import combinations

from .exports import comparisons
from .store import CHOICES

ELO_K = 32.0  # Elo update step: rating points moved by one fully unexpected result
ELO_BASE = 1000.0  # rating of a source before its first game
BT_PRIOR = 0.1  # pseudo-ties between every two sources, so a source that never won still gets a rating


def _pair_labels(source) -> list[dict]:
    labels = source.labels() if hasattr(source, "labels") else list(source)
    return [label for label in labels if label.get("choice") in CHOICES]


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
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for label in _pair_labels(source):
        by_item[label["item_id"]][label["annotator"]] = label["choice"]
    shared = {item: votes for item, votes in by_item.items() if len(votes) >= 2}
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


# ---------------------------------------------------------------------------------------------
# Position bias
# ---------------------------------------------------------------------------------------------

def binomial_two_sided(successes: int, trials: int) -> float:
    """Exact two-sided p-value of `successes` in `trials` fair coin flips (sum of outcomes no likelier)."""
    observed = math.comb(trials, successes)
    return min(1.0, sum(math.comb(trials, k) for k in range(trials + 1) if math.comb(trials, k) <= observed) / 2**trials)


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

def _games(store) -> list[tuple[str, str, float]]:
    """(source 1, source 2, score of source 1: 1 win, 0.5 tie, 0 loss), oldest first; 'both bad' skipped."""
    games = []
    for row in comparisons(store):
        first, second = row["chosen_source"], row["rejected_source"]
        if first == second or row["label"] == "both_bad":
            continue
        games.append((first, second, 1.0 if row["label"] == "preferred" else 0.5))
    return games


def elo(games: list[tuple[str, str, float]], k: float = ELO_K, base: float = ELO_BASE) -> dict[str, float]:
    """Sequential Elo ratings: after each game, move both ratings by k * (result - expected result)."""
    ratings: dict[str, float] = defaultdict(lambda: base)
    for first, second, score in games:
        expected = 1 / (1 + 10 ** ((ratings[second] - ratings[first]) / 400))
        ratings[first] += k * (score - expected)
        ratings[second] -= k * (score - expected)
    return dict(ratings)


def bradley_terry(games: list[tuple[str, str, float]], iterations: int = 200, prior: float = BT_PRIOR) -> dict[str, float]:
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
    Chiang et al. 2024)."""
    rng = random.Random(seed)
    draws: dict[str, list[float]] = defaultdict(list)
    for _ in range(samples):
        for source, rating in bradley_terry(rng.choices(games, k=len(games))).items():
            draws[source].append(rating)
    tail = (1 - level) / 2
    return {source: (_quantile(values, tail), _quantile(values, 1 - tail)) for source, values in draws.items()}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def leaderboard(store, intervals: int = 0):
    """A pandas DataFrame of sources: games, wins, ties, losses, Elo and Bradley-Terry ratings, best first.

    `intervals` > 0 adds 95% bootstrap bounds of the Bradley-Terry rating from that many resamples
    (`bt_low`, `bt_high`).
    """
    import pandas as pd

    games = _games(store)
    if not games:
        raise ValueError("no decided pairs between different sources yet; label items whose responses come "
                         "from different policies (GenerationQueue with two policies, or sources= in items_from)")
    tally: dict[str, Counter] = defaultdict(Counter)
    for first, second, score in games:
        for player, result in ((first, score), (second, 1 - score)):
            tally[player]["games"] += 1
            tally[player]["wins" if result == 1 else "ties" if result == 0.5 else "losses"] += 1
    ratings, strengths = elo(games), bradley_terry(games)
    bounds = bradley_terry_intervals(games, intervals) if intervals > 0 else {}
    rows = [{"source": p, "games": t["games"], "wins": t["wins"], "ties": t["ties"], "losses": t["losses"],
             "elo": round(ratings[p], 1), "bradley_terry": round(strengths[p], 1),
             **({"bt_low": round(bounds[p][0], 1), "bt_high": round(bounds[p][1], 1)} if bounds else {})}
            for p, t in tally.items()]
    return pd.DataFrame(rows).sort_values("bradley_terry", ascending=False, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Disagreement review
# ---------------------------------------------------------------------------------------------

def disagreements(store):
    """A pandas DataFrame of items whose annotators chose differently: prompt, both responses, each vote."""
    import pandas as pd

    items = store.items()
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for label in _pair_labels(store):
        by_item[label["item_id"]][label["annotator"]] = label["choice"]
    rows = []
    for item_id, votes in by_item.items():
        if len(set(votes.values())) > 1:
            item = items[item_id]
            rows.append({"item_id": item_id, "prompt": item.prompt, "response_a": item.responses[0],
                         "response_b": item.responses[1], "votes": dict(sorted(votes.items())),
                         "split": " / ".join(f"{c} {n}" for c, n in Counter(votes.values()).most_common())})
    return pd.DataFrame(rows, columns=["item_id", "prompt", "response_a", "response_b", "votes", "split"])
