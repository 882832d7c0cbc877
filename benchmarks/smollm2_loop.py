"""The iterated RLHF loop on a real instruct model, SmolLM2-135M-Instruct, on the CPU.

    .venv/bin/python benchmarks/smollm2_loop.py [--rounds 2] [--labels 64] [--ppo-steps 8]

SmolLM2 has never seen the tiny world: its first answers to the world's questions are fluent but
off-vocabulary, and the gold annotator scores them low. The loop (`rlhflab.lab.loop.RLHFLoop`, LoRA on
one base, the gold annotator labeling) then runs SFT on a small demonstration budget and
`--rounds` rounds of labels -> reward model -> PPO. Prints the base model's gold mean and one row
per round (gold win-rate against SFT, gold mean, KL to SFT, reward-model agreement with gold, wall
time), and writes benchmarks/results/smollm2_loop.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlhflab import GoldAnnotator, TinyWorld, load_policy  # noqa: E402
from rlhflab.lab.loop import RLHFLoop  # noqa: E402
from rlhflab.lab.stages import RLHFConfig  # noqa: E402
from rlhflab.tiny.task import WorldTask  # noqa: E402
from rlhflab.trainers.embedded import SMOLLM2  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--demonstrations", type=int, default=128)
    parser.add_argument("--labels", type=int, default=64, help="gold labels per round")
    parser.add_argument("--ppo-steps", type=int, default=8, help="PPO steps per round, of 8 responses")
    parser.add_argument("--heldout", type=int, default=32)
    args = parser.parse_args()
    world = TinyWorld(seed=0)
    gold = GoldAnnotator(world)
    config = RLHFConfig(out_dir=tempfile.mkdtemp(), base=SMOLLM2, rounds=args.rounds,
                        n_demonstrations=args.demonstrations, labels_per_round=args.labels, pool_per_label=1,
                        ppo_steps=args.ppo_steps, ppo_batch_size=8, n_heldout=args.heldout)
    started = time.time()
    loop = RLHFLoop(WorldTask(world, gold), config)
    base_answers = load_policy(SMOLLM2).generate(loop.heldout, max_new_tokens=config.response_length, seed=0)
    rows = [{"stage": "base model", "gold/mean": gold.mean_score(loop.heldout, base_answers)}]
    loop.sft()
    rows.append({"stage": "SFT", "gold/mean": gold.mean_score(loop.heldout, loop.sft_responses),
                 "wall_s": time.time() - started})
    print(json.dumps(rows), flush=True)
    for _ in range(args.rounds):
        round_started = time.time()
        metrics = loop.run_round().metrics
        rows.append({"stage": f"round {metrics['round']}", "labels": metrics["labels"],
                     "gold/win_rate_vs_sft": metrics["gold/win_rate_vs_sft"],
                     "gold/mean": metrics["gold/mean"], "kl/to_sft": metrics["kl/to_sft"],
                     "reward/gold_agreement": metrics.get("reward/gold_agreement"),
                     "wall_s": time.time() - round_started})
        print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "smollm2_loop.json").write_text(json.dumps({"config": vars(args), "rows": rows}, indent=2) + "\n")
    print("\n| stage | labels so far | gold win-rate vs SFT | gold mean | KL to SFT (nats) | "
          "reward model's gold agreement | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        def cell(key, form, row=row):
            return form.format(row[key]) if row.get(key) is not None else ""
        print(f"| {row['stage']} | {cell('labels', '{}')} | {cell('gold/win_rate_vs_sft', '{:.1%}')} | "
              f"{cell('gold/mean', '{:.2f}')} | {cell('kl/to_sft', '{:.2f}')} | "
              f"{cell('reward/gold_agreement', '{:.1%}')} | "
              f"{cell('wall_s', '{:.0f}')} |")
    print(f"\ntotal wall time: {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
