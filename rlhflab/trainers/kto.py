"""Kahneman-Tversky Optimisation (Ethayarajh et al. 2024): learn from unpaired thumbs up / down.

A chat product collects one verdict per answer, not comparisons. KTO learns from such rows
(prompt, completion, desirable or not) with the loss, per row,

    desirable:    w_D (1 - sigmoid(beta (log pi(y|x) / ref(y|x) - z)))
    undesirable:  w_U (1 - sigmoid(beta (z - log pi(y|x) / ref(y|x))))

where z is an estimate of KL(pi || ref) from mismatched prompt / completion pairs of the batch
(Ethayarajh et al. 2024, eq. 8). We build on TRL's KTOTrainer:

- Rows come from a `LabelStore` (`rlhflab.labeling.exports.kto_rows`): every thumbs rating of the playground,
  and every decided pair as chosen = desirable, rejected = undesirable. Or from any DataFrame,
  Dataset or list of rows with prompt / completion / label.
- As for DPO, a LoRA policy loaded on a trained adapter keeps a frozen copy of it as the reference,
  and a 4-bit base needs LoRA (QLoRA).
- The paper asks for w_D n_D / (w_U n_U) in [1, 4/3] (sec. 4.2); `balance` sets w_D from the counts
  so that ratings with more downs than ups still train.
- TRL's `rewards/chosen`, `rewards/rejected`, `rewards/margins` and `kl` go to the live plot.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import trl

from ..labeling.exports import kto_rows
from ..labeling.records import REPLIES, as_rows
from ..labeling.store import LabelStore
from .live import LivePlot
from .models import Policy
from .training import (TrainingConfig, chat_dataset, last_logged, refuse_to_train_quantized, train_against_reference,
                       trl_config)

__all__ = ["LOGGED", "KTOConfig", "KTOResult", "kto_data", "train_kto"]

LOGGED = ("rewards/chosen", "rewards/rejected", "rewards/margins", "kl")


@dataclass
class KTOConfig(TrainingConfig):
    """Settings of one KTO run (and `TrainingConfig`'s). The batch size matters more than elsewhere: the KL
    estimate pairs each row with another of its batch."""

    output_dir: str = "runs/kto"  # the adapter (peft format) or full model, tokenizer and metrics
    learning_rate: float = 5e-4  # peak rate; LoRA takes ~5e-4 here, full fine-tuning ~5e-7
    beta: float = 0.1  # strength of the implicit KL penalty to the reference (Ethayarajh et al. used 0.1)
    balance: bool = True  # weigh desirable rows by n_undesirable / n_desirable when there are fewer of them
    max_length: int = 256  # tokens per prompt + completion; longer ones are truncated


@dataclass
class KTOResult:
    metrics: dict  # 'train/loss', 'train/runtime_s', 'rows/desirable', 'rows/undesirable' and the last LOGGED values
    output_dir: Path  # where the adapter (peft format) or full model was saved


def kto_data(feedback, columns: dict | None = None, include_flagged: bool = True) -> list[dict]:
    """prompt / completion / label rows from a LabelStore or from rows a user hands in."""
    if isinstance(feedback, LabelStore):
        feedback = kto_rows(feedback, include_flagged)
        if not feedback:
            raise ValueError("the label store holds no thumbs ratings or decided pairs yet; rate answers in the "
                             "playground (PairwiseLabeler(..., playground=[policy])) or label some pairs first")
    columns = dict(columns or {})
    label = columns.pop("label", "label")
    rows = as_rows(feedback, ["prompt", "completion"], columns, what="KTO rows", optional=[label], allow_empty=REPLIES)
    for index, row in enumerate(rows):
        if not isinstance(row[label], bool):
            raise ValueError(f"KTO rows row {index}: {label!r} must be True (thumbs up) or False (thumbs down), not "
                             f"{row[label]!r}; pass columns={{'label': ...}} to name the column that holds it")
    return [{"prompt": r["prompt"], "completion": r["completion"], "label": r[label]} for r in rows]


def spread_prompts(rows: list[dict], seed: int) -> list[dict]:
    """`rows` in a seeded order in which neighbours have different prompts wherever the data allows.

    TRL's KTOTrainer estimates its KL reference point from mismatched (prompt, completion) pairs: it gives
    each row the completion of the row before it in its batch (`KL_completion_ids`, rotated by one, in the
    dataset's order). `kto_rows` writes a pair's chosen and rejected rows one after the other, so half the
    "mismatched" pairs were a prompt with its own other reply. Dealing the prompts out round-robin, each
    round in one seeded order, keeps neighbours apart; the trainer still shuffles the rows each epoch.
    """
    rng = random.Random(f"kto:{seed}")
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_prompt[row["prompt"]].append(row)
    groups = list(by_prompt.values())
    rng.shuffle(groups)
    for group in groups:
        rng.shuffle(group)
    spread = []
    while groups:
        spread += [group.pop() for group in groups]
        groups = [group for group in groups if group]
    return spread


def train_kto(policy: Policy, feedback, config: KTOConfig | None = None, *, columns: dict | None = None,
              include_flagged: bool = True, live: LivePlot | None = None) -> KTOResult:
    """Train `policy` in place with KTO on thumbs up / down rows, save it, and return its metrics.

    Args:
        policy: from `load_policy`, usually `load_policy(base, lora=True, adapter=sft_dir)`, so the
            adapter starts from SFT and a frozen copy of it is the reference.
        feedback: a `LabelStore` (ratings and decided pairs), or a DataFrame / Dataset / list of dicts
            with prompt, completion and label (True: thumbs up).
        columns: maps the column names to others, e.g. {'completion': 'response', 'label': 'thumbs_up'}.
        include_flagged: from a store, keep rows whose completion was flagged.
        live: a LivePlot for the implicit rewards and the KL estimate; by default one writing to `output_dir`.

    Examples:
        >>> policy = load_policy("tiny", lora=True, adapter="runs/sft")  # doctest: +SKIP
        >>> result = train_kto(policy, store, KTOConfig(max_steps=20))  # doctest: +SKIP
    """
    config = config or KTOConfig()
    refuse_to_train_quantized(policy.model, policy.is_lora, "load_policy")
    rows = kto_data(feedback, columns, include_flagged)
    desirable = sum(r["label"] for r in rows)
    undesirable = len(rows) - desirable
    if not desirable or not undesirable:
        raise ValueError(f"KTO needs both thumbs up and thumbs down; these rows hold {desirable} up and "
                         f"{undesirable} down. Rate some answers the other way, or add decided pairs")
    if config.batch_size < 2:
        raise ValueError("KTO estimates its KL term from other rows of the batch: batch_size must be 2 or more")
    output_dir = Path(config.output_dir)
    live = live or LivePlot(output_dir, title="KTO", layout="kto")
    weight = max(1.0, undesirable / desirable) if config.balance else 1.0
    args = trl_config(trl.KTOConfig, config, policy.device, beta=config.beta, desirable_weight=weight)
    trainer = trl.KTOTrainer(model=policy.model, args=args,
                             train_dataset=chat_dataset(spread_prompts(rows, config.seed), ("completion",),
                                                        keep=("label",)),
                             processing_class=policy.tokenizer, callbacks=[live])
    outcome = train_against_reference(trainer, policy, config)
    return KTOResult({"train/loss": outcome.training_loss, "train/runtime_s": outcome.metrics["train_runtime"],
                      "rows/desirable": desirable, "rows/undesirable": undesirable,
                      **last_logged(trainer, LOGGED)}, output_dir)
