"""RLOO and GRPO: RLHF without a value model, on TRL's RLOOTrainer and GRPOTrainer.

Both sample k responses to each prompt and let the rest of the group be the baseline, so no value
head or value adapter has to be trained or held in memory:

    RLOO (Ahmadian et al. 2024, "Back to Basics"):   A_i = r_i - mean_{j != i} r_j
    GRPO (Shao et al. 2024, DeepSeekMath):          A_i = (r_i - mean_j r_j) / std_j r_j

and both add beta * KL(policy || reference) to keep the policy near where it started. TRL's
trainers fit the lab as they are, so we wrap them rather than write our own:

- they take a peft model, on a 4-bit base too (QLoRA), and keep a frozen copy of the starting
  adapter (SFT) as the reference, as DPO and KTO do (`rlhflab.trainers.training.train_against_reference`);
- their reward functions have our shape, f(prompts, completions) -> scores, so any reward of
  `rlhflab.trainers.reward_functions.as_reward` (a reward model, the gold annotator, a function, a weighted
  sum) plugs in, through `checked_scores`: TRL would average a NaN away, we name the reward;
- they take callbacks, so `LivePlot` draws reward, KL and length as they train.

A step is sized like our PPO's: one batch of `batch_size` sampled completions, trained on for
`ppo_epochs` passes of `mini_batch_size` (TRL's `steps_per_generation` and `num_iterations`). TRL's
defaults take one optimizer step per batch, an eighth of PPO's at our sizes: 6 such steps left the
tiny model where SFT was (gold win-rate 50.0%, KL 0.00), so the methods were not compared like for
like. Two differences stay: TRL splits a sampled batch into minibatches once and reuses the split
every pass (our PPO reshuffles each epoch), and its learning rate follows a cosine decay (PPO's is
constant by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import trl

from ..labeling.records import as_prompt
from .live import LivePlot
from .models import Policy, disable_dropout
from .reward import checked_scores
from .reward_functions import as_reward
from .training import (TrainingConfig, chat_dataset, last_logged, refuse_to_train_quantized, train_against_reference,
                       trl_config)

__all__ = ["METHODS", "LOGGED", "CriticFreeConfig", "CriticFreeResult", "trl_reward", "critic_free_args",
           "train_critic_free"]

METHODS = {"rloo": (trl.RLOOConfig, trl.RLOOTrainer), "grpo": (trl.GRPOConfig, trl.GRPOTrainer)}
LOGGED = ("reward", "reward_std", "kl", "entropy", "completions/mean_length")


@dataclass
class CriticFreeConfig(TrainingConfig):
    """Settings of one RLOO or GRPO run (and `TrainingConfig`'s)."""

    method: str = "grpo"  # 'grpo' or 'rloo'
    output_dir: str = "runs/grpo"  # the adapter (peft format) or full model, tokenizer and metrics
    max_steps: int = 50  # batches of batch_size sampled completions, as PPO's steps (-1: run all epochs)
    batch_size: int = 16  # completions sampled per batch (per device); a multiple of num_generations
    mini_batch_size: int = 8  # completions per optimizer step
    ppo_epochs: int = 4  # passes over each sampled batch (TRL's num_iterations, GRPO's mu), as in our PPO
    num_generations: int = 4  # k: responses sampled per prompt, each other's baseline
    learning_rate: float = 1e-4  # LoRA rate; full fine-tuning wants ~1e-6
    beta: float = 0.05  # weight of the KL penalty to the reference (TRL's RLOO default; GRPO's is 0)
    max_completion_length: int = 32  # most tokens sampled per response
    temperature: float = 1.0  # sampling temperature
    logging_steps: int = 1  # log (and plot) every this many optimizer steps (batch / minibatch x epochs per step)
    optimizer_steps: int = field(init=False)  # derived: TRL's max_steps

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.num_generations < 2:
            raise ValueError("RLOO and GRPO compare each response with the rest of its group: num_generations "
                             f"must be 2 or more, not {self.num_generations}")
        if self.batch_size % self.num_generations:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of num_generations "
                             f"({self.num_generations}): every prompt's group is sampled in one batch")
        if self.mini_batch_size < 1 or self.batch_size % self.mini_batch_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a whole number of minibatches: set "
                             f"mini_batch_size to a divisor of it, not {self.mini_batch_size}")
        if self.ppo_epochs < 1:
            raise ValueError(f"ppo_epochs is the passes over each sampled batch, at least 1, not {self.ppo_epochs}")
        # TRL's max_steps counts optimizer steps: each sampled batch gives (batch / minibatch) x epochs of them
        self.optimizer_steps = (self.max_steps * self.batch_size // self.mini_batch_size * self.ppo_epochs
                                if self.max_steps > 0 else -1)


@dataclass
class CriticFreeResult:
    metrics: dict  # 'train/loss', 'train/runtime_s' and the last LOGGED values
    output_dir: Path  # where the adapter (peft format) or full model was saved


def trl_reward(reward):
    """A reward of `as_reward` as a TRL reward function (TRL passes chat messages and other columns)."""
    reward = as_reward(reward)

    def score(prompts, completions, **_columns):
        prompts = [as_prompt(p) for p in prompts]  # every turn, as the task gave it
        responses = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return checked_scores(reward.score(prompts, responses), len(responses), reward).tolist()

    score.__name__ = getattr(reward, "__name__", type(reward).__name__)  # TRL logs rewards/<name>/mean
    return score


def critic_free_args(trl_config_class, config: CriticFreeConfig, device):
    """TRL's RLOOConfig / GRPOConfig for `config`. No activation recomputation, even on a GPU: TRL samples
    the groups with the model it trains, and checkpointing in training mode turns transformers' KV cache
    off, so every sampled token would run the whole sequence again."""
    return trl_config(trl_config_class, config, device, recompute=False, max_steps=config.optimizer_steps,
                      per_device_train_batch_size=config.mini_batch_size,
                      steps_per_generation=config.batch_size // config.mini_batch_size,
                      num_iterations=config.ppo_epochs, num_generations=config.num_generations, beta=config.beta,
                      max_completion_length=config.max_completion_length, temperature=config.temperature)


def train_critic_free(policy: Policy, prompts: list[str], reward, config: CriticFreeConfig | None = None, *,
                      live: LivePlot | None = None) -> CriticFreeResult:
    """Train `policy` in place with RLOO or GRPO against `reward`, save it, and return its metrics.

    Args:
        policy: from `load_policy`, usually `load_policy(base, lora=True, adapter=sft_dir)`, so the
            adapter starts from SFT and a frozen copy of it is the KL reference.
        prompts: the prompts to sample from.
        reward: a reward model, the gold annotator, a function f(prompts, responses) -> scores, or a
            `WeightedReward` (`rlhflab.trainers.reward_functions`).
        live: a LivePlot; by default one writing to `output_dir`.

    Examples:
        >>> policy = load_policy("tiny", lora=True, adapter="runs/sft")  # doctest: +SKIP
        >>> train_critic_free(policy, prompts, reward_model, CriticFreeConfig(method="rloo"))  # doctest: +SKIP
    """
    config = config or CriticFreeConfig()
    if not prompts:
        raise ValueError(f"{config.method.upper()} needs at least one prompt")
    refuse_to_train_quantized(policy.model, policy.is_lora, "load_policy")
    # TRL 1.16 leaves dropout on for RLOO and GRPO and samples in train mode: sampling, old, reference and new
    # log-probs would each see other dropout masks, so the first ratio is not 1 (our PPO does the same)
    disable_dropout(policy.model)
    trl_config_class, trl_trainer = METHODS[config.method]
    output_dir = Path(config.output_dir)
    live = live or LivePlot(output_dir, title=config.method.upper(), layout="critic_free")
    args = critic_free_args(trl_config_class, config, policy.device)
    trainer = trl_trainer(model=policy.model, reward_funcs=[trl_reward(reward)], args=args,
                          train_dataset=chat_dataset([{"prompt": p} for p in prompts], ()),
                          processing_class=policy.tokenizer, callbacks=[live])
    outcome = train_against_reference(trainer, policy, config)
    return CriticFreeResult({"train/loss": outcome.training_loss, "train/runtime_s": outcome.metrics["train_runtime"],
                             "train/optimizer_steps": trainer.state.global_step,
                             **last_logged(trainer, LOGGED)}, output_dir)
