"""PPO's learning-rate schedule on the tiny world: constant against linear decay, scored by gold.

    .venv/bin/python benchmarks/ppo_details.py [--seeds 0 1 2] [--ppo-steps 32]

One SFT adapter and one reward model (`rlhflab.tiny.recipe` at its quick sizes) serve every run;
each run is PPO from SFT with one `lr_schedule` and one seed, scored on the held-out prompts:
gold win-rate against SFT, gold mean and KL to SFT. Runs of the two schedules alternate. Prints a
Markdown table of per-seed values and their mean; writes benchmarks/results/ppo_details.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlhflab import GoldAnnotator, TinyWorld  # noqa: E402
from rlhflab.tiny.recipe import (RecipeConfig, compare_with_sft, heldout_prompts, ppo_trainer,  # noqa: E402
                                 reward_stage, sft_stage)

RESULTS = Path(__file__).parent / "results"
SCHEDULES = ("constant", "linear")


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
        for schedule in SCHEDULES:
            run = replace(config, seed=seed, out_dir=str(Path(config.out_dir) / f"{schedule}-{seed}"))
            trainer = ppo_trainer(world, gold, sft_dir, reward_dir, run)
            trainer.config.lr_schedule = schedule
            trainer.train()
            outcome = compare_with_sft(trainer, gold, sft_dir, heldout_prompts(world, config), run)
            rows.append({"lr_schedule": schedule, "seed": seed, "gold_win_rate_vs_sft": outcome["ppo/gold_win_rate_vs_sft"],
                         "gold_mean": outcome["ppo/gold_mean"], "kl_to_sft": outcome["ppo/kl_to_sft"],
                         "sft_gold_mean": outcome["sft/gold_mean"]})
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ppo_details.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n| lr_schedule | gold win-rate vs SFT (per seed; mean) | gold mean | KL to SFT (nats) |\n|---|---|---|---|")
    for schedule in SCHEDULES:
        runs = [r for r in rows if r["lr_schedule"] == schedule]
        cells = []
        for key, form in (("gold_win_rate_vs_sft", "{:.1%}"), ("gold_mean", "{:.2f}"), ("kl_to_sft", "{:.2f}")):
            values = [r[key] for r in runs]
            cells.append(" / ".join(form.format(v) for v in values) + "; " + form.format(statistics.fmean(values)))
        print(f"| {schedule} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
