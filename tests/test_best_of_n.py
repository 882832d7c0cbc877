"""Best-of-n: picks the reward model's favourite, gains gold as n grows, KL in closed form."""

import math

import pytest
import torch

from rlhflab import load_policy
from rlhflab.trainers.best_of_n import BestOfN, best_of_n_curve, kl_of_best_of_n, sample_best_of_n
from rlhflab.trainers.reward import GoldReward
from rlhflab.trainers.reward import load_reward_model


def test_kl_closed_form():
    assert kl_of_best_of_n(1) == 0.0
    assert kl_of_best_of_n(4) == pytest.approx(math.log(4) - 0.75)
    assert all(kl_of_best_of_n(n) < kl_of_best_of_n(2 * n) < math.log(2 * n) for n in (1, 2, 8, 64))


def test_best_of_the_first_n_samples():
    draw = BestOfN(["p", "q"], [["a", "b", "c"], ["d", "e", "f"]], torch.tensor([[0.0, 2.0, 5.0], [3.0, 1.0, 0.0]]))
    assert draw.best(1) == ["a", "d"] and draw.best(2) == ["b", "d"] and draw.best() == ["c", "d"]
    assert draw.best_scores(2).tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match="between 1 and the 3 samples"):
        draw.best(4)


def test_more_samples_judged_by_gold_win_more(world, gold):
    prompts = [q.text for q in world.questions("heldout", 24, seed=3)]
    policy = load_policy("tiny")
    draw = sample_best_of_n(policy, GoldReward(gold), prompts, 8, max_new_tokens=32, seed=1)
    baseline = policy.generate(prompts, max_new_tokens=32, seed=99)
    curve = best_of_n_curve(draw, gold, baseline)
    assert curve["n"].tolist() == [1, 2, 4, 8]
    assert curve["gold/mean"].is_monotonic_increasing  # gold is the reward here, so each n can only gain
    assert curve["gold/win_rate_vs_sft"].iloc[-1] > 0.75 > curve["gold/win_rate_vs_sft"].iloc[0] - 0.25


def test_a_trained_reward_model_picks_better_than_chance(recipe, world, gold):
    config, sft_dir, reward_dir, _ = recipe
    prompts = [q.text for q in world.questions("heldout", 64, seed=4)]  # 32 gave 0.59 once against ~0.7 typical
    sft = load_policy("tiny", adapter=str(sft_dir))
    draw = sample_best_of_n(sft, load_reward_model(str(reward_dir)), prompts, 8, max_new_tokens=32, seed=2)
    baseline = sft.generate(prompts, max_new_tokens=32, seed=98)
    curve = best_of_n_curve(draw, gold, baseline, ns=[1, 8])
    assert curve["gold/win_rate_vs_sft"].iloc[1] > 0.6
    assert curve["reward/mean"].iloc[1] > curve["reward/mean"].iloc[0]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="n >= 1"):
        sample_best_of_n(None, None, ["p"], 0)
    with pytest.raises(ValueError, match="at least one prompt"):
        sample_best_of_n(None, None, [], 4)
