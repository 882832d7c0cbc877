"""Labels out of the lab: the comparisons and ratings the labels in force give, as rows for TRL, OpenRLHF and verl.

    comparison   one row per ordered pair a label decides: prompt / chosen / rejected, the margin,
                 the annotator and the flags; rankings of K expand into K(K-1)/2 of them
    rating       one row per thumbs up or down on a single response: prompt / response / label
    TRL rows     prompt / chosen / rejected (+ margin), what TRL's RewardTrainer and DPOTrainer read
    KTO rows     prompt / completion / label (True = desirable), what TRL's KTOTrainer reads: every
                 rating, and both sides of every decided pair (chosen up, rejected down)

Rows in memory hold each prompt as the store does: text, or a `Conversation`. Files and Datasets hold it
in their consumer's form: TRL's conversational rows (the prompt as chat messages, each reply as one
assistant message) for TRL, so that its trainers apply the model's chat template; the same for
OpenRLHF with `--apply_chat_template` (or plain text, `chat=False`); chat messages for verl; and in the
generic JSONL / DataFrame, text or the messages of a conversation (`json_prompt`).

Every function reads a `LabelStore` at one moment (`LabelStore.snapshot`), or anything with its `items()`,
`labels()` and `decisions()`, never writes it, and takes an aggregation policy for items that several
annotators labelled:

    "all"          every label in force is a row of its own (the default; with one annotator per
                   item it is the only policy there is)
    "majority"     one verdict per item: the choice (or ranking) more than half its annotators gave;
                   items without one are dropped
    "adjudicated"  a reviewer's decision (`LabelStore.decide`) where there is one, else the verdict
                   all annotators share; disagreements nobody decided yet are dropped
                   (`adjudication_queue` lists them, with everyone's choice, strength, flags and rationale)

Gold (calibration) items are left out unless include_gold=True: they measure annotators and are
labelled by everyone, so they would outweigh every other item.

Every list returned is an `ExportRows`: a list that also counts what was dropped, by reason. Events
an export cannot interpret (an unknown item, a choice the item cannot take, a malformed ranking, as
an older version or a raw SQL write may leave) are skipped, counted, and announced with an
`UnreadableEventWarning`, never raised: one bad event must not stop every export. A pair whose two
texts are identical teaches nothing and is never a row.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path

from .records import MARGINS, Conversation, as_messages, letter, prompt_text
from .store import CHOICES, RATINGS, STRENGTHS

__all__ = ["POLICIES", "UnreadableEventWarning", "ExportRows", "comparisons", "ratings", "kto_rows",
           "to_dataframe", "trl_rows", "to_trl_dataset", "conversational", "adjudication_queue",
           "write_jsonl", "to_jsonl", "to_kto_jsonl", "to_openrlhf", "to_openrlhf_prompts",
           "to_verl_prompts"]

POLICIES = ("all", "majority", "adjudicated")


class UnreadableEventWarning(UserWarning):
    """Events in the store that an export skipped because it cannot interpret them."""


class ExportRows(list):
    """Export rows (a plain list) and `dropped`: reason -> how many labels or pairs were left out for it."""

    def __init__(self, rows: Iterable[dict] = (), dropped: Counter | None = None):
        super().__init__(rows)
        self.dropped = +Counter(dropped or {})  # only the reasons that dropped something


# -- which labels an export reads: readable ones, outside gold, aggregated by the policy ------------

def _unreadable(label: dict, item) -> str | None:
    """Why `label` cannot be interpreted against `item`, or None when it can."""
    if item is None:
        return "unknown item"
    k = len(item.responses)
    choice, ranking, strength = label.get("choice"), label.get("ranking"), label.get("strength")
    if (choice is None) == (ranking is None):
        return "neither one choice nor one ranking"
    if choice is not None and choice not in CHOICES + RATINGS:
        return "unknown choice"
    if choice in RATINGS and k != 1:
        return f"a rating of an item with {k} responses"
    if choice in CHOICES and k != 2:
        return f"a pair choice on an item with {k} responses"
    if ranking is not None and not (isinstance(ranking, list) and len(ranking) == k
                                    and all(isinstance(r, int) and r >= 1 for r in ranking)):
        return "a ranking that does not fit the item"
    if strength is not None and strength not in STRENGTHS:
        return "unknown strength"
    flags = label.get("flags")
    if flags is not None and not (isinstance(flags, dict) and all(isinstance(v, list) for v in flags.values())):
        return "unreadable flags"
    shown = label.get("shown_order")
    if shown is not None and not (isinstance(shown, list) and sorted(shown) == list(range(k))):
        return "unreadable shown_order"
    return None


def _verdict(label: dict):
    """What a label says about its item, comparable between annotators (strength aside)."""
    return label["choice"] if label["choice"] is not None else tuple(label["ranking"])


def _merged(votes: list[dict], voters: int) -> dict:
    """One label standing for `votes` (labels with one verdict) out of `voters` labels on the item.

    Its strength is the median of the strengths given (the lower one of the middle two), so one
    annotator's "much" cannot inflate the margin the others agreed on; its flags are every flag
    any of them raised; `annotator` names them all ('ada+bob'); `votes` says '2/3'.
    """
    newest = max(votes, key=lambda v: v["id"])
    strengths = sorted((v["strength"] for v in votes if v["strength"]), key=STRENGTHS.index)
    flags = defaultdict(set)
    for v in votes:
        for side, names in (v["flags"] or {}).items():
            flags[side].update(names)
    return {**newest, "annotator": "+".join(sorted(v["annotator"] for v in votes)),
            "strength": strengths[(len(strengths) - 1) // 2] if strengths else None,
            "flags": {side: sorted(names) for side, names in flags.items()} or None,
            "rationale": None, "shown_order": None, "votes": f"{len(votes)}/{voters}"}


def _labels(store, policy: str, include_gold: bool, dropped: Counter,
            evaluation: bool = False) -> list[tuple[dict, object]]:
    """(label, item) pairs an export turns into rows, oldest first, under `policy`; counts what it drops.

    Evaluation items (`meta['evaluation']`: people comparing two checkpoints blind) never become training
    rows; `evaluation=True` reads only them, for a win-rate or a leaderboard."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
    store = at_one_moment(store)
    items = store.items()
    unreadable = []

    def readable(labels):
        for label in labels:
            item = items.get(label["item_id"])
            problem = _unreadable(label, item)
            if problem is not None:
                unreadable.append((label["event_id"], problem))
                dropped[f"unreadable: {problem}"] += 1
            elif item.gold is not None and not include_gold:
                dropped["gold item"] += 1
            elif bool(item.meta.get("evaluation")) != evaluation:
                dropped["evaluation item" if not evaluation else "training item"] += 1
            else:
                yield {**label, "prompt_flagged": label["item_id"] in flagged_prompts}

    in_force = store.current().values()  # every answer in force: labels, and prompt flags that mark their items
    flagged_prompts = {answer["item_id"] for answer in in_force if answer["action"] == "flag_prompt"}
    by_item = defaultdict(list)
    for label in readable(sorted((a for a in in_force if a["action"] == "label"), key=lambda a: a["id"])):
        by_item[label["item_id"]].append(label)
    decisions = {d["item_id"]: d for d in readable(store.decisions().values())} if policy == "adjudicated" else {}
    _warn(unreadable)
    chosen = []
    for item_id, labels in by_item.items():
        if policy == "all":
            chosen.extend(labels)
            continue
        votes = defaultdict(list)
        for label in labels:
            votes[_verdict(label)].append(label)
        agreeing = max(votes.values(), key=len)
        if item_id in decisions:
            decision = decisions[item_id]
            chosen.append({**decision, "votes": "decided"})
            dropped["overruled by a decision"] += sum(_verdict(label) != _verdict(decision) for label in labels)
        elif policy == "majority" and 2 * len(agreeing) > len(labels):
            chosen.append(_merged(agreeing, len(labels)))
            dropped["outvoted"] += len(labels) - len(agreeing)
        elif policy == "adjudicated" and len(votes) == 1:
            chosen.append(_merged(agreeing, len(labels)))
        else:
            dropped["no majority" if policy == "majority" else "disagreement without a decision"] += len(labels)
    return [(label, items[label["item_id"]]) for label in sorted(chosen, key=lambda label: label["id"])]


def at_one_moment(store):
    """A LabelStore's `snapshot` (its items and log read in one transaction), or anything else with `items()`,
    `current()` and `decisions()` as it is."""
    return store.snapshot() if hasattr(store, "snapshot") else store


def _warn(unreadable: list[tuple[str, str]]):
    if unreadable:
        reasons = Counter(problem for _, problem in unreadable)
        warnings.warn(f"skipped {len(unreadable)} events that cannot be interpreted "
                      f"({', '.join(f'{n} {why}' for why, n in reasons.most_common())}), e.g. event "
                      f"{unreadable[0][0]!r}; they stay in the log. Look at them with store.events(); an undo "
                      f"(store.undo(annotator, event_id=...)) takes one out of force", UnreadableEventWarning,
                      stacklevel=3)


# -- rows ------------------------------------------------------------------------------------------

def _comparisons(pairs: list[tuple[dict, object]], dropped: Counter) -> list[dict]:
    rows = []
    for label, item in pairs:
        if label["choice"] in RATINGS:  # one response: nothing to compare
            continue
        flags = label["flags"] or {}
        left = (label["shown_order"] or [None])[0]
        for winner, loser, kind, margin in _decided_pairs(label, len(item.responses)):
            if item.responses[winner] == item.responses[loser]:
                dropped["identical responses"] += 1
                continue
            rows.append({
                "item_id": item.item_id, "prompt": item.prompt,
                "chosen": item.responses[winner], "rejected": item.responses[loser],
                "chosen_source": item.sources[winner], "rejected_source": item.sources[loser],
                "label": kind, "margin": margin, "annotator": label["annotator"],
                "flags": sorted([f"chosen:{f}" for f in flags.get(letter(winner), [])]
                                + [f"rejected:{f}" for f in flags.get(letter(loser), [])]
                                + (["prompt:flagged"] if label.get("prompt_flagged") else [])),
                "shown_left": None if left is None else left == winner,
                "rationale": label["rationale"], "created_at": label["created_at"], "event_id": label["event_id"],
                "votes": label.get("votes"),
            })
    return rows


def comparisons(store, *, policy: str = "all", include_gold: bool = False, evaluation: bool = False) -> ExportRows:
    """Every pair the labels decide under `policy`, ties and 'both bad' included, oldest label first.

    A pair label gives one row; a ranking of K responses gives K(K-1)/2 rows. `label` is
    'preferred' (chosen beat rejected), 'tie' or 'both_bad'; for the latter two chosen/rejected
    are simply the stored order. `shown_left` says whether chosen was displayed on the left.
    `votes` is None for a single label, '2/3' for a merged verdict, 'decided' for a reviewer's.
    Ratings (thumbs up or down on one response) decide no pair and are left to `ratings`. `evaluation`
    gives the evaluation items' pairs instead (they never train anything).
    """
    dropped = Counter()
    return ExportRows(_comparisons(_labels(store, policy, include_gold, dropped, evaluation), dropped), dropped)


def _decided_pairs(label: dict, k: int):
    """(winner index, loser index, kind, margin) for each pair a label speaks about.

    The margin follows the strength (`rlhflab.labeling.records.MARGINS`). No strength, as an import or a
    person who did not say how much better gives, is margin 0: plain Bradley-Terry, which claims
    no gap the person did not state; a middle margin would invent one.
    """
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


def _ratings(pairs: list[tuple[dict, object]]) -> list[dict]:
    return [{"item_id": item.item_id, "prompt": item.prompt, "response": item.responses[0],
             "label": label["choice"] == "up", "annotator": label["annotator"], "rationale": label["rationale"],
             "flags": sorted((label["flags"] or {}).get(letter(0), [])
                             + (["prompt:flagged"] if label.get("prompt_flagged") else [])),
             "created_at": label["created_at"], "event_id": label["event_id"]}
            for label, item in pairs if label["choice"] in RATINGS]


def ratings(store, *, policy: str = "all", include_gold: bool = False) -> ExportRows:
    """Every rating under `policy` (thumbs up or down on an item's one response), oldest first.

    `label` is True for up; `flags` are the response's flags.
    """
    dropped = Counter()
    return ExportRows(_ratings(_labels(store, policy, include_gold, dropped)), dropped)


def kto_rows(store, include_flagged: bool = True, *, policy: str = "all", include_gold: bool = False) -> ExportRows:
    """prompt / completion / label / source rows for TRL's KTOTrainer, which learns from unpaired verdicts.

    Every rating gives one row (`source` 'rating'); every decided pair gives two (`source` 'pair'):
    chosen as desirable (True) and rejected as undesirable (False), as KTO's paper turns preference
    data into its binary signal (Ethayarajh et al. 2024, "KTO"). Ties and 'both bad' give none.

    Args:
        include_flagged: keep rows whose completion or prompt was flagged (say, harmful); False drops them.
        policy, include_gold: which labels count (see the module docstring).
    """
    dropped = Counter()
    labels = _labels(store, policy, include_gold, dropped)
    out = [{"prompt": r["prompt"], "completion": r["response"], "label": r["label"], "source": "rating",
            "flagged": bool(r["flags"])} for r in _ratings(labels)]
    for row in _comparisons(labels, dropped):
        if row["label"] != "preferred":
            dropped["tie or both bad"] += 1
            continue
        for side, label in (("chosen", True), ("rejected", False)):
            out.append({"prompt": row["prompt"], "completion": row[side], "label": label, "source": "pair",
                        "flagged": any(f.startswith((f"{side}:", "prompt:")) for f in row["flags"])})
    if not include_flagged:
        dropped["flagged completion or prompt"] += sum(r["flagged"] for r in out)
        out = [r for r in out if not r["flagged"]]
    return ExportRows(({k: r[k] for k in ("prompt", "completion", "label", "source")} for r in out), +dropped)


def to_dataframe(store, *, policy: str = "all", include_gold: bool = False):
    """All comparisons (ties and 'both bad' included) as a pandas DataFrame; `.attrs['dropped']` says
    what was left out."""
    import pandas as pd

    rows = comparisons(store, policy=policy, include_gold=include_gold)
    frame = pd.DataFrame([json_row(r) for r in rows], columns=list(rows[0]) if rows else None)
    frame.attrs["dropped"] = dict(rows.dropped)
    return frame


def trl_rows(store, include_flagged: bool = True, *, policy: str = "all", include_gold: bool = False) -> ExportRows:
    """prompt / chosen / rejected / margin / annotator / flags rows for TRL; only decided pairs.

    Args:
        include_flagged: keep pairs whose chosen response or whose prompt was flagged (say, harmful); False
            drops them. A prompt flag by anyone marks the item's every label ('prompt:flagged' in `flags`).
        policy, include_gold: which labels count (see the module docstring).
    """
    rows = comparisons(store, policy=policy, include_gold=include_gold)
    out = ExportRows(dropped=rows.dropped)
    for row in rows:
        if row["label"] != "preferred":
            out.dropped["tie or both bad"] += 1
        elif not include_flagged and any(f.startswith(("chosen:", "prompt:")) for f in row["flags"]):
            out.dropped["flagged chosen or prompt"] += 1
        else:
            out.append({k: row[k] for k in ("prompt", "chosen", "rejected", "margin", "annotator", "flags")})
    return out


def to_trl_dataset(store, include_flagged: bool = True, *, policy: str = "all", include_gold: bool = False):
    """A `datasets.Dataset` of TRL preference rows (see `trl_rows`) in TRL's conversational format: the prompt
    as chat messages, chosen and rejected as one assistant message each, so that TRL's RewardTrainer and
    DPOTrainer apply the model's chat template (and `train_reward_model` reads it back as it is)."""
    from datasets import Dataset

    rows = _decided(trl_rows(store, include_flagged, policy=policy, include_gold=include_gold), store)
    return Dataset.from_list([conversational(r, ("chosen", "rejected")) for r in rows])


def conversational(row: dict, replies: tuple[str, ...]) -> dict:
    """`row` in TRL's (and OpenRLHF's) conversational form: the prompt as chat messages, each of `replies` as
    one assistant message, the other columns as they are."""
    return {**row, "prompt": as_messages(row["prompt"]),
            **{name: [{"role": "assistant", "content": row[name]}] for name in replies}}


def json_prompt(prompt):
    """A prompt as JSON holds it: text as it is, a conversation as its chat messages."""
    return prompt.messages() if isinstance(prompt, Conversation) else prompt


def json_row(row: dict) -> dict:
    return {**row, "prompt": json_prompt(row["prompt"])}


def _decided(rows: ExportRows, store) -> ExportRows:
    """`rows`, refused with what to do when there are none."""
    if not rows:
        raise ValueError(f"{store!r} holds no decided pairs yet ({_dropped_text(rows)}); label some items "
                         f"(or import comparisons) first")
    return rows


def _dropped_text(rows: ExportRows) -> str:
    return ", ".join(f"{n} dropped: {why}" for why, n in rows.dropped.most_common()) or "nothing dropped"


def adjudication_queue(store, *, include_gold: bool = False) -> list[dict]:
    """The items whose annotators disagree (on the choice or ranking; strength aside), for a reviewer.

    Each entry holds the item (prompt, responses, sources), every label in force on it (annotator,
    choice, ranking, strength, flags, rationale, event_id), and the decision in force, if any (None).
    Record a decision with `store.decide(item_id, reviewer, choice=..., rationale=...)`; exports
    under policy="adjudicated" then use it. Gold items are left out unless include_gold=True: their
    answer is known.
    """
    dropped, store = Counter(), at_one_moment(store)
    labels = defaultdict(list)
    for label, item in _labels(store, "all", include_gold, dropped):
        labels[item.item_id].append((label, item))
    decisions = store.decisions()
    queue = []
    for item_id, given in labels.items():
        if len({_verdict(label) for label, _ in given}) < 2:
            continue
        item = given[0][1]
        queue.append({"item_id": item_id, "prompt": item.prompt, "responses": list(item.responses),
                      "sources": list(item.sources),
                      "labels": [{k: label[k] for k in ("annotator", "choice", "ranking", "strength", "flags",
                                                        "rationale", "event_id")} for label, _ in given],
                      "decision": decisions.get(item_id)})
    return queue


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """JSON lines (UTF-8), one row each; returns the path.

    The rows go to a temporary file beside `path`, which then replaces it in one step: a kill or an error
    midway leaves the earlier file as it was, never a truncated one that still parses."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def to_jsonl(store, path: str | Path, *, policy: str = "all", include_gold: bool = False) -> Path:
    """All comparisons (see `comparisons`) as JSON lines (UTF-8), a conversation as its chat messages; returns
    the path. `read_comparisons` reads the file back."""
    return write_jsonl(map(json_row, comparisons(store, policy=policy, include_gold=include_gold)), path)


def to_kto_jsonl(store, path: str | Path, include_flagged: bool = True, *, policy: str = "all",
                 include_gold: bool = False) -> Path:
    """KTO rows (see `kto_rows`) as JSON lines (UTF-8) for TRL's KTOTrainer, in its conversational format (the
    prompt as chat messages, the completion as one assistant message); returns the path."""
    return write_jsonl((conversational(r, ("completion",)) for r in kto_rows(
        store, include_flagged, policy=policy, include_gold=include_gold)), path)


# -- for RL frameworks that scale further: OpenRLHF and verl ------------------------------------

def prompts_of(source) -> list:
    """The distinct prompts (text or Conversations) of a LabelStore's items (queue order), or of a list."""
    prompts = [item.prompt for item in source.items().values()] if hasattr(source, "items") else list(source)
    if not prompts or not all(isinstance(p, Conversation) or (isinstance(p, str) and p.strip()) for p in prompts):
        raise ValueError("give a LabelStore with items, or a non-empty list of prompts (non-empty text or "
                         "Conversations)")
    return list(dict.fromkeys(prompts))


def to_openrlhf(store, path: str | Path, include_flagged: bool = True, *, chat: bool = True, policy: str = "all",
                include_gold: bool = False) -> Path:
    """Decided pairs (see `trl_rows`) as JSONL for OpenRLHF's reward-model and DPO trainers; returns the path.

    Each line holds prompt / chosen / rejected and the margin. With `chat` (the default) they are chat
    messages, the prompt every turn of its conversation and each reply one assistant message: train with
    `--dataset <path> --prompt_key prompt --chosen_key chosen --rejected_key rejected --apply_chat_template`,
    so the model's own template is applied. `chat=False` writes plain text (a conversation as
    `Conversation.text`), for a model without a chat template; OpenRLHF then joins prompt and reply with
    nothing between them unless given an `--input_template` such as "{}\\n\\nAssistant: ".
    """
    rows = _decided(trl_rows(store, include_flagged, policy=policy, include_gold=include_gold), store)
    rows = ({k: r[k] for k in ("prompt", "chosen", "rejected", "margin")} for r in rows)
    return write_jsonl((conversational(r, ("chosen", "rejected")) if chat else {**r, "prompt": prompt_text(r["prompt"])}
                        for r in rows), path)


def to_openrlhf_prompts(source, path: str | Path, *, chat: bool = True) -> Path:
    """Prompts as JSONL for OpenRLHF's PPO trainer, `{"input": ...}` lines (`--input_key input`): chat messages
    for `--apply_chat_template` (the default), or plain text with `chat=False`."""
    return write_jsonl(({"input": as_messages(p) if chat else prompt_text(p)} for p in prompts_of(source)), path)


def to_verl_prompts(source, path: str | Path, data_source: str = "rlhflab", split: str = "train") -> Path:
    """Prompts as a verl RL dataset: a parquet file in verl's schema.

    Columns: data_source, prompt (chat messages: every turn of a conversation), ability, reward_model
    ({'style': 'model', 'ground_truth': ''}: scored by a reward model, not a rule) and extra_info
    ({'split', 'index'}).
    """
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"data_source": data_source, "prompt": as_messages(p), "ability": "chat",
                   "reward_model": {"style": "model", "ground_truth": ""},
                   "extra_info": {"split": split, "index": i}} for i, p in enumerate(prompts_of(source))]
                 ).to_parquet(path, index=False)
    return path
