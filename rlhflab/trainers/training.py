"""What every TRL-backed stage (SFT, reward model, DPO, KTO, RLOO, GRPO) shares, written once: the fields of
its config (`TrainingConfig`), their mapping onto the stage's `trl.*Config`, the device and precision rule (also
for the adapters TRL casts), the QLoRA refusal, checkpoints and resuming, training against a frozen copy of the
starting adapter, and saving.

Each stage's config adds its own fields (DPO's beta, SFT's warmup) to `TrainingConfig`'s, and passes the
TRL fields they set through `trl_config(..., **fields)`; `TrainingConfig.trl_args` passes any other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from transformers.trainer_utils import get_last_checkpoint

from ..labeling.records import as_messages
from .models import keep_trainable_weights_in_adapter_dtype, precision_for

__all__ = ["TrainingConfig", "chat_dataset", "refuse_to_train_quantized", "trl_config", "fit", "restore_adapter_dtype",
           "save_trained", "train_against_reference", "last_logged"]


@dataclass
class TrainingConfig:
    """The settings every TRL-backed stage shares; each stage's config (`SFTConfig`, `RewardConfig`,
    `DPOConfig`, `KTOConfig`, `CriticFreeConfig`) adds its own and its defaults.

    `report_to` takes transformers' integrations: "tensorboard" (event files under output_dir/runs/), "wandb",
    "mlflow", "trackio" or "all", each where its package is installed. With `save_steps`, a checkpoint lands in
    output_dir/checkpoint-<step> every that many optimizer steps, and `resume=True` continues from the last
    one after a crash or a kill. `trl_args` sets any other field of the `trl.*Config`, e.g.
    {"weight_decay": 0.01} (it wins over the fields above).
    """

    output_dir: str = "runs/train"  # what the stage trained, its tokenizer and metrics go here
    epochs: float = 1.0  # passes over the data
    max_steps: int = -1  # stop after this many optimizer steps (-1: run all epochs)
    batch_size: int = 16  # rows per device per step
    learning_rate: float = 1e-3  # peak rate (LoRA)
    logging_steps: int = 5  # log (and plot) every this many steps
    seed: int = 0  # seeds the shuffling and any new weights
    report_to: str | list[str] = "none"  # "tensorboard", "wandb", "mlflow", "trackio", "all" or "none"
    save_steps: int = 0  # a checkpoint every this many optimizer steps (0: none)
    resume: bool = False  # continue from output_dir's last checkpoint, if it has one
    trl_args: dict = field(default_factory=dict)  # any other trl.*Config field, passed as is


def chat_dataset(rows: list[dict], replies: tuple[str, ...], keep: tuple[str, ...] = ()) -> Dataset:
    """Chat-form rows, so TRL applies the policy's chat template: the prompt as its turns (`as_messages`), each
    of `replies` (e.g. chosen and rejected) as an assistant turn, and the `keep` columns as they are."""
    return Dataset.from_list([{"prompt": as_messages(r["prompt"]),
                               **{name: [{"role": "assistant", "content": r[name]}] for name in replies},
                               **{name: r[name] for name in keep}} for r in rows])


def refuse_to_train_quantized(model: torch.nn.Module, is_lora: bool, loader: str) -> None:
    """4-bit and 8-bit weights cannot take gradient steps; only a LoRA adapter on them can (QLoRA)."""
    if getattr(model, "is_quantized", False) and not is_lora:
        raise ValueError(f"a 4-bit or 8-bit model cannot be trained directly; load it with {loader}(..., lora=True) "
                         "to train a LoRA adapter on it (QLoRA)")


def trl_config(trl_config_class, config: TrainingConfig, device: str | torch.device, recompute: bool = True,
               **fields):
    """`trl_config_class` (e.g. `trl.DPOConfig`) from a stage config, training where the weights are and in
    the device's precision (`rlhflab.trainers.models.precision_for`): fp32 on a CPU, bf16 on Ampere and newer,
    fp16 with loss scaling on a T4. Checkpoints only with `save_steps`: the stage saves what it trained.
    Activations are recomputed in the backward pass only on a GPU, and never with `recompute=False`."""
    shared = dict(output_dir=str(config.output_dir), num_train_epochs=config.epochs, max_steps=config.max_steps,
                  per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
                  learning_rate=config.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05,
                  logging_steps=config.logging_steps, seed=config.seed, report_to=config.report_to,
                  **({"save_strategy": "steps", "save_steps": config.save_steps} if config.save_steps
                     else {"save_strategy": "no"}), **precision_for(device).trainer_args())
    # Recompute activations in the backward pass on a GPU, where memory runs out first (TRL's default); on a
    # CPU, RAM is large next to the compute and recomputing only costs time (96 labels, tiny model, one
    # thread: DPO 16.6 s with, 14.4 s without; KTO 24.2 s, 20.7 s). Set under transformers' new name where
    # it has one (5.2x): left unset, TRL's `gradient_checkpointing=True` sets it through the deprecated
    # one, and a FutureWarning lands in every notebook. Earlier 5.x releases (5.17 on a GPU image) know
    # only the old name and refuse the new one.
    names = {field.name for field in dataclasses.fields(trl_config_class)}
    recompute = recompute and torch.device(device).type == "cuda"
    shared["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = recompute
    if hasattr(config, "max_length"):  # RLOO and GRPO cap the completion instead
        shared["max_length"] = config.max_length
    unknown = sorted(set(config.trl_args) - names)
    if unknown:
        raise ValueError(f"trl_args names {', '.join(map(repr, unknown))}, which {trl_config_class.__name__} does not "
                         "have; see its fields in TRL's documentation")
    return trl_config_class(**{**shared, **fields, **config.trl_args})


def fit(trainer, config: TrainingConfig):
    """`trainer.train()`, from output_dir's last checkpoint when `config.resume` finds one; returns TRL's
    TrainOutput."""
    last = get_last_checkpoint(config.output_dir) if config.resume and Path(config.output_dir).is_dir() else None
    return trainer.train(resume_from_checkpoint=last)


def restore_adapter_dtype(trainer) -> None:
    """Put a TRL trainer's trainable weights back in the device's adapter dtype: TRL casts a quantized
    model's adapters to bf16 (QLoRA's choice), which a CPU or a T4 (fp16 with a GradScaler) cannot train."""
    keep_trainable_weights_in_adapter_dtype(trainer.model)


def save_trained(trainer, output_dir: Path, tokenizer) -> None:
    """The adapter (peft's adapter_model.safetensors + adapter_config.json) or the full model, and the
    tokenizer; TRL's training_args.bin is a pickle nothing of ours reads, so it is removed."""
    trainer.save_model(str(output_dir))
    (Path(output_dir) / "training_args.bin").unlink(missing_ok=True)
    tokenizer.save_pretrained(output_dir)


def train_against_reference(trainer, policy, config: TrainingConfig):
    """Train a TRL preference trainer (DPO, KTO) and save what it trained; returns TRL's TrainOutput.

    With a LoRA policy loaded on a trained adapter, TRL keeps a frozen copy of that adapter, named
    'ref', as the reference; it is dropped before saving, so only the trained adapter is written.
    """
    restore_adapter_dtype(trainer)
    outcome = fit(trainer, config)
    if policy.is_lora and "ref" in policy.model.peft_config:
        policy.model.delete_adapter("ref")
    save_trained(trainer, Path(config.output_dir), policy.tokenizer)
    policy.model.eval()
    return outcome


def last_logged(trainer, names: tuple[str, ...]) -> dict:
    """The last logged value of each metric (NaN when it was never logged)."""
    return {name: next((entry[name] for entry in reversed(trainer.state.log_history) if name in entry), float("nan"))
            for name in names}
