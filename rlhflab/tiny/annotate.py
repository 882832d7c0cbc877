"""Scripted annotation by the tiny world's truth: its candidate items, gold labels through the store
API, and gold-labelled comparison rows.

    world_items       items of the world's own candidates, from 'policies' of known quality
    label_with_gold   labels a store's queue as the gold annotator would, through the same API people use
    gold_comparisons  gold-labelled rows of world candidates plus a policy's own sample pairs
    gold_ratings      thumbs up / down rows of a policy's own samples, one per prompt

Nothing here trains: a policy is only asked to `generate`.
"""

from __future__ import annotations

import random
import uuid

from ..labeling.candidates import sample_pairs
from ..labeling.records import Item, letter
from ..labeling.store import LabelStore
from .gold import GoldAnnotator
from .world import TinyWorld

__all__ = ["world_items", "label_with_gold", "gold_comparisons", "gold_ratings", "calibration_items"]


def world_items(world, n: int, k: int = 2, seed: int = 0, p_better: tuple[float, ...] = (0.7, 0.3)) -> list[Item]:
    """`n` items of the tiny world, each with `k` candidates; response i comes from a 'policy' whose
    every quality axis is good with probability p_better[i % len(p_better)] (the source name says which)."""
    rng = random.Random(f"world_items:{seed}")
    items = []
    for q in world.questions("train", n, seed=seed):
        ps = [p_better[i % len(p_better)] for i in range(k)]
        items.append(Item(q.text, tuple(world.random_candidate(q, rng, p).text for p in ps),
                          tuple(f"world-p{p}" for p in ps)))
    return items



def label_with_gold(store: LabelStore, gold, annotator: str = "gold", n: int | None = None, seed: int = 0) -> list[str]:
    """Label up to `n` items (all available when None) as the gold annotator would, through the store API.

    Pairs are shown in a random left/right order and judged by `gold.compare` (whose `noise` flips
    some verdicts); rankings sort by gold score; a lone response is rated by `gold.rate`.
    Response flags follow the gold score's parts
    (a wrong fact -> 'false fact', another topic -> 'off-topic'). Returns the event ids.
    """
    rng = random.Random(f"label_with_gold:{seed}:{annotator}")
    session, events = f"gold-{uuid.uuid4().hex[:8]}", []
    while n is None or len(events) < n:
        item = store.next_item(annotator)
        if item is None:
            break
        order = list(range(len(item.responses)))
        rng.shuffle(order)
        flags = {letter(i): _gold_flags(gold, item.prompt, r) for i, r in enumerate(item.responses)}
        common = {"session": session, "shown_order": order, "flags": {k: v for k, v in flags.items() if v}}
        if len(item.responses) == 1:
            choice = "up" if gold.rate(item.prompt, item.responses[0]) else "down"
            events.append(store.record(item.item_id, annotator, choice=choice, **common))
        elif len(item.responses) == 2:
            verdict = gold.compare(item.prompt, item.responses[order[0]], item.responses[order[1]])
            if verdict.choice in ("a", "b"):  # gold's 'a' is the left response
                stored = "ab"[order[0 if verdict.choice == "a" else 1]]
                events.append(store.record(item.item_id, annotator, choice=stored, strength=verdict.strength, **common))
            else:
                events.append(store.record(item.item_id, annotator, choice=verdict.choice, **common))
        else:
            scores = [gold.score(item.prompt, r) for r in item.responses]
            ranking = [1 + sum(other > mine for other in scores) for mine in scores]
            events.append(store.record(item.item_id, annotator, ranking=ranking, **common))
    return events


def _gold_flags(gold, prompt: str, response: str) -> list[str]:
    try:
        parts = gold.axes(prompt, response)
    except ValueError:  # not a prompt of the tiny world: gold has no opinion on flags
        return []
    return [name for name, hit in (("false fact", parts["false_fact"] < 0), ("off-topic", parts["on_topic"] == 0))
            if hit]


def gold_comparisons(world: TinyWorld, gold: GoldAnnotator, policy, split: str, n_world: int, n_policy: int,
                     seed: int) -> list[dict]:
    """Gold-labelled preference rows: the world's candidates plus `policy`'s own sample pairs.

    Only world candidates would teach a reward model nothing about the broken text a drifting
    policy writes, and PPO would exploit that; labelling the policy's samples is what RLHF does.
    """
    policy_prompts = [q.text for q in world.questions(split, n_policy, seed=seed + 1)]
    return (gold.preferences(*world.candidate_pairs(split, n_world, seed=seed))
            + gold.preferences(*sample_pairs(policy, policy_prompts, seed=seed + 2)))


def gold_ratings(world: TinyWorld, gold: GoldAnnotator, policy, split: str, n: int, seed: int) -> list[dict]:
    """prompt / completion / label rows: one sample of `policy` per prompt, rated by `gold.rate`.
    A rating reads one response where a comparison reads two: KTO's cheaper signal."""
    prompts = [q.text for q in world.questions(split, n, seed=seed + 3)]
    return [{"prompt": p, "completion": r, "label": gold.rate(p, r)}
            for p, r in zip(prompts, policy.generate(prompts, seed=seed + 4))]


def calibration_items(world: TinyWorld, gold: GoldAnnotator, n: int, seed: int = 99) -> list[Item]:
    """`n` world pairs whose answer is known (gold's verdict), mixed into a queue to measure annotators."""
    return [Item(i.prompt, i.responses, i.sources, gold=gold.compare(i.prompt, *i.responses).choice)
            for i in world_items(world, n, seed=seed)]
