"""Programmatic rewards: metric rewards score what they say, weighted sums add up, a plain function
drives PPO and best-of-n, and a function that returns the wrong thing is named in the error."""

import pytest
import torch

from rlhflab import load_policy
from rlhflab.trainers.best_of_n import best_of_n_curve, sample_best_of_n
from rlhflab.trainers.ppo import PPOConfig, train_ppo
from rlhflab.trainers.reward import GoldReward, load_reward_model
from rlhflab.trainers.reward_functions import (FunctionReward, WeightedReward, as_reward, chrf_reward, length_reward,
                                               regex_reward)


def test_metric_rewards_score_what_they_say():
    assert length_reward(4).score(["p", "p", "p"], ["a b c d", "a b", ""]).tolist() == [0.0, -0.5, -1.0]
    assert regex_reward(r"\bfox\b").score(["p", "p"], ["The FOX is red.", "foxes"]).tolist() == [1.0, 0.0]
    chrf = chrf_reward({"What color is the fox?": "The fox is red."})
    same, other = chrf.score(["What color is the fox?"] * 2, ["The fox is red.", "zzz"]).tolist()
    assert same == pytest.approx(1.0) and other < 0.05
    with pytest.raises(KeyError, match="no reference answer for the prompt 'Who'"):
        chrf.score(["Who"], ["x"])


def test_as_reward_takes_models_gold_and_functions(gold):
    assert isinstance(as_reward(gold), GoldReward)
    model = load_reward_model("tiny")
    assert as_reward(model) is model
    assert isinstance(as_reward(lambda prompts, responses: [0.0] * len(responses)), FunctionReward)
    with pytest.raises(TypeError, match="a function f\\(prompts, responses\\)"):
        as_reward(3.0)


def test_weighted_sum_of_a_function_and_a_reward_model_is_the_weighted_scores():
    model = load_reward_model("tiny")
    prompts, responses = ["What color is the fox?"] * 2, ["The fox is red.", "Blue, I think, or maybe red."]
    reward = WeightedReward((0.5, model), (2.0, length_reward(4)))
    expected = 0.5 * model.score(prompts, responses) + 2.0 * torch.tensor([0.0, -0.5])
    assert torch.allclose(reward.score(prompts, responses), expected)
    assert reward.__name__.startswith("0.5*") and "2*length_reward(target=4)" in reward.__name__
    with pytest.raises(TypeError, match="a \\(weight, reward\\) pair"):
        WeightedReward(model)


def test_chrf_to_reference_answers_picks_what_gold_prefers(world, gold):
    """Best-of-8 by a task metric alone (chrF against the world's demonstrations) wins on gold."""
    questions = world.questions("heldout", 32, seed=4)
    references = {q.text: world.demonstration(q) for q in questions}
    prompts = list(references)
    policy = load_policy("tiny")
    draw = sample_best_of_n(policy, chrf_reward(references), prompts, 8, max_new_tokens=32, seed=1)
    curve = best_of_n_curve(draw, gold, policy.generate(prompts, max_new_tokens=32, seed=99), ns=[1, 8])
    assert curve["gold/mean"].iloc[1] > curve["gold/mean"].iloc[0] + 0.3, curve


def test_a_function_and_a_weighted_sum_drive_ppo_and_a_broken_function_is_named(world, gold, tmp_path):
    prompts = [q.text for q in world.questions("train", 16, seed=4)]
    config = PPOConfig(output_dir=str(tmp_path), steps=1, batch_size=4, mini_batch_size=2, ppo_epochs=1,
                       response_length=12, save_every=100)

    def short_answers(prompts, responses):
        return [-len(r.split()) / 12 for r in responses]

    for reward in (short_answers, WeightedReward((1.0, short_answers), (0.5, gold))):
        result = train_ppo(load_policy("tiny", lora=True), prompts, reward, config, gold=gold)
        assert torch.isfinite(torch.tensor(result.history[0]["objective/scores"]))

    def one_score_short(prompts, responses):
        return [0.0] * (len(responses) - 1)

    with pytest.raises(ValueError, match="the reward one_score_short returned scores of shape \\(3,\\) for 4"):
        train_ppo(load_policy("tiny", lora=True), prompts, one_score_short, config)
    with pytest.raises(ValueError, match="the reward one_score_short returned"):
        sample_best_of_n(load_policy("tiny"), one_score_short, prompts[:2], 2, max_new_tokens=4)
