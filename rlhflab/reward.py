"""Reward model: learn one scalar per response from people's comparisons (Bradley-Terry).

A sequence-classification head ('score', one output) on a LoRA or 4-bit base, trained with TRL's
RewardTrainer on prompt / chosen / rejected rows:

    loss = -log sigmoid(r(chosen) - r(rejected) - margin)        (Touvron et al. 2023, eq. 2)

- Preference strength becomes the margin (`rlhflab.records.MARGINS`, Llama 2's "small" margins:
  slightly 1/3, clearly 2/3, much 1). A numeric 'margin' column, as the label store exports, is used as is.
- Ties and "both bad" carry no direction, so they are not rows here (the label store keeps them;
  its TRL export leaves them out). Rankings arrive already expanded into all their pairs.
- The score head trains and saves with the adapter (`modules_to_save=["score"]`): without it, a
  reloaded LoRA reward model would have a fresh random head (TRL users have lost it that way).
- Scores are normalised before PPO uses them: `normalize_on` sets mean 0 and std 1 on samples
  of the SFT policy (Ziegler et al. 2019, sec. 2.2; Stiennon et al. 2020, sec. 3.4).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import trl
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from .live import LivePlot
from .models import attach_adapter, compute_dtype, default_device, load_pretrained, transcript_ids
from .records import MARGINS, as_rows

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")
NORMALIZATION_FILE = "reward_normalization.json"


@dataclass
class RewardConfig:
    """Settings of one reward-model training run."""

    output_dir: str = "runs/reward"  # adapter with score head, tokenizer, normalisation, metrics
    epochs: float = 1.0  # passes over the comparisons
    max_steps: int = -1  # stop after this many optimizer steps (-1: run all epochs)
    batch_size: int = 16  # comparisons per device per step
    learning_rate: float = 1e-3  # peak rate (LoRA); ~1e-5 for full fine-tuning
    max_length: int = 256  # tokens per prompt + response
    use_margin: bool = True  # subtract the strength margin inside the loss
    logging_steps: int = 5  # log (and plot) every this many steps
    seed: int = 0  # seeds shuffling and the head's initialisation


# ---------------------------------------------------------------------------------------------
# Data: comparisons -> token ids the same way for training and for scoring
# ---------------------------------------------------------------------------------------------

def preference_rows(data, columns: dict | None = None) -> list[dict]:
    """prompt / chosen / rejected rows with a float margin (0 when no strength was given)."""
    rows = as_rows(data, PREFERENCE_COLUMNS, columns, what="preferences", optional=("margin", "strength"))
    for index, row in enumerate(rows):
        margin, strength = row.pop("margin"), row.pop("strength")
        if margin is not None and not pd.isna(margin):
            row["margin"] = float(margin)
        elif strength in MARGINS:
            row["margin"] = MARGINS[strength]
        elif strength is not None and not pd.isna(strength):
            raise ValueError(f"preferences row {index}: strength {strength!r} is not one of "
                             f"{[k for k in MARGINS if k]}; fix it or drop the 'strength' column")
        else:
            row["margin"] = 0.0
    return rows


def tokenized(rows: list[dict], tokenizer, max_length: int, use_margin: bool) -> Dataset:
    def ids(prompt, response):
        return transcript_ids(tokenizer, prompt, response)[-max_length:]

    return Dataset.from_list([{"chosen_ids": ids(r["prompt"], r["chosen"]), "rejected_ids": ids(r["prompt"], r["rejected"]),
                               "margin": r["margin"] if use_margin else 0.0} for r in rows])


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class RewardModel:
    """A scalar scorer of (prompt, response) pairs, normalised for PPO.

    Args:
        model: a sequence-classification model with one output, or a peft model wrapping one.
        tokenizer: its tokenizer (chat template included).
        mean, std: the normalisation; scores are (raw - mean) / std when normalised.

    Examples:
        >>> rm = load_reward_model("runs/reward")
        >>> rm.score(["What color is the fox?"], ["Sure! The fox is red. I hope this helps!"])
        tensor([...])
    """

    def __init__(self, model, tokenizer, mean: float = 0.0, std: float = 1.0):
        self.model, self.tokenizer, self.mean, self.std = model, tokenizer, mean, std

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str], normalized: bool = True,
              batch_size: int = 32) -> torch.Tensor:
        """One score per (prompt, response), read at the final EOS token."""
        self.model.eval()
        scores = []
        for start in range(0, len(prompts), batch_size):
            ids = [transcript_ids(self.tokenizer, p, r) for p, r in
                   zip(prompts[start: start + batch_size], responses[start: start + batch_size])]
            batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding_side="right").to(self.device)
            scores.append(self.model(**batch).logits[:, 0].float().cpu())  # (B,)
        raw = torch.cat(scores)
        return (raw - self.mean) / self.std if normalized else raw

    def normalize_on(self, prompts: list[str], responses: list[str]) -> None:
        """Set mean 0 and std 1 on these samples (typically the SFT policy's)."""
        raw = self.score(prompts, responses, normalized=False)
        self.mean, self.std = raw.mean().item(), max(raw.std().item(), 1e-6)

    def save(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        (out_dir / NORMALIZATION_FILE).write_text(json.dumps({"mean": self.mean, "std": self.std}) + "\n")


def reward_lora(lora) -> dict | None:
    """LoRA settings for a reward model: the score head always trains and saves with the adapter."""
    if lora is None or lora is False:
        return None
    settings = dict(lora) if isinstance(lora, dict) else {}
    settings["modules_to_save"] = sorted({*settings.get("modules_to_save", []), "score"})
    return settings


def load_reward_model(path_or_base: str = "tiny", lora=None, quantization: str | None = None, *,
                      adapter: str | None = None, device: str | None = None,
                      trust_remote_code: bool = False) -> RewardModel:
    """A reward model: a saved one (full model or adapter directory), or a new head on a base.

    Args:
        path_or_base: a directory saved by `RewardModel.save`, or a causal LM to put a head on.
        lora: True (or LoraConfig fields) for a new trainable LoRA adapter with the score head.
        quantization: '4bit' or '8bit' base weights.
        adapter: a saved reward adapter directory to load on `path_or_base`.
    """
    device = device or default_device()
    directory = Path(adapter or path_or_base)
    saved_adapter = (directory / "adapter_config.json").exists()
    if saved_adapter and adapter is None:  # an adapter directory names its base
        adapter = str(directory)
        path_or_base = json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"]
    model, tokenizer = load_pretrained(AutoModelForSequenceClassification, path_or_base, quantization, device,
                                       None, trust_remote_code, new_head="score")
    model = attach_adapter(model, reward_lora(lora), adapter, quantization is not None, task_type="SEQ_CLS")
    normalization = directory / NORMALIZATION_FILE
    stats = json.loads(normalization.read_text()) if normalization.exists() else {"mean": 0.0, "std": 1.0}
    return RewardModel(model, tokenizer, **stats)


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------

def train_reward_model(reward_model: RewardModel, preferences, config: RewardConfig | None = None, *,
                       eval_preferences=None, columns: dict | None = None,
                       live: LivePlot | None = None) -> dict:
    """Train `reward_model` in place on comparisons, save it, and return its metrics.

    Args:
        reward_model: from `load_reward_model(base, lora=True)` (or a full model).
        preferences: rows with prompt / chosen / rejected and optionally strength or margin.
        eval_preferences: held-out rows; accuracy and calibration are measured on them.
        columns: maps the three column names to others, e.g. {'prompt': 'question'}.
    """
    config = config or RewardConfig()
    if getattr(reward_model.model, "is_quantized", False) and not hasattr(reward_model.model, "peft_config"):
        raise ValueError("a 4-bit or 8-bit reward model cannot be trained directly; "
                         "load it with load_reward_model(..., lora=True)")
    train_rows = preference_rows(preferences, columns)
    eval_rows = preference_rows(eval_preferences, columns) if eval_preferences is not None else None
    output_dir = Path(config.output_dir)
    live = live or LivePlot(output_dir, title="Reward model")
    tokenizer = reward_model.tokenizer
    args = trl.RewardConfig(
        output_dir=str(output_dir), num_train_epochs=config.epochs, max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05,
        max_length=config.max_length, logging_steps=config.logging_steps, seed=config.seed,
        save_strategy="no", report_to="none", bf16=reward_model.device.type == "cuda" and torch.cuda.is_bf16_supported(),
        use_cpu=reward_model.device.type == "cpu",
    )
    trainer = trl.RewardTrainer(
        model=reward_model.model, args=args, processing_class=tokenizer, callbacks=[live],
        train_dataset=tokenized(train_rows, tokenizer, config.max_length, config.use_margin),
        eval_dataset=tokenized(eval_rows, tokenizer, config.max_length, config.use_margin) if eval_rows else None,
    )
    if getattr(reward_model.model, "is_quantized", False):
        # TRL casts a quantized model's trainable weights to bf16 (QLoRA's choice); on the CPU the
        # score head would then meet fp32 hidden states. Keep them in the device's compute dtype.
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.to(compute_dtype(reward_model.device.type))
    outcome = trainer.train()
    metrics = {"train/loss": outcome.training_loss, "train/runtime_s": outcome.metrics["train_runtime"]}
    if eval_rows:
        metrics.update(evaluate_reward_model(reward_model, eval_rows)["metrics"])
    reward_model.save(output_dir)
    (output_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; nothing of ours reads it
    return metrics


def evaluate_reward_model(reward_model: RewardModel, preferences, bins: int = 5) -> dict:
    """Held-out accuracy, a calibration table and a chosen-vs-rejected reward plot.

    Calibration (Stiennon et al. 2020, appendix E): bin pairs by the predicted probability that
    the chosen response wins, sigmoid(r_chosen - r_rejected), and compare with the observed
    share of pairs in that bin whose chosen response did win (scores ordered the right way).
    """
    rows = preference_rows(preferences)
    prompts = [r["prompt"] for r in rows]
    chosen = reward_model.score(prompts, [r["chosen"] for r in rows], normalized=False)
    rejected = reward_model.score(prompts, [r["rejected"] for r in rows], normalized=False)
    # Orient each pair as (first, second) by a fixed coin, so calibration covers both sides of 0.5.
    flip = torch.arange(len(rows)) % 2 == 1
    first = torch.where(flip, rejected, chosen)
    second = torch.where(flip, chosen, rejected)
    predicted = torch.sigmoid(first - second)
    observed = (~flip).float()
    edges = torch.linspace(0, 1, bins + 1)
    table = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (predicted >= low) & ((predicted < high) | (high == 1))
        if inside.any():
            table.append({"predicted": f"{low:.1f}-{high:.1f}", "pairs": int(inside.sum()),
                          "mean predicted": round(predicted[inside].mean().item(), 3),
                          "observed first wins": round(observed[inside].mean().item(), 3)})
    accuracy = (chosen > rejected).float().mean().item()
    return {"metrics": {"eval/accuracy": accuracy, "eval/margin": (chosen - rejected).mean().item()},
            "calibration": pd.DataFrame(table), "chosen": chosen, "rejected": rejected}


def reward_plot(evaluation: dict):
    """Histogram of raw rewards of chosen and rejected responses (a plotly figure)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    figure.add_histogram(x=evaluation["chosen"].tolist(), name="chosen", opacity=0.6)
    figure.add_histogram(x=evaluation["rejected"].tolist(), name="rejected", opacity=0.6)
    figure.update_layout(barmode="overlay", title="reward of chosen vs rejected responses",
                         xaxis_title="reward", yaxis_title="pairs")
    return figure

