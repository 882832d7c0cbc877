"""Active learning: uncertain pairs first, a random share kept, disagreements asked again, all through the store."""

import pytest
import torch

from rlhflab.labeling.active import (ActiveConfig, choose_items, preference_probability, preference_uncertainty,
                                     queue_next, review_items)
from rlhflab.labeling.records import Item
from rlhflab.labeling.store import LabelStore, StoreConfig
from rlhflab.tiny.annotate import label_with_gold, world_items


class LengthReward:
    """A stand-in reward model: longer responses score higher, so pairs of equal length are the unsure ones."""

    def score(self, prompts, responses):
        return torch.tensor([float(len(r)) for r in responses])


def pool_of(n: int) -> list[Item]:
    # pair i differs in length by i characters: pair 0 is the least certain, pair n-1 the most
    return [Item(f"prompt {i}", ("x" * 20, "x" * (20 + i)), ("p", "q")) for i in range(n)]


def test_uncertainty_is_highest_where_scores_tie():
    uncertainty = preference_uncertainty(LengthReward(), pool_of(5))
    assert uncertainty[0] == pytest.approx(1.0)
    assert torch.all(uncertainty[:-1] > uncertainty[1:])


class NormalisedReward:
    """A reward model's two scales: raw (what Bradley-Terry was fitted on) and normalised by SFT's std of 4."""

    def score(self, prompts, responses, normalized=True):
        raw = torch.tensor([float(len(r)) for r in responses])
        return raw / 4.0 if normalized else raw


def test_the_preference_probability_is_the_bradley_terry_one_on_raw_scores():
    """Issue 29, defect 9: P(a beats b) was sigmoid of the normalised difference (dr / std), not the
    Bradley-Terry probability the reward model was trained to give."""
    probability = preference_probability(NormalisedReward(), [Item("p", ("x" * 20, "x" * 18))])
    assert probability.item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    assert preference_probability(LengthReward(), [Item("p", ("x" * 20, "x" * 18))]).item() == pytest.approx(
        probability.item())  # a reward without the keyword (a function, say) is taken as it scores


def test_batch_mixes_the_least_certain_pairs_with_a_random_share():
    pool = pool_of(40)
    batch = choose_items(pool, 8, reward=LengthReward(), config=ActiveConfig(random_share=0.25, seed=3))
    reasons = [item.meta["reason"] for item in batch]
    assert reasons.count("random") == 2 and reasons.count("uncertain") == 6
    uncertain = [item for item in batch if item.meta["reason"] == "uncertain"]
    random_ids = {item.item_id for item in batch if item.meta["reason"] == "random"}
    expected = [item.item_id for item in pool if item.item_id not in random_ids][:6]  # pool is sorted by certainty
    assert [item.item_id for item in uncertain] == expected
    assert len({item.item_id for item in batch}) == 8


class PrefersLonger:
    """A stand-in ensemble member: sure that the longer of two responses is better, by `confidence` per character."""

    def __init__(self, confidence: float):
        self.confidence = confidence

    def score(self, prompts, responses):
        return torch.tensor([self.confidence * len(r) for r in responses])


def test_an_ensemble_picks_the_pairs_its_members_disagree_on_not_the_close_ones():
    """Christiano et al. 2017: pairs where the members' P(a beats b) vary most. One model's margin would
    pick the closest pairs (pair 0 here, where every member says 50%); the ensemble picks pair 4, the
    pair its members judge most differently."""
    ensemble = [PrefersLonger(0.0), PrefersLonger(1.0), PrefersLonger(-1.0)]
    pool = pool_of(5)
    disagreement = preference_uncertainty(ensemble, pool)
    assert disagreement[0] == pytest.approx(0.0) and disagreement.argmax() == 4
    assert 0.0 <= disagreement.min() and disagreement.max() <= 1.0
    batch = choose_items(pool, 2, reward=ensemble, config=ActiveConfig(random_share=0.0))
    assert [item.item_id for item in batch] == [pool[4].item_id, pool[3].item_id]
    assert preference_uncertainty([PrefersLonger(1.0)] * 3, pool).max() == pytest.approx(0.0)  # all agree
    with pytest.raises(ValueError, match="an ensemble needs 2 or more reward models"):
        preference_uncertainty([PrefersLonger(1.0)], pool)


def test_without_a_reward_model_the_batch_is_random_and_skips_stored_items(tmp_path):
    store = LabelStore(tmp_path / "labels.db")
    pool = pool_of(30)
    store.add_items(pool[:10])
    batch = choose_items(pool, 12, store=store)
    assert len(batch) == 12 and {item.meta["reason"] for item in batch} == {"random"}
    assert not {item.item_id for item in batch} & {item.item_id for item in pool[:10]}


def test_disagreements_are_queued_again_and_gold_labels_the_whole_queue(world, gold, tmp_path):
    store = LabelStore(tmp_path / "labels.db", config=StoreConfig(overlap=2))
    [first, second] = store.add_items(world_items(world, 2, seed=5))
    store.record(first.item_id, "ada", choice="a", strength="clearly")
    store.record(first.item_id, "bob", choice="b", strength="slightly")
    store.record(second.item_id, "ada", choice="a", strength="clearly")
    store.record(second.item_id, "bob", choice="a", strength="much")
    [review] = review_items(store)
    assert review.item_id == f"{first.item_id}:review2" and review.responses == first.responses
    queued = queue_next(store, world_items(world, 10, seed=7), 4, reward=LengthReward(),
                        config=ActiveConfig(review_share=0.25))
    assert [item.meta["reason"] for item in queued].count("disagreement") == 1
    assert len(queued) == 4 and len(store.items()) == 2 + 4
    assert queue_next(store, [], 4, reward=LengthReward()) == []  # the review is queued once only
    label_with_gold(store, gold, annotator="carol")
    assert store.progress("carol")["remaining"] == 0


def test_shares_are_checked():
    with pytest.raises(ValueError, match="random_share"):
        ActiveConfig(random_share=1.5)
    with pytest.raises(ValueError, match="exactly 2 responses"):
        preference_uncertainty(LengthReward(), [Item("p", ("a", "b", "c"))])
