"""Active learning: choose which pairs people label next.

Labels are the expensive part of RLHF, so each batch sent to annotators mixes three kinds of pair:

- **uncertain**: pairs the current reward model cannot tell apart, P(a beats b) = sigmoid(r_a - r_b)
  nearest 0.5 (uncertainty sampling, Lewis & Gale 1994); or, given an ensemble of reward models,
  pairs on which the members' P(a beats b) vary most (Christiano et al. 2017, sec. 2.2.4). One
  model's margin also picks pairs that are simply close, which people more often call a tie; the
  ensemble's disagreement picks pairs the models have not learnt yet;
- **disagreement**: pairs whose annotators chose differently, queued again for one more vote;
- **random**: a uniform share, so the labeled set stays an unbiased sample of what the policy writes
  and the reward model's held-out accuracy can still be trusted.

`choose_items` returns the batch; `queue_next` puts it in the label store, where the labeling
widgets (and `label_with_gold`) pick it up. Each chosen item's `meta` says why it was chosen.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass

import torch

from .records import Item

__all__ = ["ActiveConfig", "preference_probability", "preference_uncertainty", "review_items",
           "choose_items", "queue_next"]


@dataclass
class ActiveConfig:
    """How a batch of pairs to label is made up."""

    random_share: float = 0.25  # share of the batch drawn uniformly from the pool (keeps the data unbiased)
    review_share: float = 0.25  # at most this share re-queues pairs whose annotators disagreed
    seed: int = 0  # seeds the random share

    def __post_init__(self):
        for name in ("random_share", "review_share"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} is a share of the batch between 0 and 1, not {share}")


def preference_probability(reward, items: list[Item]) -> torch.Tensor:
    """P(a beats b) = sigmoid(r_a - r_b) per pair under one reward model (Bradley-Terry): (N,).

    r is the raw score, the scale the model was trained on: normalised scores (divided by the std of SFT's)
    would give another probability, and put the members of an ensemble on different scales."""
    if any(len(item.responses) != 2 for item in items):
        raise ValueError("uncertainty sampling compares pairs; give items with exactly 2 responses")
    prompts = [item.prompt for item in items]
    raw = {"normalized": False} if "normalized" in inspect.signature(reward.score).parameters else {}
    score_a = reward.score(prompts, [item.responses[0] for item in items], **raw)
    score_b = reward.score(prompts, [item.responses[1] for item in items], **raw)
    return torch.sigmoid(score_a - score_b)


def preference_uncertainty(reward, items: list[Item]) -> torch.Tensor:
    """How unsure the reward model is of each pair, from 0 (sure) to 1: given one model,
    1 - |2 P(a beats b) - 1|; given an ensemble (a list of models), 4 x the variance of the members'
    P(a beats b), which is 1 when half are sure of a and half of b."""
    if isinstance(reward, (list, tuple)):
        if len(reward) < 2:
            raise ValueError(f"an ensemble needs 2 or more reward models to disagree, not {len(reward)}; "
                             "pass a single reward model itself (not in a list) for its own uncertainty")
        probabilities = torch.stack([preference_probability(member, items) for member in reward])
        return 4.0 * probabilities.var(dim=0, correction=0)
    return 1.0 - (2.0 * preference_probability(reward, items) - 1.0).abs()  # (N,)


def review_items(store) -> list[Item]:
    """Items whose annotators chose differently, as new items asking for one more vote.

    Each keeps its prompt and responses and gets the item id '<original id>:review<votes>', so it
    enters the queue once per disagreement round; its labels then count with the original's.
    """
    from .metrics import disagreements

    items = store.items()
    reviews = []
    for row in disagreements(store).itertuples():
        original = items[row.item_id]
        reviews.append(Item(original.prompt, original.responses, original.sources,
                            meta={"reason": "disagreement", "review_of": row.item_id, "votes": row.votes},
                            item_id=f"{row.item_id.split(':')[0]}:review{len(row.votes)}"))
    return reviews


def choose_items(pool: list[Item], n: int, reward=None, store=None, config: ActiveConfig | None = None) -> list[Item]:
    """`n` items to label next, drawn from `pool` (and from the store's disagreements).

    Args:
        pool: candidate pairs, e.g. two samples of the current policy per prompt.
        n: how many items to return.
        reward: the current reward model (anything with `score`), or a list of them (an ensemble,
            see `preference_uncertainty`); without one the batch is all random (there is nothing
            to be uncertain with yet).
        store: a LabelStore whose disagreements get up to `review_share` of the batch.
        config: the shares.

    Examples:
        >>> batch = choose_items(pool, 64, reward=reward_model, store=store)  # doctest: +SKIP
        >>> Counter(item.meta["reason"] for item in batch)  # doctest: +SKIP
        Counter({'uncertain': 36, 'random': 16, 'disagreement': 12})
    """
    config = config or ActiveConfig()
    known = set(store.items()) if store is not None else set()
    reviews = [item for item in (review_items(store) if store is not None else []) if item.item_id not in known]
    chosen = reviews[:int(config.review_share * n)]
    fresh = [item for item in pool if item.item_id not in known]
    rng = random.Random(f"active:{config.seed}")
    n_left = n - len(chosen)
    n_random = n_left if reward is None else min(round(config.random_share * n), n_left)
    picked = set(rng.sample(range(len(fresh)), min(n_random, len(fresh))))
    chosen += [_with_meta(fresh[i], reason="random") for i in sorted(picked)]
    rest = [i for i in range(len(fresh)) if i not in picked]
    if reward is not None and rest and len(chosen) < n:
        uncertainty = preference_uncertainty(reward, [fresh[i] for i in rest])
        order = uncertainty.argsort(descending=True)[: n - len(chosen)]
        chosen += [_with_meta(fresh[rest[j]], reason="uncertain", uncertainty=round(uncertainty[j].item(), 4))
                   for j in order.tolist()]
    return chosen


def queue_next(store, pool: list[Item], n: int, reward=None, config: ActiveConfig | None = None) -> list[Item]:
    """Choose `n` items (see `choose_items`) and add them to the store's labeling queue; returns them."""
    return store.add_items(choose_items(pool, n, reward=reward, store=store, config=config))


def _with_meta(item: Item, **meta) -> Item:
    return Item(item.prompt, item.responses, item.sources, item.gold, {**item.meta, **meta}, item.item_id)
