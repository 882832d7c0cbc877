"""Every method at an equal label budget on the tiny world, over seeds; and active vs random labeling.

    .venv/bin/python benchmarks/rlhf_methods.py [--labels 800] [--ppo-steps 60] [--heldout 128]
        [--seeds 0 1 2] [--methods dpo kto ilql ppo nlpo rloo grpo] [--best-of 4 16] [--no-active] [--jobs 1]

Every method learns from the same gold-labelled pairs of SFT samples (`rlhflab.loop.compare_methods`);
'KTO (ratings)' learns from as many gold thumbs ratings of single SFT samples instead. The gold
annotator then scores each on held-out prompts: win-rate against SFT (ties count half) and KL to
SFT in nats per response (measured, best-of-n's in closed form). Each seed redraws SFT, the labels,
the training and the held-out samples; the table gives the median and the range over seeds. The
learning curve (`rlhflab.loop.active_vs_random`) spends the same labels in batches, picked at
random or by reward-model uncertainty, and measures the reward model's agreement with gold on
held-out pairs after each batch. `--jobs N` runs N seeds at once in separate processes (a GPU, or a
machine with the cores). Prints Markdown tables and writes benchmarks/results/rlhf_methods.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402

from rlhflab import GoldAnnotator, TinyWorld  # noqa: E402
from rlhflab.loop import active_vs_random, compare_methods  # noqa: E402
from rlhflab.stages import METHODS, RLHFConfig  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"


def spread(values, percent: bool = False) -> str:
    """'median (min-max)' of one metric over seeds."""
    shown = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.2f}")
    values = list(values)
    if len(values) == 1:
        return shown(values[0])
    return f"{shown(statistics.median(values))} ({shown(min(values))}-{shown(max(values))})"


def run_seed(job: tuple) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    """compare_methods (and the active-vs-random curve) for one (args, seed), in a scratch directory."""
    args, seed = job
    world = TinyWorld(seed=0)
    gold = GoldAnnotator(world)
    seconds, curve = {}, None
    with tempfile.TemporaryDirectory() as scratch:
        started = time.time()
        config = RLHFConfig(out_dir=f"{scratch}/methods", labels_per_round=args.labels, ppo_steps=args.ppo_steps,
                            n_heldout=args.heldout, seed=seed)
        table = compare_methods(world, gold, config, best_of=tuple(args.best_of), methods=tuple(args.methods))
        table = table.assign(seed=seed, labels=table.attrs["labels"])
        seconds[f"methods seed {seed}"] = round(time.time() - started, 1)
        if not args.no_active:
            started = time.time()
            curve = active_vs_random(world, gold, RLHFConfig(out_dir=f"{scratch}/active", seed=seed,
                                                             n_heldout=args.heldout,
                                                             labels_per_round=args.labels // args.batches),
                                     batches=args.batches).assign(seed=seed)
            seconds[f"active seed {seed}"] = round(time.time() - started, 1)
    return table, curve, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=800, help="gold labels every method learns from")
    parser.add_argument("--ppo-steps", type=int, default=60, help="PPO steps of 16 responses")
    parser.add_argument("--heldout", type=int, default=128, help="held-out prompts")
    parser.add_argument("--batches", type=int, default=4, help="batches of the active-vs-random curve")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["dpo", "kto", "ilql", "ppo", "nlpo", "rloo", "grpo"],
                        choices=METHODS)
    parser.add_argument("--best-of", type=int, nargs="*", default=[4, 16], help="n of best-of-n rows (none: skip)")
    parser.add_argument("--no-active", action="store_true", help="skip the active-vs-random curve")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, each in its own process")
    args = parser.parse_args()

    runs = []
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for run in pool.imap_unordered(run_seed, [(args, seed) for seed in args.seeds]):
            print(run[0].to_string(), run[2], flush=True)  # each seed as it finishes
            runs.append(run)
    tables = [table for table, _, _ in runs]
    curves = [curve for _, curve, _ in runs if curve is not None]
    seconds = {name: value for _, _, timings in runs for name, value in timings.items()}
    methods = pd.concat(tables)
    order = list(dict.fromkeys(methods["method"]))
    print(f"\n## Methods at an equal budget of {args.labels} gold labels, {len(args.seeds)} seeds "
          f"({args.heldout} held-out prompts; median (range))\n")
    print("| method | gold win-rate vs SFT | KL to SFT (nats) | gold mean |\n|---|---|---|---|")
    for name in order:
        rows = methods[methods["method"] == name]
        print(f"| {name} | {spread(rows['gold/win_rate_vs_sft'], percent=True)} | {spread(rows['kl/to_sft'])} | "
              f"{spread(rows['gold/mean'])} |")
    result = {"args": vars(args), "seconds": seconds, "device": device_name(), "methods": methods.to_dict("records")}
    if curves:
        curve = pd.concat(curves)
        print("\n## Reward-model agreement with gold per label spent (median (range) over seeds)\n")
        print("| labels | random | active | decided pairs: random | decided pairs: active |\n|---|---|---|---|---|")
        for batch, rows in curve.groupby("batch"):
            cells = [spread(rows[rows["strategy"] == s][column], percent=True)
                     for column in ("reward/gold_agreement_sft_samples", "decided_share") for s in ("random", "active")]
            print(f"| {int(rows['labels'].median())} | " + " | ".join(cells) + " |")
        result["active_vs_random"] = curve.to_dict("records")
    print(f"\n{device_name()}; seconds:", seconds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rlhf_methods.json").write_text(json.dumps(result, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
