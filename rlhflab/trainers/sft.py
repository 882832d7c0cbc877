"""Supervised fine-tuning on demonstrations (TRL SFTTrainer), the first step after pretraining.

The loss covers the response tokens only: each demonstration becomes a conversational
prompt / completion pair, and TRL masks the prompt (`completion_only_loss`). With a LoRA policy
only the adapter trains and is saved in peft's format; a 4-bit policy needs LoRA (QLoRA).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trl
from datasets import Dataset

from ..labeling.records import DEMONSTRATION_COLUMNS, as_rows
from .live import LivePlot
from .models import Policy
from .training import (TrainingConfig, chat_dataset, fit, refuse_to_train_quantized, restore_adapter_dtype,
                       save_trained, trl_config)

__all__ = ["SFTConfig", "SFTResult", "conversations", "train_sft"]


@dataclass
class SFTConfig(TrainingConfig):
    """Settings of one supervised fine-tuning run (and `TrainingConfig`'s: epochs, batch size, checkpoints,
    report_to, ...)."""

    output_dir: str = "runs/sft"  # the adapter (or full model), tokenizer and metrics go here
    learning_rate: float = 1e-3  # peak rate; LoRA takes ~1e-3, full fine-tuning ~5e-5
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    warmup_ratio: float = 0.05  # share of steps spent warming the rate up
    max_length: int = 256  # tokens per prompt + response; longer ones are truncated


@dataclass
class SFTResult:
    metrics: dict  # 'train/loss', 'eval/loss_before', 'eval/loss_after', 'train/runtime_s'
    output_dir: Path  # where the adapter (peft format) or full model was saved


def conversations(rows: list[dict]) -> Dataset:
    """Prompt / completion pairs in chat form, so TRL applies the model's chat template."""
    return chat_dataset([{"prompt": r["prompt"], "completion": r["response"]} for r in rows], ("completion",))


def train_sft(policy: Policy, demonstrations, config: SFTConfig | None = None, *,
              eval_demonstrations=None, columns: dict | None = None, live: LivePlot | None = None) -> SFTResult:
    """Fine-tune `policy` in place on demonstrations and save it.

    Args:
        policy: from `load_policy`; LoRA policies train only their adapter.
        demonstrations: DataFrame, Dataset or list of dicts with 'prompt' and 'response' columns.
        config: run settings (SFTConfig()).
        eval_demonstrations: held-out demonstrations; their loss is measured before and after.
        columns: maps 'prompt' / 'response' to other column names, e.g. {'response': 'chosen'}.
        live: a LivePlot to draw the curves on; by default one writing to `output_dir`.

    Examples:
        >>> world = TinyWorld()
        >>> policy = load_policy("tiny", lora=True)
        >>> result = train_sft(policy, world.demonstrations("train", 64), SFTConfig(max_steps=2))
        >>> (result.output_dir / "adapter_config.json").exists()
        True
    """
    config = config or SFTConfig()
    refuse_to_train_quantized(policy.model, policy.is_lora, "load_policy")
    train_rows = as_rows(demonstrations, DEMONSTRATION_COLUMNS, columns, what="demonstrations")
    eval_rows = (as_rows(eval_demonstrations, DEMONSTRATION_COLUMNS, columns, what="eval_demonstrations")
                 if eval_demonstrations is not None else None)
    output_dir = Path(config.output_dir)
    live = live or LivePlot(output_dir, title="SFT", layout="sft")

    args = trl_config(trl.SFTConfig, config, policy.device, warmup_steps=config.warmup_ratio,
                    gradient_accumulation_steps=config.gradient_accumulation_steps, completion_only_loss=True)
    trainer = trl.SFTTrainer(model=policy.model, args=args, train_dataset=conversations(train_rows),
                             eval_dataset=conversations(eval_rows) if eval_rows else None,
                             processing_class=policy.tokenizer, callbacks=[live])
    restore_adapter_dtype(trainer)
    metrics: dict = {}
    if eval_rows:
        metrics["eval/loss_before"] = trainer.evaluate()["eval_loss"]
    outcome = fit(trainer, config)
    metrics["train/loss"] = outcome.training_loss
    metrics["train/runtime_s"] = outcome.metrics["train_runtime"]
    if eval_rows:
        metrics["eval/loss_after"] = trainer.evaluate()["eval_loss"]
    save_trained(trainer, output_dir, policy.tokenizer)
    policy.model.eval()
    return SFTResult(metrics, output_dir)
