"""Direct Preference Optimisation (Rafailov et al. 2023): learn from comparisons with no reward model.

DPO trains the policy on prompt / chosen / rejected rows with the loss

    -log sigmoid(beta * [(log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))])

which is the Bradley-Terry loss of the implicit reward beta * log(pi / ref) (Rafailov et al.
2023, eq. 7). We build on TRL's DPOTrainer:

- Comparisons come straight from a `LabelStore` (its decided pairs, `rlhflab.labeling.exports.trl_rows`)
  or from any DataFrame, Dataset or list of rows with prompt / chosen / rejected.
- With a LoRA policy loaded on a trained adapter (`load_policy(base, lora=True, adapter=sft_dir)`)
  TRL keeps a frozen copy of that adapter as the reference, so the KL anchor is SFT, not the base.
  A 4-bit base needs LoRA (QLoRA), as for SFT.
- TRL's `rewards/margins` and `rewards/accuracies` (the implicit reward of chosen over rejected)
  go to the live plot as they are logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trl

from ..labeling.exports import trl_rows
from ..labeling.records import COMPARISON_COLUMNS, REPLIES, as_rows
from ..labeling.store import LabelStore
from .live import LivePlot
from .models import Policy
from .training import (TrainingConfig, chat_dataset, last_logged, refuse_to_train_quantized, train_against_reference,
                       trl_config)

__all__ = ["DPOConfig", "DPOResult", "dpo_rows", "train_dpo"]


@dataclass
class DPOConfig(TrainingConfig):
    """Settings of one DPO run (and `TrainingConfig`'s)."""

    output_dir: str = "runs/dpo"  # the adapter (peft format) or full model, tokenizer and metrics
    learning_rate: float = 5e-4  # peak rate; LoRA takes ~5e-4 here, full fine-tuning ~5e-7 (Rafailov et al.)
    beta: float = 0.1  # strength of the implicit KL penalty to the reference (Rafailov et al. used 0.1)
    max_length: int = 256  # tokens per prompt + response; longer ones are truncated


@dataclass
class DPOResult:
    metrics: dict  # 'train/loss', 'train/runtime_s' and the last logged 'rewards/...' values
    output_dir: Path  # where the adapter (peft format) or full model was saved


def dpo_rows(preferences, columns: dict | None = None, include_flagged: bool = True) -> list[dict]:
    """prompt / chosen / rejected rows from a LabelStore or from rows a user hands in."""
    if isinstance(preferences, LabelStore):
        preferences = trl_rows(preferences, include_flagged)
        if not preferences:
            raise ValueError("the label store holds no decided pairs yet; label some items (ties and "
                             "'both bad' say nothing about which side is better) or import comparisons first")
    return as_rows(preferences, COMPARISON_COLUMNS, columns, what="preferences", allow_empty=REPLIES)


def train_dpo(policy: Policy, preferences, config: DPOConfig | None = None, *, columns: dict | None = None,
              include_flagged: bool = True, live: LivePlot | None = None) -> DPOResult:
    """Train `policy` in place with DPO on comparisons, save it, and return its metrics.

    Args:
        policy: from `load_policy`, usually `load_policy(base, lora=True, adapter=sft_dir)`, so the
            adapter starts from SFT and a frozen copy of it is the reference.
        preferences: a `LabelStore`, or a DataFrame / Dataset / list of dicts with prompt, chosen, rejected.
        columns: maps the three column names to others, e.g. {'prompt': 'question'}.
        include_flagged: from a store, keep pairs whose chosen response was flagged.
        live: a LivePlot to draw `rewards/margins` and `rewards/accuracies` on; by default one
            writing to `output_dir`.

    Examples:
        >>> policy = load_policy("tiny", lora=True, adapter="runs/sft")  # doctest: +SKIP
        >>> result = train_dpo(policy, store, DPOConfig(max_steps=20))  # doctest: +SKIP
    """
    config = config or DPOConfig()
    refuse_to_train_quantized(policy.model, policy.is_lora, "load_policy")
    rows = dpo_rows(preferences, columns, include_flagged)
    output_dir = Path(config.output_dir)
    live = live or LivePlot(output_dir, title="DPO", layout="dpo")
    args = trl_config(trl.DPOConfig, config, policy.device, beta=config.beta)
    trainer = trl.DPOTrainer(model=policy.model, args=args, train_dataset=chat_dataset(rows, ("chosen", "rejected")),
                             processing_class=policy.tokenizer, callbacks=[live])
    outcome = train_against_reference(trainer, policy, config)
    return DPOResult({"train/loss": outcome.training_loss, "train/runtime_s": outcome.metrics["train_runtime"],
                      **last_logged(trainer, ("rewards/margins", "rewards/accuracies"))}, output_dir)
