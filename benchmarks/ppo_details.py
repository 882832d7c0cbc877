"""PPO's implementation details on the tiny world, scored by gold: the learning-rate schedule
(constant or linear decay) and the value model (a head on the policy's trunk, or its own adapter
initialised from the reward model).

    .venv/bin/python benchmarks/ppo_details.py [--seeds 0 1 2] [--ppo-steps 32]

One SFT adapter and one reward model (`rlhflab.tiny.recipe` at its quick sizes) serve every run;
each run is PPO from SFT with one variant and one seed, scored on the held-out prompts: gold
win-rate against SFT, gold mean, KL to SFT and wall time. Runs of the variants alternate. Prints a
Markdown table of per-seed values and their mean; writes benchmarks/results/ppo_details.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlhflab import GoldAnnotator, TinyWorld  # noqa: E402
from rlhflab.tiny.recipe import (RecipeConfig, compare_with_sft, heldout_prompts, ppo_trainer,  # noqa: E402
                                 reward_stage, sft_stage)

RESULTS = Path(__file__).parent / "results"
VARIANTS = {  # name: PPOConfig fields
    "constant lr, value head": dict(lr_schedule="constant", value_model="head"),
    "linear lr, value head": dict(lr_schedule="linear", value_model="head"),
    "constant lr, value adapter": dict(lr_schedule="constant", value_model="adapter"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ppo-steps", type=int, default=32)
    args = parser.parse_args()
    world = TinyWorld(seed=0)
    gold = GoldAnnotator(world)
    config = RecipeConfig.quick(tempfile.mkdtemp(), ppo_steps=args.ppo_steps)
    sft_dir = sft_stage(world, config)
    reward_dir, _ = reward_stage(world, gold, sft_dir, config)
    rows = []
    for seed in args.seeds:
        for variant, fields in VARIANTS.items():
            run = replace(config, seed=seed, out_dir=str(Path(config.out_dir) / f"{len(rows)}"))
            started = time.perf_counter()
            trainer = ppo_trainer(world, gold, sft_dir, reward_dir, run, ppo_fields=fields)
            trainer.train()
            seconds = time.perf_counter() - started
            outcome = compare_with_sft(trainer, gold, sft_dir, heldout_prompts(world, config), run)
            rows.append({"variant": variant, "seed": seed, "ppo_seconds": seconds,
                         "gold_win_rate_vs_sft": outcome["ppo/gold_win_rate_vs_sft"],
                         "gold_mean": outcome["ppo/gold_mean"], "kl_to_sft": outcome["ppo/kl_to_sft"],
                         "sft_gold_mean": outcome["sft/gold_mean"]})
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ppo_details.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| variant | gold win-rate vs SFT (per seed; mean) | gold mean | KL to SFT (nats) | PPO time (s) |"
          "\n|---|---|---|---|---|")
    for variant in VARIANTS:
        runs = [r for r in rows if r["variant"] == variant]
        cells = []
        for key, form in (("gold_win_rate_vs_sft", "{:.1%}"), ("gold_mean", "{:.2f}"), ("kl_to_sft", "{:.2f}"),
                          ("ppo_seconds", "{:.0f}")):
            values = [r[key] for r in runs]
            cells.append(" / ".join(form.format(v) for v in values) + "; " + form.format(statistics.fmean(values)))
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
