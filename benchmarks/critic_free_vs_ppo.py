"""RLOO and GRPO (TRL's trainers, `rlhflab.trainers.critic_free`) side by side with our PPO: speed and memory.

    .venv/bin/python benchmarks/critic_free_vs_ppo.py [--model gpt2-small-scale|smollm2] [--steps 2] [--repeats 3]

The same settings for all three: a LoRA policy (r 16, every linear layer), a separate reward model of
the same shape, batch 16, 32-token responses, 4 epochs over each batch in minibatches of 8, learning
rate 1e-4. PPO adds what the critic-free methods do without: a value head on the policy's trunk
and its GAE; RLOO / GRPO sample 4 responses per prompt (4 prompts a batch) and keep the SFT
adapter's frozen copy as the KL reference. Each measurement runs in a fresh process, the methods
interleaved per repeat: samples (responses) per second over `--steps` steps (building the trainer
and saving the result included, for every method), and the largest
anonymous RSS sampled while training (`RssAnon`, which leaves out memory-mapped checkpoints). Models:
a random Llama of GPT-2-small scale (12 layers x 768, the tiny tokenizer) or SmolLM2-135M-Instruct
(`rlhflab.trainers.embedded`). Prints the median (range) and the ratio to PPO; writes
benchmarks/results/critic_free_vs_ppo.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from ppo_vs_trl import (BATCH, EPOCHS, MEMORY, RESPONSE_LENGTH, build_models, prompts, run_worker, smollm2_models,
                        while_sampling)

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("ppo", "rloo", "grpo")
MINI_BATCH, GROUP, LEARNING_RATE = 8, 4, 1e-4


def train(method: str, model_dir: Path, steps: int) -> dict:
    """One measurement, in this (fresh) process: load, then time `steps` steps of `method`."""
    import torch

    from rlhflab import load_policy
    from rlhflab.trainers.critic_free import CriticFreeConfig, train_critic_free
    from rlhflab.trainers.ppo import PPOConfig, PPOTrainer
    from rlhflab.trainers.reward import load_reward_model

    torch.manual_seed(0)
    policy = load_policy(str(model_dir / "policy"), lora=True, device="cpu")
    reward = load_reward_model(str(model_dir / "reward_adapter"), device="cpu")
    output_dir = tempfile.mkdtemp()
    if method == "ppo":
        config = PPOConfig(output_dir=output_dir, steps=steps, batch_size=BATCH, mini_batch_size=MINI_BATCH,
                           ppo_epochs=EPOCHS, response_length=RESPONSE_LENGTH, learning_rate=LEARNING_RATE,
                           save_every=10**9, sample_every=10**9)
        def work():  # building the trainer is timed for every method: TRL's builds its reference copy there
            return PPOTrainer(policy, prompts(model_dir), reward, config).train()
    else:
        config = CriticFreeConfig(method=method, output_dir=output_dir, max_steps=steps, batch_size=BATCH,
                                  mini_batch_size=MINI_BATCH, ppo_epochs=EPOCHS, num_generations=GROUP,
                                  learning_rate=LEARNING_RATE, max_completion_length=RESPONSE_LENGTH)

        def work():
            return train_critic_free(policy, prompts(model_dir), reward, config)
    run = while_sampling(work)
    return {"samples_per_s": BATCH * steps / run["seconds"], "seconds": run["seconds"],
            "rss_anon_mb": run["rss_anon_mb"]}


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        method, model_dir, steps = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(train(method, model_dir, steps)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["gpt2-small-scale", "smollm2"], default="gpt2-small-scale")
    parser.add_argument("--steps", type=int, default=2, help="steps of 16 responses per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every method")
    args = parser.parse_args()
    runs = {method: [] for method in METHODS}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "models"
        model_dir = smollm2_models(root) if args.model == "smollm2" else build_models(root, **MEMORY)
        for repeat in range(args.repeats):
            for method in METHODS:
                worker = [method, str(model_dir), str(args.steps)]
                runs[method].append(run_worker(Path(sys.executable), worker, script=Path(__file__)))
                print(f"repeat {repeat + 1}: {method}: {json.dumps(runs[method][-1])}", flush=True)
    ppo = {key: statistics.median(r[key] for r in runs["ppo"]) for key in ("samples_per_s", "rss_anon_mb")}
    print(f"\n## RLOO and GRPO vs our PPO, {args.model}, LoRA, batch {BATCH} x {RESPONSE_LENGTH} tokens, "
          f"{EPOCHS} epochs of minibatch {MINI_BATCH}, {args.steps} steps, {args.repeats} repeats (median (range))\n")
    print("| method | samples/s | RssAnon MB | speed vs PPO | memory vs PPO |\n|---|---|---|---|---|")
    for method, results in runs.items():
        speed = [r["samples_per_s"] for r in results]
        memory = [r["rss_anon_mb"] for r in results]
        print(f"| {method.upper()} | {statistics.median(speed):.2f} ({min(speed):.2f}-{max(speed):.2f}) | "
              f"{statistics.median(memory):,.0f} ({min(memory):,.0f}-{max(memory):,.0f}) | "
              f"{statistics.median(speed) / ppo['samples_per_s']:.2f}x | "
              f"{statistics.median(memory) / ppo['rss_anon_mb']:.2f}x |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "critic_free_vs_ppo.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
