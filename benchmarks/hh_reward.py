"""A SmolLM2-135M LoRA reward model on HH-RLHF harmless-base, read as conversations: held-out accuracy.

    .venv/bin/python benchmarks/hh_reward.py [--hh PATH] [--train 512] [--test 256] [--seeds 0 1 2]

Each seed shuffles the 2,312 comparisons of HH-RLHF harmless-base's test split differently: `--test` of them
are held out, and `--train` others, whose dialogues the held-out ones never share, train a LoRA reward model
(one epoch, the model's chat template on every turn, at most `--max-length` tokens, keeping the end). The
held-out accuracy is the share of unseen human pairs the model orders as people did, with its Wilson 95%
interval. Prints one JSON line per seed, then the median and range over every seed measured so far (seeds
may run in separate calls); writes benchmarks/results/hh_reward_seed<n>.json and the summary hh_reward.json,
and each seed's reward model to benchmarks/results/hh_reward_seed<n>/ (`hh_loop.py` takes seed 0's as its gold).
HH-RLHF is read from ../shared (never copied into the repo) or `--hh`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlhflab.labeling.metrics import wilson_interval  # noqa: E402
from rlhflab.labeling.records import read_hh_rlhf  # noqa: E402
from rlhflab.trainers.embedded import SMOLLM2  # noqa: E402
from rlhflab.trainers.reward import (RewardConfig, evaluate_reward_model, load_reward_model,  # noqa: E402
                                    train_reward_model)

ROOT = Path(__file__).parent.parent
HH = ROOT.parent / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
RESULTS = Path(__file__).parent / "results"


def split(rows: list[dict], train: int, test: int, seed: int) -> tuple[list[dict], list[dict]]:
    """`test` held-out comparisons and `train` others, no dialogue in both."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    heldout = rows[:test]
    unseen = {row["prompt"] for row in heldout}
    return [row for row in rows[test:] if row["prompt"] not in unseen][:train], heldout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hh", type=Path, default=HH)
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--test", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    rows = read_hh_rlhf(args.hh)
    RESULTS.mkdir(exist_ok=True)
    for seed in args.seeds:
        train, heldout = split(rows, args.train, args.test, seed)
        started = time.time()
        reward_model = load_reward_model(SMOLLM2, lora=True)
        train_reward_model(reward_model, train, RewardConfig(output_dir=str(RESULTS / f"hh_reward_seed{seed}"),
                                                             batch_size=8, max_length=args.max_length, seed=seed))
        trained_s = time.time() - started
        accuracy = evaluate_reward_model(reward_model, heldout)["metrics"]["eval/accuracy"]
        low, high = wilson_interval(round(accuracy * len(heldout)), len(heldout))
        result = {"seed": seed, "train_pairs": len(train), "test_pairs": len(heldout), "max_length": args.max_length,
                  "accuracy": accuracy, "low": low, "high": high, "train_s": trained_s, "wall_s": time.time() - started}
        (RESULTS / f"hh_reward_seed{seed}.json").write_text(json.dumps(result) + "\n")  # seeds may run apart
        print(json.dumps(result), flush=True)
    results = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("hh_reward_seed*.json"))]
    accuracies = [r["accuracy"] for r in results]
    summary = {"seeds": [r["seed"] for r in results], "median": statistics.median(accuracies),
               "min": min(accuracies), "max": max(accuracies)}
    print(json.dumps(summary))
    (RESULTS / "hh_reward.json").write_text(json.dumps({**summary, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
