"""`make demo`'s loop over seeds: does any round's gold win-rate fall below the round before?

    .venv/bin/python benchmarks/loop_rounds.py [--seeds 0 1 2] [--jobs 3] [--rounds 3] [--set key=value ...]

Runs `RLHFLoop` with `RLHFConfig`'s defaults, which are the quickstart notebook's (and so `make
demo`'s) sizes: SFT on 128 demonstrations, 3 rounds of 300 gold labels, 16 PPO steps of 16
responses per round, 48 held-out prompts. Each seed redraws SFT, the labels, the training and the
held-out samples. `--set` overrides RLHFConfig fields (say, `--set n_heldout=128 kl_coef=0.1`),
so a variant and the defaults run side by side. Prints each round per
seed and the largest fall of the gold win-rate from one round to the next, and writes
benchmarks/results/loop_rounds.json. `--jobs N` runs N seeds at once, each in its own process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlhflab import TinyWorld  # noqa: E402
from rlhflab.lab.loop import RLHFLoop  # noqa: E402
from rlhflab.lab.stages import RLHFConfig  # noqa: E402
from rlhflab.tiny.task import WorldTask  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHOWN = ("round", "labels", "gold/win_rate_vs_sft", "gold/mean", "kl/to_sft", "reward/gold_agreement")


def overrides(pairs: list[str]) -> dict:
    """'key=value' pairs as RLHFConfig fields, each value read as its field's declared type."""
    fields = {f.name: f for f in dataclasses.fields(RLHFConfig)}
    parsed = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in fields:
            raise SystemExit(f"--set {pair}: RLHFConfig has no field {key!r}; fields: {', '.join(fields)}")
        kind = str(fields[key].type)  # a string: this module and rlhflab.lab.stages use postponed annotations
        if value == "None" and "None" in kind:
            parsed[key] = None
        elif kind == "bool":
            parsed[key] = value.lower() in ("1", "true", "yes")
        else:
            parsed[key] = next(cast for name, cast in (("int", int), ("float", float), ("str", str))
                               if kind.startswith(name))(value)
    return parsed


def run_seed(job: tuple) -> dict:
    """The whole loop for one (seed, rounds, overrides) in a scratch directory: its rounds' metrics."""
    seed, rounds, fields = job
    world = TinyWorld(seed=0)
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        loop = RLHFLoop(WorldTask(world), RLHFConfig(out_dir=scratch, seed=seed, rounds=rounds, **fields))
        loop.run()
        sft_gold = sum(loop.baseline.gold_scores) / len(loop.baseline.gold_scores)
    return {"seed": seed, "seconds": round(time.time() - started, 1), "sft_gold_mean": sft_gold,
            "rounds": [{k: r.metrics[k] for k in SHOWN} for r in loop.results]}


def largest_fall(run: dict) -> float:
    """The largest drop of gold win-rate from a round to the next (negative: it only rose)."""
    rates = [r["gold/win_rate_vs_sft"] for r in run["rounds"]]
    return max((a - b for a, b in zip(rates, rates[1:])), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, each in its own process")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="RLHFConfig fields to override")
    parser.add_argument("--out", default=str(RESULTS / "loop_rounds.json"))
    args = parser.parse_args()
    fields = overrides(args.set)
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        runs = sorted(pool.map(run_seed, [(seed, args.rounds, fields) for seed in args.seeds]),
                      key=lambda run: run["seed"])
    print(f"\n## make demo's loop, {len(runs)} seeds, overrides {fields or 'none'}\n")
    print("| seed | round | labels | gold win-rate vs SFT | gold mean | KL to SFT (nats) | "
          "reward model's gold agreement |\n|---|---|---|---|---|---|---|")
    for run in runs:
        for r in run["rounds"]:
            print(f"| {run['seed']} | {r['round']} | {r['labels']} | {r['gold/win_rate_vs_sft']:.1%} | "
                  f"{r['gold/mean']:.2f} | {r['kl/to_sft']:.2f} | {r['reward/gold_agreement']:.1%} |")
    falls = {run["seed"]: largest_fall(run) for run in runs}
    print("\nlargest fall of gold win-rate from one round to the next, per seed:",
          {seed: f"{fall:+.1%}" for seed, fall in falls.items()},
          "| seconds:", {run["seed"]: run["seconds"] for run in runs})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"overrides": fields, "runs": runs, "largest_fall": falls}, indent=2) + "\n")


if __name__ == "__main__":
    main()
