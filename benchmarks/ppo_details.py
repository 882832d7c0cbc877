"""PPO's settings on the tiny world, scored by gold. `--study details`: the learning-rate schedule (constant or
linear decay) and the value model (a head on the policy's trunk, or its own adapter initialised from the reward
model). `--study defaults`: the learning rate and initial KL coefficient that `PPOConfig` and `RLHFConfig`
share, against the two sets they had before (issue 29) and one between.

    .venv/bin/python benchmarks/ppo_details.py [--study defaults] [--seeds 0 1 2] [--ppo-steps 32]

One SFT adapter and one reward model (`rlhflab.lab.stages`, as the tests' fixture makes them) serve every run;
each run is PPO from SFT with one variant and one seed, scored on the held-out prompts: gold
win-rate against SFT, gold mean, KL to SFT and wall time. Runs of the variants alternate. Prints a
Markdown table of per-seed values and their mean; writes benchmarks/results/ppo_<study>.json.
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
from rlhflab.lab.stages import (RLHFConfig, evaluate, load, ppo_trainer, reward_stage, sft_baseline,  # noqa: E402
                            sft_stage)
from rlhflab.tiny.annotate import gold_comparisons  # noqa: E402
from rlhflab.tiny.task import WorldTask  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STUDIES = {  # study: {variant: (RLHFConfig fields, further PPOConfig fields)}
    "details": {
        "constant lr, value head": ({}, dict(lr_schedule="constant", value_model="head")),
        "linear lr, value head": ({}, dict(lr_schedule="linear", value_model="head")),
        "constant lr, value adapter": ({}, dict(lr_schedule="constant", value_model="adapter")),
    },
    "defaults": {
        "lr 1e-4, beta 0.2 (RLHFConfig's before)": (dict(ppo_learning_rate=1e-4, kl_coef=0.2), {}),
        "lr 2e-4, beta 0.1": (dict(ppo_learning_rate=2e-4, kl_coef=0.1), {}),
        "lr 5e-4, beta 0.05 (PPOConfig's before)": (dict(ppo_learning_rate=5e-4, kl_coef=0.05), {}),
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ppo-steps", type=int, default=32)
    parser.add_argument("--study", choices=STUDIES, default="details")
    args = parser.parse_args()
    variants = STUDIES[args.study]
    world = TinyWorld(seed=0)
    gold = GoldAnnotator(world)
    task = WorldTask(world, gold)
    config = RLHFConfig.quick(tempfile.mkdtemp(), n_demonstrations=128, n_heldout=48, ppo_steps=args.ppo_steps)
    sft_dir = sft_stage(task, config)
    baseline = sft_baseline(task, config, sft_dir)
    reward_dir = Path(config.out_dir) / "reward"
    reward_model = reward_stage(gold_comparisons(world, gold, baseline.policy, "train", 300, 300, seed=config.seed),
                                config, baseline, reward_dir)
    rows = []
    for seed in args.seeds:
        for variant, (settings, fields) in variants.items():
            run = replace(config, seed=seed, out_dir=str(Path(config.out_dir) / f"{len(rows)}"), **settings)
            started = time.perf_counter()
            result = ppo_trainer(task, run, sft_dir, reward_dir, ppo_fields=fields).train()
            seconds = time.perf_counter() - started
            outcome, _ = evaluate(load(run, result.output_dir / "checkpoint"), baseline, task, run, reward_model)
            rows.append({"variant": variant, "seed": seed, "ppo_seconds": seconds,
                         **{k: outcome[k]
                            for k in ("gold/win_rate_vs_sft", "gold/mean", "kl/to_sft", "gold/sft_mean")}})
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"ppo_{args.study}.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| variant | gold win-rate vs SFT (per seed; mean) | gold mean | KL to SFT (nats) | PPO time (s) |"
          "\n|---|---|---|---|---|")
    for variant in variants:
        runs = [r for r in rows if r["variant"] == variant]
        cells = []
        for key, form in (("gold/win_rate_vs_sft", "{:.1%}"), ("gold/mean", "{:.2f}"), ("kl/to_sft", "{:.2f}"),
                          ("ppo_seconds", "{:.0f}")):
            values = [r[key] for r in runs]
            cells.append(" / ".join(form.format(v) for v in values) + "; " + form.format(statistics.fmean(values)))
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
