"""Pretrain the tiny world's base model: RLHF's pretraining phase, in miniature.

    python -m rlhflab.tiny.build            # rebuilds rlhflab/tiny/model/ (about 12 minutes on 2 CPU cores)

It trains a byte-level BPE tokenizer and a Llama-architecture causal LM on the world's corpus
(true fact paragraphs plus chat transcripts of mixed quality), then saves both as safetensors
with a chat template. Seeds and deterministic kernels make a rebuild reproduce the weights.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .assets import CHAT_TEMPLATE, MODEL_DIR, PAD_TAG
from .world import ASSISTANT_TAG, END_TAG, USER_TAG, TinyWorld

__all__ = ["PretrainConfig", "main"]


@dataclass
class PretrainConfig:
    """Settings of the base model and its pretraining run."""

    seed: int = 0  # seeds the world, the corpus, the weights and the batch order
    n_documents: int = 60_000  # corpus size in documents (~35 tokens each)
    vocab_size: int = 2048  # BPE vocabulary, special tokens included
    hidden_size: int = 192  # width of the residual stream
    intermediate_size: int = 512  # width of the SwiGLU MLP
    num_hidden_layers: int = 6  # transformer blocks
    num_attention_heads: int = 6  # query heads (head size 32)
    num_key_value_heads: int = 2  # grouped-query attention, as in Llama 2/3 and Qwen 2
    block_size: int = 128  # tokens per packed training sequence
    batch_size: int = 32  # sequences per optimizer step
    steps: int = 1000  # optimizer steps
    learning_rate: float = 3e-3  # peak AdamW learning rate (cosine decay, 5% warm-up)


def train_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TAG, END_TAG, USER_TAG, ASSISTANT_TAG],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte stays encodable
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=END_TAG, pad_token=PAD_TAG,
                                        padding_side="left", model_max_length=256)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def packed_blocks(tokenizer, corpus: list[str], block_size: int) -> torch.Tensor:
    """Concatenate every document (each ending in <|end|>) and cut into equal blocks."""
    ids: list[int] = []
    for document in corpus:
        text = document if document.endswith(END_TAG) else document + END_TAG
        ids += tokenizer(text + "\n")["input_ids"]
    n_blocks = len(ids) // block_size
    return torch.tensor(ids[: n_blocks * block_size]).view(n_blocks, block_size)  # (N, T)


def pretrain(config: PretrainConfig, out_dir: Path = MODEL_DIR) -> dict:
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    world = TinyWorld(seed=config.seed)
    corpus = world.pretraining_corpus(config.n_documents, seed=config.seed)
    tokenizer = train_tokenizer(corpus, config.vocab_size)
    blocks = packed_blocks(tokenizer, corpus, config.block_size)

    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    ))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.1)
    warmup = max(1, config.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(s / config.steps, 1.0)))))
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(config.seed))
    holdout = blocks[order[:64]]  # (64, T) never trained on
    train = blocks[order[64:]]

    model.train()
    started = time.time()
    for step in range(config.steps):
        start = (step * config.batch_size) % (len(train) - config.batch_size)
        batch = train[start: start + config.batch_size]  # (B, T)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == config.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  {time.time() - started:.0f}s", flush=True)

    model.eval()
    with torch.no_grad():
        holdout_loss = model(input_ids=holdout, labels=holdout).loss.item()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    report = {"config": asdict(config), "parameters": sum(p.numel() for p in model.parameters()),
              "corpus_tokens": int(blocks.numel()), "holdout_loss": round(holdout_loss, 4),
              "seconds": round(time.time() - started)}
    (out_dir / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=MODEL_DIR, help="where to write the model")
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps, help="optimizer steps")
    parser.add_argument("--documents", type=int, default=PretrainConfig.n_documents, help="corpus size")
    args = parser.parse_args()
    report = pretrain(PretrainConfig(steps=args.steps, n_documents=args.documents), args.out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
