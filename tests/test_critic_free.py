"""RLOO and GRPO on TRL's trainers: each raises the tiny world's gold mean over SFT, one driven by a
plain function and one by a weighted sum of a function and the reward model; bad settings and bad
rewards are refused with errors that name them."""

import dataclasses
from dataclasses import replace

import pytest
import torch
import trl

from rlhflab import load_policy
from rlhflab.lab.stages import evaluate, load, ppo_prompts, sft_baseline
from rlhflab.tiny.task import WorldTask
from rlhflab.trainers.critic_free import CriticFreeConfig, critic_free_args, train_critic_free, trl_reward
from rlhflab.trainers.reward import load_reward_model
from rlhflab.trainers.reward_functions import WeightedReward, length_reward


@pytest.fixture(scope="module")
def sft_answers(world, gold, recipe):
    config, sft_dir, _, _ = recipe
    return sft_baseline(WorldTask(world, gold), config, sft_dir)


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_raises_gold_over_sft(method, world, gold, recipe, sft_answers, tmp_path):
    config, sft_dir, reward_dir, _ = recipe
    config = replace(config, out_dir=str(tmp_path))
    if method == "rloo":  # a plain function: the gold annotator's score, written as a user would
        def reward(prompts, responses):
            return [gold.score(p, r) for p, r in zip(prompts, responses)]
    else:  # the reward model plus a small length penalty
        reward = WeightedReward((1.0, load_reward_model(str(reward_dir))), (0.1, length_reward(12)))
    # PPO's sizes and learning rate (stages.policy_stage's): 2 sampled batches of 16, each taken 4 times in
    # minibatches of 8. With TRL's default of one optimizer step per batch the policy stayed SFT's.
    result = train_critic_free(load(config, sft_dir, trainable=True), ppo_prompts(WorldTask(world), config), reward,
                               CriticFreeConfig(method=method, output_dir=str(tmp_path / method), max_steps=2,
                                                batch_size=16, mini_batch_size=8, ppo_epochs=4, num_generations=4,
                                                learning_rate=config.ppo_learning_rate,
                                                max_completion_length=config.response_length))
    assert result.metrics["train/optimizer_steps"] == 2 * 2 * 4
    assert {"reward", "kl", "completions/mean_length"} <= set(result.metrics), result.metrics
    outcome, _ = evaluate(load(config, result.output_dir), sft_answers, WorldTask(world, gold), config)
    assert outcome["gold/mean"] > outcome["gold/sft_mean"] + 0.1, outcome
    assert (result.output_dir / "adapter_model.safetensors").exists() and (result.output_dir / "metrics.html").exists()


def test_bad_settings_and_bad_rewards_are_named():
    with pytest.raises(ValueError, match="method must be one of rloo, grpo"):
        CriticFreeConfig(method="ppo")
    with pytest.raises(ValueError, match="multiple of num_generations"):
        CriticFreeConfig(batch_size=6, num_generations=4)
    with pytest.raises(ValueError, match="num_generations must be 2 or more"):
        CriticFreeConfig(num_generations=1, batch_size=4)
    with pytest.raises(ValueError, match="mini_batch_size to a divisor of it, not 6"):
        CriticFreeConfig(batch_size=16, mini_batch_size=6)
    with pytest.raises(ValueError, match="ppo_epochs is the passes"):
        CriticFreeConfig(ppo_epochs=0)

    def sometimes_nan(prompts, responses):
        return [float("nan")] * len(responses)

    score = trl_reward(sometimes_nan)
    assert score.__name__ == "sometimes_nan"
    with pytest.raises(ValueError, match="the reward sometimes_nan returned nan"):
        score([[{"role": "user", "content": "p"}]], [[{"role": "assistant", "content": "r"}]])
    with pytest.raises(ValueError, match="a 4-bit or 8-bit model cannot be trained directly"):
        train_critic_free(load_policy("tiny", quantization="4bit"), ["p"], sometimes_nan)


def test_arguments_build_where_transformers_has_only_the_old_checkpointing_name(tmp_path):
    """transformers 5.17 (a GPU image's) has `gradient_checkpointing` but no `activation_checkpointing`:
    RLOO once passed the new name and stopped with a TypeError there."""
    old_fields = [(f.name, f.type, dataclasses.field(default=None)) for f in dataclasses.fields(trl.RLOOConfig)
                  if f.name != "activation_checkpointing"]
    OldRLOOConfig = dataclasses.make_dataclass("OldRLOOConfig", old_fields)
    config = CriticFreeConfig(method="rloo", output_dir=str(tmp_path), max_steps=3)
    args = critic_free_args(OldRLOOConfig, config, "cpu")
    assert args.gradient_checkpointing is False and args.max_steps == 3 * 2 * 4
    new = critic_free_args(trl.RLOOConfig, config, "cpu")  # the installed transformers: the TRL config validates
    assert new.generation_batch_size == 16 and new.steps_per_generation == 2 and new.num_iterations == 4


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_rloo_and_grpo_train_with_every_dropout_off(method, random_models, tmp_path):
    """Issue 29, defect 3: TRL 1.16 leaves dropout on for RLOO and GRPO and samples in train mode, so on GPT-2
    (dropout 0.1) sampling, old, reference and new log-probs each saw other masks. As in our PPO, every
    dropout is off, the adapter's too."""
    policy = load_policy(str(random_models["gpt2"]), lora={"lora_dropout": 0.1})
    assert any(m.p > 0 for m in policy.model.modules() if isinstance(m, torch.nn.Dropout))
    train_critic_free(policy, ["Hi?", "Name a colour."], length_reward(4),
                      CriticFreeConfig(method=method, output_dir=str(tmp_path), max_steps=1, batch_size=4,
                                       mini_batch_size=4, ppo_epochs=1, num_generations=2, max_completion_length=4))
    rates = [m.p for m in policy.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates and set(rates) == {0.0}
