"""Labels out of the lab: the comparisons and ratings the labels in force give, as rows for TRL, OpenRLHF and verl.

    comparison   one row per ordered pair a label decides: prompt / chosen / rejected, the margin,
                 the annotator and the flags; rankings of K expand into K(K-1)/2 of them
    rating       one row per thumbs up or down on a single response: prompt / response / label
    TRL rows     prompt / chosen / rejected (+ margin), what TRL's RewardTrainer and DPOTrainer read
    KTO rows     prompt / completion / label (True = desirable), what TRL's KTOTrainer reads: every
                 rating, and both sides of every decided pair (chosen up, rejected down)

Every function reads a `LabelStore` (or anything with its `items()` and `labels()`), never writes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path

from .records import MARGINS, letter
from .store import RATINGS


def comparisons(store) -> list[dict]:
    """Every pair the labels in force decide, ties and 'both bad' included, oldest label first.

    A pair label gives one row; a ranking of K responses gives K(K-1)/2 rows. `label` is
    'preferred' (chosen beat rejected), 'tie' or 'both_bad'; for the latter two chosen/rejected
    are simply the stored order. `shown_left` says whether chosen was displayed on the left.
    Ratings (thumbs up or down on one response) decide no pair and are left to `ratings`.
    """
    items = store.items()
    rows = []
    for label in store.labels():
        item = items[label["item_id"]]
        if label["choice"] in RATINGS or len(item.responses) < 2:  # one response: nothing to compare
            continue
        flags = label["flags"] or {}
        left = (label["shown_order"] or [None])[0]
        for winner, loser, kind, margin in _decided_pairs(label, len(item.responses)):
            rows.append({
                "item_id": item.item_id, "prompt": item.prompt,
                "chosen": item.responses[winner], "rejected": item.responses[loser],
                "chosen_source": item.sources[winner], "rejected_source": item.sources[loser],
                "label": kind, "margin": margin, "annotator": label["annotator"],
                "flags": sorted([f"chosen:{f}" for f in flags.get(letter(winner), [])]
                                + [f"rejected:{f}" for f in flags.get(letter(loser), [])]),
                "shown_left": None if left is None else left == winner,
                "rationale": label["rationale"], "created_at": label["created_at"], "event_id": label["event_id"],
            })
    return rows


def _decided_pairs(label: dict, k: int):
    """(winner index, loser index, kind, margin) for each pair a label speaks about."""
    if label["ranking"] is not None:  # rank 1 is best; equal ranks are ties; margin grows with rank distance
        ranks = label["ranking"]
        for i, j in combinations(range(k), 2):
            if ranks[i] == ranks[j]:
                yield i, j, "tie", 0.0
            else:
                winner, loser = (i, j) if ranks[i] < ranks[j] else (j, i)
                yield winner, loser, "preferred", min(abs(ranks[i] - ranks[j]), 3) / 3
        return
    choice = label["choice"]
    if choice in ("a", "b"):
        winner = "ab".index(choice)
        yield winner, 1 - winner, "preferred", MARGINS[label["strength"]]
    else:
        yield 0, 1, choice, 0.0


def ratings(store) -> list[dict]:
    """Every rating in force (thumbs up or down on an item's one response), oldest first.

    `label` is True for up; `flags` are the response's flags.
    """
    items = store.items()
    rows = []
    for label in store.labels():
        if label["choice"] not in RATINGS:
            continue
        item = items[label["item_id"]]
        rows.append({
            "item_id": item.item_id, "prompt": item.prompt, "response": item.responses[0],
            "label": label["choice"] == "up", "annotator": label["annotator"], "rationale": label["rationale"],
            "flags": sorted((label["flags"] or {}).get(letter(0), [])),
            "created_at": label["created_at"], "event_id": label["event_id"],
        })
    return rows


def kto_rows(store, include_flagged: bool = True) -> list[dict]:
    """prompt / completion / label / source rows for TRL's KTOTrainer, which learns from unpaired verdicts.

    Every rating gives one row (`source` 'rating'); every decided pair gives two (`source` 'pair'):
    chosen as desirable (True) and rejected as undesirable (False), as KTO's paper turns preference
    data into its binary signal (Ethayarajh et al. 2024, "KTO"). Ties and 'both bad' give none.

    Args:
        include_flagged: keep rows whose completion was flagged (say, harmful); False drops them.
    """
    out = [{"prompt": r["prompt"], "completion": r["response"], "label": r["label"], "source": "rating",
            "flagged": bool(r["flags"])} for r in ratings(store)]
    for row in comparisons(store):
        if row["label"] != "preferred":
            continue
        for side, label in (("chosen", True), ("rejected", False)):
            out.append({"prompt": row["prompt"], "completion": row[side], "label": label, "source": "pair",
                        "flagged": any(f.startswith(f"{side}:") for f in row["flags"])})
    return [{k: r[k] for k in ("prompt", "completion", "label", "source")}
            for r in out if include_flagged or not r["flagged"]]


def to_dataframe(store):
    """All comparisons (ties and 'both bad' included) as a pandas DataFrame."""
    import pandas as pd

    rows = comparisons(store)
    return pd.DataFrame(rows, columns=list(rows[0]) if rows else None)


def trl_rows(store, include_flagged: bool = True) -> list[dict]:
    """prompt / chosen / rejected / margin / annotator / flags rows for TRL; only decided pairs.

    Args:
        include_flagged: keep pairs whose chosen response was flagged (say, harmful); False drops them.
    """
    out = []
    for row in comparisons(store):
        if row["label"] != "preferred":
            continue
        if not include_flagged and any(f.startswith("chosen:") for f in row["flags"]):
            continue
        out.append({k: row[k] for k in ("prompt", "chosen", "rejected", "margin", "annotator", "flags")})
    return out


def to_trl_dataset(store, include_flagged: bool = True):
    """A `datasets.Dataset` of TRL preference rows (see `trl_rows`)."""
    from datasets import Dataset

    rows = trl_rows(store, include_flagged)
    if not rows:
        raise ValueError(f"{store!r} holds no decided pairs yet; label some items (or import comparisons) first")
    return Dataset.from_list(rows)


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """JSON lines (UTF-8), one row each; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def to_jsonl(store, path: str | Path) -> Path:
    """All comparisons as JSON lines (UTF-8); returns the path."""
    return write_jsonl(comparisons(store), path)


def to_kto_jsonl(store, path: str | Path, include_flagged: bool = True) -> Path:
    """KTO rows (see `kto_rows`) as JSON lines (UTF-8) for TRL's KTOTrainer; returns the path."""
    return write_jsonl(kto_rows(store, include_flagged), path)


# -- for RL frameworks that scale further: OpenRLHF and verl ------------------------------------

def prompts_of(source) -> list[str]:
    """The distinct prompts of a LabelStore's items (queue order), or of a list of strings."""
    prompts = [item.prompt for item in source.items().values()] if hasattr(source, "items") else list(source)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("give a LabelStore with items, or a non-empty list of non-empty prompt strings")
    return list(dict.fromkeys(prompts))


def to_openrlhf(store, path: str | Path, include_flagged: bool = True) -> Path:
    """Decided pairs as JSONL for OpenRLHF's reward-model and DPO trainers.

    Each line holds prompt / chosen / rejected (plain text) and the margin; train with
    `--dataset <path> --prompt_key prompt --chosen_key chosen --rejected_key rejected`.
    """
    rows = trl_rows(store, include_flagged)
    if not rows:
        raise ValueError(f"{store!r} holds no decided pairs yet; label some items (or import comparisons) first")
    return write_jsonl(({k: r[k] for k in ("prompt", "chosen", "rejected", "margin")} for r in rows), path)


def to_openrlhf_prompts(source, path: str | Path) -> Path:
    """Prompts as JSONL for OpenRLHF's PPO trainer: `{"input": prompt}` lines (`--input_key input`)."""
    return write_jsonl(({"input": p} for p in prompts_of(source)), path)


def to_verl_prompts(source, path: str | Path, data_source: str = "rlhflab", split: str = "train") -> Path:
    """Prompts as a verl RL dataset: a parquet file in verl's schema.

    Columns: data_source, prompt (chat messages), ability, reward_model ({'style': 'model',
    'ground_truth': ''}: scored by a reward model, not a rule) and extra_info ({'split', 'index'}).
    """
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"data_source": data_source, "prompt": [{"role": "user", "content": p}], "ability": "chat",
                   "reward_model": {"style": "model", "ground_truth": ""},
                   "extra_info": {"split": split, "index": i}} for i, p in enumerate(prompts_of(source))]
                 ).to_parquet(path, index=False)
    return path
