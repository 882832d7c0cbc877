"""SFT, best-of-n, DPO and PPO at an equal label budget on the tiny world, and active vs random labeling.

    .venv/bin/python benchmarks/rlhf_methods.py [--labels 800] [--ppo-steps 60] [--heldout 128]

Every method learns from the same gold-labelled pairs of SFT samples (`rlhflab.loop.compare_methods`);
the gold annotator then scores each on held-out prompts: win-rate against SFT (ties count half) and
KL to SFT in nats per response (measured for DPO and PPO, the closed form for best-of-n). The
learning curve (`rlhflab.loop.active_vs_random`) spends the same labels in batches, picked at
random or by reward-model uncertainty, and measures the reward model's agreement with gold on
held-out pairs after each batch. Prints Markdown tables and writes benchmarks/results/rlhf_methods.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlhflab import GoldAnnotator, TinyWorld  # noqa: E402
from rlhflab.loop import active_vs_random, compare_methods  # noqa: E402
from rlhflab.stages import RLHFConfig  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=800, help="gold labels every method learns from")
    parser.add_argument("--ppo-steps", type=int, default=60, help="PPO steps of 16 responses")
    parser.add_argument("--heldout", type=int, default=128, help="held-out prompts")
    parser.add_argument("--batches", type=int, default=4, help="batches of the active-vs-random curve")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    world, started = TinyWorld(seed=0), time.time()
    gold = GoldAnnotator(world)
    with tempfile.TemporaryDirectory() as scratch:
        config = RLHFConfig(out_dir=f"{scratch}/methods", labels_per_round=args.labels, ppo_steps=args.ppo_steps,
                            n_heldout=args.heldout, seed=args.seed)
        methods = compare_methods(world, gold, config, best_of=(4, 16))
        methods_seconds = time.time() - started
        curve = active_vs_random(world, gold, RLHFConfig(out_dir=f"{scratch}/active", n_heldout=args.heldout,
                                                         labels_per_round=args.labels // args.batches, seed=args.seed),
                                 batches=args.batches)
    seconds = time.time() - started

    print(f"\n## Methods at an equal budget of {methods.attrs['labels']} gold labels "
          f"({args.heldout} held-out prompts, {methods_seconds:.0f} s)\n")
    print("| method | gold win-rate vs SFT | KL to SFT (nats) | gold mean | reward mean |\n|---|---|---|---|---|")
    for row in methods.to_dict("records"):
        print(f"| {row['method']} | {row['gold/win_rate_vs_sft']:.1%} | {row['kl/to_sft']:.2f} | {row['gold/mean']:.2f} | "
              f"{row['reward/mean']:.2f} |")
    table = curve.pivot(index="batch", columns="strategy", values="reward/gold_agreement_sft_samples")
    decided = curve.pivot(index="batch", columns="strategy", values="decided_share")
    labels = curve.groupby("batch")["labels"].max()
    print(f"\n## Reward-model agreement with gold per label spent ({seconds - methods_seconds:.0f} s)\n")
    print("| labels | random | active | decided pairs: random | decided pairs: active |\n|---|---|---|---|---|")
    for batch, row in table.iterrows():
        print(f"| {labels[batch]} | {row['random']:.1%} | {row['active']:.1%} | {decided['random'][batch]:.1%} | "
              f"{decided['active'][batch]:.1%} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rlhf_methods.json").write_text(json.dumps({
        "args": vars(args), "seconds": round(seconds, 1), "labels": methods.attrs["labels"],
        "methods": methods.to_dict("records"), "active_vs_random": curve.to_dict("records")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
