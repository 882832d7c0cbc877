"""Reward model: learn one scalar per response from people's comparisons (Bradley-Terry).

A sequence-classification head ('score', one output) on a LoRA or 4-bit base, trained with TRL's
RewardTrainer on prompt / chosen / rejected rows:

    loss = -log sigmoid(r(chosen) - r(rejected) - margin)        (Touvron et al. 2023, eq. 2)

- Preference strength becomes the margin (`rlhflab.labeling.records.MARGINS`, Llama 2's "small" margins:
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
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification

from ..labeling.records import COMPARISON_COLUMNS, MARGINS, REPLIES, as_rows
from .live import LivePlot
from .models import attach_adapter, default_device, left_padded_positions, load_pretrained, transcript_ids
from .training import TrainingConfig, fit, refuse_to_train_quantized, restore_adapter_dtype, trl_config

__all__ = ["NORMALIZATION_FILE", "ADAPTER_WEIGHTS", "RewardConfig", "preference_rows", "reward_ids",
           "tokenized", "score_positions", "RewardModel", "load_reward_model", "score_weight",
           "SharedReward", "checked_scores", "GoldReward", "train_reward_model", "evaluate_reward_model",
           "reward_plot"]

NORMALIZATION_FILE = "reward_normalization.json"  # mean, std and max_length, saved with the adapter
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's file of LoRA weights (and the score head)
DEFAULT_MAX_LENGTH = 256  # tokens per prompt + response, in training and in scoring


@dataclass
class RewardConfig(TrainingConfig):
    """Settings of one reward-model training run (and `TrainingConfig`'s)."""

    output_dir: str = "runs/reward"  # adapter with score head, tokenizer, normalisation, metrics
    learning_rate: float = 1e-3  # peak rate (LoRA); ~1e-5 for full fine-tuning
    max_length: int = DEFAULT_MAX_LENGTH  # tokens per prompt + response; longer ones keep their end
    use_margin: bool = True  # subtract the strength margin inside the loss


# ---------------------------------------------------------------------------------------------
# Data: comparisons -> token ids the same way for training and for scoring
# ---------------------------------------------------------------------------------------------

def preference_rows(data, columns: dict | None = None) -> list[dict]:
    """prompt / chosen / rejected rows with a float margin (0 when no strength was given)."""
    rows = as_rows(data, COMPARISON_COLUMNS, columns, what="preferences", optional=("margin", "strength"),
                   allow_empty=REPLIES)
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


def reward_ids(tokenizer, prompt: str, response: str, max_length: int) -> list[int]:
    """The tokens a reward model reads, in training and in scoring alike: the chat transcript
    ending in EOS, cut from the left to `max_length` so the response's end (and its score) stays."""
    return transcript_ids(tokenizer, prompt, response)[-max_length:]


def tokenized(rows: list[dict], tokenizer, max_length: int, use_margin: bool) -> Dataset:
    def ids(prompt, response):
        return reward_ids(tokenizer, prompt, response, max_length)

    return Dataset.from_list([{"chosen_ids": ids(r["prompt"], r["chosen"]),
                               "rejected_ids": ids(r["prompt"], r["rejected"]),
                               "margin": r["margin"] if use_margin else 0.0} for r in rows])


def score_positions(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Where a sequence-classification model reads each row's score: its last token that is not
    the pad token, left or right padding alike (transformers' rule). When pad == eos (GPT-2,
    Llama 3, SmolLM2, ...) that is the response's last token, not the closing EOS: (B,)."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    return (positions * (input_ids != pad_token_id)).argmax(1)


def cast_to_weight_dtype(module: torch.nn.Linear, args: tuple) -> tuple:
    return (args[0].to(module.weight.dtype), *args[1:])


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

    def __init__(self, model, tokenizer, mean: float = 0.0, std: float = 1.0,
                 max_length: int = DEFAULT_MAX_LENGTH):
        self.model, self.tokenizer, self.mean, self.std = model, tokenizer, mean, std
        self.max_length = max_length
        # A 4-bit model's norms stay fp32 (QLoRA), so its residual stream is fp32, while TRL keeps
        # the trained score head in bf16 on a GPU: outside autocast the head would refuse fp32 input.
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and "score" in name.split("."):
                module.register_forward_pre_hook(cast_to_weight_dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str], normalized: bool = True,
              batch_size: int = 32) -> torch.Tensor:
        """One score per (prompt, response), read where training read it (`score_positions`)."""
        self.model.eval()
        scores = []
        for start in range(0, len(prompts), batch_size):
            ids = [reward_ids(self.tokenizer, p, r, self.max_length) for p, r in
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
        stats = {"mean": self.mean, "std": self.std, "max_length": self.max_length}
        (out_dir / NORMALIZATION_FILE).write_text(json.dumps(stats) + "\n")


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
                                       None, trust_remote_code, new_head="score",
                                       trained_in_full=lora is None and adapter is None)
    model = attach_adapter(model, reward_lora(lora), adapter, quantization is not None, task_type="SEQ_CLS")
    normalization = directory / NORMALIZATION_FILE
    stats = json.loads(normalization.read_text()) if normalization.exists() else {}
    return RewardModel(model, tokenizer, **stats)


def score_weight(reward_dir: str | Path) -> torch.Tensor:
    """The (1, H) score head saved with a reward adapter."""
    with safe_open(Path(reward_dir) / ADAPTER_WEIGHTS, "pt") as weights:
        return weights.get_tensor(next(k for k in weights.keys() if k.endswith("score.weight")))


class SharedReward:
    """A reward adapter with its score head, loaded onto the policy's own base model.

    The reward model saved by `RewardModel.save` is a LoRA adapter plus a 'score' head. Here its
    LoRA weights become a second adapter of the policy's peft model and run through peft's
    per-sample adapter routing, so no second copy of the base weights is held. It reads the same
    tokens at the same position as `RewardModel.score`, and computes no vocabulary logits.
    """

    def __init__(self, policy, reward_dir: str | Path, adapter_name: str = "reward"):
        if not policy.is_lora:
            raise ValueError("a shared reward adapter needs a LoRA policy: load_policy(..., lora=True); "
                             "or pass a separate RewardModel")
        reward_dir = Path(reward_dir)
        self.policy, self.adapter_name = policy, adapter_name
        policy.model.load_adapter(str(reward_dir), adapter_name=adapter_name, is_trainable=False)
        self.score_weight = score_weight(reward_dir).to(policy.device)  # (1, H)
        stats = json.loads((reward_dir / NORMALIZATION_FILE).read_text())
        self.mean, self.std = stats["mean"], stats["std"]
        self.max_length = stats.get("max_length", DEFAULT_MAX_LENGTH)

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str], normalized: bool = True,
              batch_size: int = 32) -> torch.Tensor:
        tokenizer, model = self.policy.tokenizer, self.policy.model
        was_training = model.training
        model.eval()  # peft routes per-sample adapters in eval mode only
        raw = []
        for start in range(0, len(prompts), batch_size):
            ids = [reward_ids(tokenizer, p, r, self.max_length) for p, r in
                   zip(prompts[start: start + batch_size], responses[start: start + batch_size])]
            batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding_side="left").to(self.policy.device)
            out = model(**batch, position_ids=left_padded_positions(batch["attention_mask"]), output_hidden_states=True,
                        logits_to_keep=1, adapter_names=[self.adapter_name] * len(ids))
            at = score_positions(batch["input_ids"], tokenizer.pad_token_id)
            hidden = out.hidden_states[-1][torch.arange(len(ids)), at]  # (B, H)
            raw.append((hidden.to(self.score_weight.dtype) @ self.score_weight.T)[:, 0].float().cpu())
        model.train(was_training)
        return (torch.cat(raw) - self.mean) / self.std if normalized else torch.cat(raw)


def checked_scores(scores, n: int, reward) -> torch.Tensor:
    """A reward's output as a float tensor of n finite scores, or an error that names the reward."""
    name = getattr(reward, "__name__", type(reward).__name__)
    if scores is None:
        raise TypeError(f"the reward {name} returned None; it must return one score per response")
    values = torch.as_tensor(scores if isinstance(scores, torch.Tensor) else list(scores), dtype=torch.float32)
    if values.shape != (n,):
        raise ValueError(f"the reward {name} returned scores of shape {tuple(values.shape)} for {n} responses; "
                         f"it must return {n} numbers, one per response")
    bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"the reward {name} returned {values[bad[0]].item()} for {len(bad)} of {n} responses "
                         f"(first at index {bad[0]}); nothing was applied. Fix the reward, or clamp its scores")
    return values


class GoldReward:
    """The tiny world's gold annotator as a reward: PPO against the truth, for comparisons."""

    def __init__(self, gold):
        self.gold = gold

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.tensor([self.gold.score(p, r) for p, r in zip(prompts, responses)])


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
    refuse_to_train_quantized(reward_model.model, hasattr(reward_model.model, "peft_config"), "load_reward_model")
    train_rows = preference_rows(preferences, columns)
    eval_rows = preference_rows(eval_preferences, columns) if eval_preferences is not None else None
    output_dir = Path(config.output_dir)
    live = live or LivePlot(output_dir, title="Reward model", layout="reward")
    tokenizer = reward_model.tokenizer
    args = trl_config(trl.RewardConfig, config, reward_model.device)
    trainer = trl.RewardTrainer(
        model=reward_model.model, args=args, processing_class=tokenizer, callbacks=[live],
        train_dataset=tokenized(train_rows, tokenizer, config.max_length, config.use_margin),
        eval_dataset=tokenized(eval_rows, tokenizer, config.max_length, config.use_margin) if eval_rows else None,
    )
    restore_adapter_dtype(trainer)
    reward_model.max_length = config.max_length
    outcome = fit(trainer, config)
    metrics = {"train/loss": outcome.training_loss, "train/runtime_s": outcome.metrics["train_runtime"]}
    if eval_rows:
        evaluation = evaluate_reward_model(reward_model, eval_rows)
        metrics.update(evaluation["metrics"])
        live.calibration(evaluation["calibration"])
        live.close()  # the page again, now with the calibration chart
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

