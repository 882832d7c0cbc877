"""The tiny world's RLHF recipe: SFT -> comparisons -> reward model -> PPO, scored against gold.

Each stage is a function that reads the previous stage's output directory and writes its own, so
`make demo`, the notebooks, the benchmarks and the tests run the same code at different sizes.

SFT gets a deliberately small demonstration budget: with 2,000 demonstrations the tiny model
already answers almost perfectly (gold 3.7 of 4), and RLHF would have nothing left to teach.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..live import LivePlot
from ..models import Policy, load_policy
from ..ppo import PPOConfig, PPOTrainer
from ..reward import RewardConfig, SharedReward, evaluate_reward_model, load_reward_model, train_reward_model
from ..sft import SFTConfig, train_sft
from .gold import GoldAnnotator
from .world import TinyWorld


@dataclass
class RecipeConfig:
    """Sizes of every stage; `quick()` is what the tests use."""

    out_dir: str = "runs/recipe"  # one sub-directory per stage
    base: str = "tiny"  # base model of every role: 'tiny', a local directory or a hub id
    n_demonstrations: int = 256  # SFT demonstrations (small on purpose, see the module docstring)
    n_world_pairs: int = 1500  # comparisons of the world's own candidates
    n_policy_pairs: int = 1500  # comparisons of two SFT samples per prompt (on-policy data)
    reward_epochs: float = 2.0  # passes over the comparisons
    n_heldout: int = 128  # held-out prompts for every evaluation
    ppo_steps: int = 60  # PPO steps of batch_size responses
    ppo_batch_size: int = 16  # responses per PPO step
    ppo_learning_rate: float = 1e-4  # LoRA learning rate of PPO
    kl_coef: float = 0.2  # initial KL penalty
    target_kl: float = 3.0  # nats per response the adaptive controller steers to
    quantization: str | None = None  # '4bit' runs every stage on one nf4 base
    seed: int = 0  # seeds data draws, sampling and training

    @classmethod
    def quick(cls, out_dir: str, **overrides) -> "RecipeConfig":
        settings = dict(out_dir=out_dir, n_demonstrations=128, n_world_pairs=300, n_policy_pairs=300,
                        reward_epochs=2.0, n_heldout=48, ppo_steps=16)
        return cls(**{**settings, **overrides})

    def stage_dir(self, stage: str) -> Path:
        return Path(self.out_dir) / stage


def heldout_prompts(world: TinyWorld, config: RecipeConfig) -> list[str]:
    return [q.text for q in world.questions("heldout", config.n_heldout, seed=config.seed + 11)]


# -- 1. SFT ------------------------------------------------------------------------------------

def sft_stage(world: TinyWorld, config: RecipeConfig, live: LivePlot | None = None) -> Path:
    """LoRA SFT of the tiny base model; returns the adapter directory."""
    out = config.stage_dir("sft")
    policy = load_policy(config.base, lora=True, quantization=config.quantization)
    train_sft(policy, world.demonstrations("train", config.n_demonstrations, seed=config.seed),
              SFTConfig(output_dir=str(out), seed=config.seed, logging_steps=2), live=live)
    return out


# -- 2. comparisons ------------------------------------------------------------------------------

def policy_pairs(policy: Policy, prompts: list[str], seed: int) -> tuple[list[str], list[str], list[str]]:
    """Two independent samples of `policy` for each prompt."""
    return prompts, policy.generate(prompts, seed=seed), policy.generate(prompts, seed=seed + 1)


def comparisons(world: TinyWorld, gold: GoldAnnotator, sft: Policy, split: str, n_world: int, n_policy: int,
                seed: int) -> list[dict]:
    """Gold-labelled preference rows: the world's candidates plus the SFT policy's own samples.

    Only world candidates would teach the reward model nothing about the broken text a drifting
    policy writes, and PPO would exploit that; labelling the policy's samples is what RLHF does.
    """
    policy_prompts = [q.text for q in world.questions(split, n_policy, seed=seed + 1)]
    return (gold.preferences(*world.candidate_pairs(split, n_world, seed=seed))
            + gold.preferences(*policy_pairs(sft, policy_prompts, seed=seed + 2)))


# -- 3. reward model -----------------------------------------------------------------------------

def reward_stage(world: TinyWorld, gold: GoldAnnotator, sft_dir: Path, config: RecipeConfig,
                 live: LivePlot | None = None) -> tuple[Path, dict]:
    """Train a LoRA reward model on gold-labelled comparisons, normalise it on SFT samples.

    Returns the reward directory and its evaluation: held-out accuracy, agreement with the gold
    annotator on held-out world candidates and on SFT samples, and the calibration table.
    """
    out = config.stage_dir("reward")
    sft = load_policy(config.base, adapter=str(sft_dir), quantization=config.quantization)
    train_rows = comparisons(world, gold, sft, "train", config.n_world_pairs, config.n_policy_pairs, config.seed)
    heldout_world = gold.preferences(*world.candidate_pairs("heldout", config.n_heldout * 2, seed=config.seed + 5))
    heldout_policy = gold.preferences(*policy_pairs(sft, heldout_prompts(world, config), seed=config.seed + 7))
    reward_model = load_reward_model(config.base, lora=True, quantization=config.quantization)
    metrics = train_reward_model(reward_model, train_rows,
                                 RewardConfig(output_dir=str(out), epochs=config.reward_epochs, seed=config.seed,
                                              logging_steps=10), live=live)
    prompts = heldout_prompts(world, config)
    reward_model.normalize_on(prompts, sft.generate(prompts, seed=config.seed + 9))
    reward_model.save(out)
    evaluation = evaluate_reward_model(reward_model, heldout_world + heldout_policy)
    metrics.update({
        "reward/comparisons": len(train_rows),
        "reward/gold_agreement_world": evaluate_reward_model(reward_model, heldout_world)["metrics"]["eval/accuracy"],
        "reward/gold_agreement_sft_samples": evaluate_reward_model(reward_model, heldout_policy)["metrics"]["eval/accuracy"],
        "reward/gold_agreement": evaluation["metrics"]["eval/accuracy"],
    })
    return out, {"metrics": metrics, "calibration": evaluation["calibration"], "evaluation": evaluation}


# -- 4. PPO --------------------------------------------------------------------------------------

def ppo_trainer(world: TinyWorld, gold: GoldAnnotator, sft_dir: Path, reward_dir: Path, config: RecipeConfig,
                live: LivePlot | None = None, separate_reward: bool = False,
                ppo_fields: dict | None = None) -> PPOTrainer:
    """A PPO trainer whose policy starts from SFT, with the SFT adapter as the reference.

    By default the reward model is a third adapter on the same base (`SharedReward`); with
    `separate_reward` it is its own model. `ppo_fields` sets further PPOConfig fields, e.g.
    {'value_model': 'adapter'} (the value adapter then starts from the reward model).
    """
    policy = load_policy(config.base, lora=True, adapter=str(sft_dir), quantization=config.quantization)
    reward = (load_reward_model(str(reward_dir), quantization=config.quantization) if separate_reward
              else SharedReward(policy, reward_dir))
    prompts = [q.text for q in world.questions("train", 2000, seed=config.seed + 13)]
    ppo_config = PPOConfig(output_dir=str(config.stage_dir("ppo")), steps=config.ppo_steps,
                           batch_size=config.ppo_batch_size, mini_batch_size=config.ppo_batch_size // 2,
                           learning_rate=config.ppo_learning_rate, kl_coef=config.kl_coef,
                           target_kl=config.target_kl, kl_horizon=50 * config.ppo_batch_size,
                           seed=config.seed, **(ppo_fields or {}))
    return PPOTrainer(policy, prompts, reward, ppo_config, gold=gold, live=live, reference_adapter=sft_dir,
                      value_from=reward_dir)


@torch.no_grad()
def compare_with_sft(trainer: PPOTrainer, gold: GoldAnnotator, sft_dir: Path, prompts: list[str],
                     config: RecipeConfig) -> dict:
    """Held-out gold win-rate of the trained policy over SFT, their mean gold and proxy scores,
    and the policy's KL to SFT (nats per response, k1 on its own samples)."""
    sft = load_policy(config.base, adapter=str(sft_dir), quantization=config.quantization)
    batch = trainer.rollout(prompts)  # samples, proxy scores and per-token KL to the SFT reference
    trainer.unwrapped.model.eval()
    sft_responses = sft.generate(prompts, max_new_tokens=trainer.config.response_length, seed=config.seed + 21)
    sft_scores = trainer.reward.score(prompts, sft_responses)
    return {
        "ppo/gold_win_rate_vs_sft": gold.win_rate(prompts, batch["decoded"], sft_responses),
        "ppo/gold_mean": gold.mean_score(prompts, batch["decoded"]),
        "sft/gold_mean": gold.mean_score(prompts, sft_responses),
        "ppo/reward_mean": trainer.reward.score(prompts, batch["decoded"]).mean().item(),
        "sft/reward_mean": sft_scores.mean().item(),
        "ppo/kl_to_sft": batch["k1"].sum(1).mean().item(),
        "samples": list(zip(prompts, sft_responses, batch["decoded"])),
    }
