"""A task: the prompts a policy learns on and is judged on, and who judges. Every stage and the loop take one.

A user's task is a `Task`: train and held-out prompts, optional demonstrations for SFT, optional held-out
comparisons that test a reward model, and an optional judge. The tiny world is one more task
(`rlhflab.tiny.task.WorldTask`), the one whose judge is a known gold annotator. Both answer:

    draw(split, n, seed)              n prompts of 'train' or 'heldout'
    sft_rows(n, seed)                 prompt / response demonstrations for SFT
    outcomes(prompts, first, second)  the judge's verdict per prompt: 1 first is better, 0 second, 0.5 tie
    preferences(prompts, a, b)        prompt / chosen / rejected rows by the judge (ties give none)
    reward_pairs(n, seed)             held-out comparisons, never trained on, that test a reward model
    label(store, annotator, seed)     the judge labels what people left in the store's queue
    judge_name                        the prefix of the judge's metrics: 'gold/...', 'judge/...'
    gold                              an annotator whose scores are the truth (`score(prompt, response)`), or None

A judge is what a bigger model, an API or a rule gives: `judge(prompts, first, second)` returns, per pair,
the index of the better answer (0: first, 1: second), the convention of TRL 0.x's `BasePairwiseJudge`, or
0.5 for a tie. A prompt reaches the judge as the task holds it: text, or a `Conversation` (its
`.messages()` are the chat turns). Without a judge, people label in the widget, and a task can still train and export.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..labeling.records import DEMONSTRATION_COLUMNS, Prompt, as_prompt, as_rows, read_comparisons, read_records

__all__ = ["Task"]

Judge = Callable[[list[Prompt], list[str], list[str]], Sequence[float]]
SPLITS = ("train", "heldout")


@dataclass
class Task:
    """Your prompts, demonstrations, comparisons and judge, as the loop and every stage take them.

    Args:
        prompts: train prompts: what SFT, the labeling queue and the policy update draw from.
        heldout: held-out prompts: every evaluation answers these, and nothing trains on them.
        demonstrations: prompt / response rows for SFT (a path, DataFrame, Dataset or list of dicts); none:
            SFT is the base model as it is.
        comparisons: held-out prompt / chosen / rejected rows (the same kinds) that test a reward model; never
            trained on.
        judge: `judge(prompts, first, second)` -> per pair 0 (first is better), 1 (second) or 0.5 (tie).
        judge_name: the prefix of the judge's metrics, e.g. 'judge/win_rate_vs_sft'.

    Examples:
        >>> task = Task.from_data(["Say hi.", "Name a fruit.", "Count to three.", "Spell cat."], heldout_share=0.25)
        >>> len(task.prompts), len(task.heldout)
        (3, 1)
    """

    prompts: list[Prompt]
    heldout: list[Prompt]
    demonstrations: list[dict] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)
    judge: Judge | None = None
    judge_name: str = "judge"
    gold = None  # no answer of a task of your own has a known true score

    def __post_init__(self):
        for name in ("prompts", "heldout"):
            prompts = getattr(self, name)
            if not prompts:
                raise ValueError(f"the task has no {name}; give at least one prompt (Task.from_data splits one list)")
            setattr(self, name, [as_prompt(p, f"the task's {name}[{i}]") for i, p in enumerate(prompts)])
        overlap = set(self.prompts) & set(self.heldout)
        if overlap:
            raise ValueError(f"{len(overlap)} prompts are both train and held-out (e.g. {next(iter(overlap))!r}); "
                             "held-out prompts must be unseen in training")
        demonstrations, what = read_records(self.demonstrations)
        what = "demonstrations" if what == "data" else what
        self.demonstrations = as_rows(demonstrations, DEMONSTRATION_COLUMNS, what=what) if len(demonstrations) else []
        comparisons, _ = read_records(self.comparisons)
        self.comparisons = read_comparisons(comparisons) if len(comparisons) else []

    @classmethod
    def from_data(cls, prompts, heldout_share: float = 0.1, *, column: str = "prompt", seed: int = 0,
                  **fields) -> Task:
        """A task from one collection of prompts, `heldout_share` of them held out (at random, seeded).

        Args:
            prompts: a .csv / .jsonl(.gz) path, a pandas DataFrame, a datasets.Dataset, a list of dicts
                (the prompt in `column`) or a list of prompts; a prompt is text or a list of chat messages
                (`rlhflab.labeling.records.as_prompt`). Repeated prompts are kept once.
            heldout_share: share of the distinct prompts held out for evaluation (at least one).
            fields: the other fields of `Task` (demonstrations, comparisons, judge, judge_name).
        """
        if not 0 < heldout_share < 1:
            raise ValueError(f"heldout_share must be between 0 and 1, not {heldout_share}")
        texts = distinct_prompts(prompts, column)
        if len(texts) < 2:
            raise ValueError(f"a task needs at least 2 distinct prompts (one to train, one to hold out); "
                             f"found {len(texts)}")
        random.Random(f"task:{seed}").shuffle(texts)
        n_heldout = min(len(texts) - 1, max(1, round(len(texts) * heldout_share)))
        return cls(prompts=texts[n_heldout:], heldout=texts[:n_heldout], **fields)

    # -- prompts and demonstrations ----------------------------------------------------------------

    def draw(self, split: str, n: int, seed: int) -> list[str]:
        """`n` train prompts (repeated in a new order when there are fewer), or up to `n` held-out ones
        (never repeated: a repeat would count one answer twice in an evaluation)."""
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
        pool = list(self.prompts if split == "train" else self.heldout)
        rng = random.Random(f"draw:{split}:{seed}")
        if split == "heldout" or n <= len(pool):
            return rng.sample(pool, min(n, len(pool)))
        drawn = []
        while len(drawn) < n:
            rng.shuffle(pool)
            drawn += pool[:n - len(drawn)]
        return drawn

    def sft_rows(self, n: int, seed: int) -> list[dict]:
        """Up to `n` demonstrations, in a seeded order; none when the task has none."""
        rows = list(self.demonstrations)
        random.Random(f"sft:{seed}").shuffle(rows)
        return rows[:n]

    # -- the judge -----------------------------------------------------------------------------------

    def outcomes(self, prompts: list[str], first: list[str], second: list[str]) -> list[float]:
        """Per prompt, 1.0 when the judge prefers `first`, 0.0 when it prefers `second`, 0.5 for a tie."""
        if self.judge is None:
            raise ValueError("this task has no judge: pass Task(judge=...) (a function of prompts, first, second), "
                             "or evaluate with people in the widget")
        verdicts = list(self.judge(list(prompts), list(first), list(second)))
        name = getattr(self.judge, "__name__", type(self.judge).__name__)
        if len(verdicts) != len(prompts):
            raise ValueError(f"the judge {name} returned {len(verdicts)} verdicts for {len(prompts)} pairs; "
                             "it must return one per pair")
        bad = next((v for v in verdicts if v not in (0, 0.5, 1)), None)
        if bad is not None:
            raise ValueError(f"the judge {name} returned {bad!r}; each verdict must be 0 (first is better), "
                             "1 (second is better) or 0.5 (a tie)")
        return [1.0 - float(v) for v in verdicts]

    def preferences(self, prompts: list[str], first: list[str], second: list[str]) -> list[dict]:
        """prompt / chosen / rejected rows by the judge; a tie says nothing about which is better: no row."""
        rows = []
        for prompt, a, b, outcome in zip(prompts, first, second, self.outcomes(prompts, first, second)):
            if outcome != 0.5:
                chosen, rejected = (a, b) if outcome == 1.0 else (b, a)
                rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        return rows

    def reward_pairs(self, n: int, seed: int) -> list[dict]:
        """Up to `n` of the held-out comparisons (the task's own, e.g. people's), in a seeded order."""
        rows = list(self.comparisons)
        random.Random(f"reward_pairs:{seed}").shuffle(rows)
        return rows[:n]

    def label(self, store, annotator: str = "judge", seed: int = 0) -> int:
        """The judge labels every pair in `store`'s queue that people left; returns how many it labeled."""
        if self.judge is None:
            remaining = store.progress(annotator)["remaining"]
            if remaining:
                raise ValueError(f"{remaining} items wait for labels and the task has no judge: label them in the "
                                 "widget (PairwiseLabeler(store, 'your name')), or give the task a judge")
            return 0
        session, rng, labeled = f"{annotator}-{uuid.uuid4().hex[:8]}", random.Random(f"label:{seed}"), 0
        while (item := store.next_item(annotator)) is not None:
            if len(item.responses) != 2:
                raise ValueError(f"item {item.item_id} has {len(item.responses)} responses; a judge labels pairs "
                                 "only: label rankings and ratings in the widget")
            order = [0, 1] if rng.random() < 0.5 else [1, 0]  # the judge sees a random side first, as people do
            shown = [item.responses[i] for i in order]
            outcome = self.outcomes([item.prompt], shown[:1], shown[1:])[0]
            choice = "tie" if outcome == 0.5 else "ab"[order[0] if outcome == 1.0 else order[1]]
            store.record(item.item_id, annotator, choice=choice, session=session, shown_order=order)
            labeled += 1
        return labeled


def distinct_prompts(source, column: str = "prompt") -> list[Prompt]:
    """The distinct prompts (text or conversations) of a path, DataFrame, Dataset, list of dicts (the prompt in
    `column`) or list of prompts, in first-seen order."""
    if isinstance(source, (list, tuple)) and not any(isinstance(p, Mapping) for p in source):
        rows = as_rows([{"prompt": p} for p in source], ["prompt"], what="prompts")
    else:
        rows, what = read_records(source)
        rows = as_rows(rows, ["prompt"], {"prompt": column}, what=what)
    return list(dict.fromkeys(row["prompt"] for row in rows))
