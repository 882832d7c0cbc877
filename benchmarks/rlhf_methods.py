"""Every method at an equal label budget on the tiny world, over seeds; and active vs random labeling.

    .venv/bin/python benchmarks/rlhf_methods.py [--labels 800] [--ppo-steps 60] [--heldout 128]
        [--seeds 0 1 2] [--methods dpo kto ilql ppo nlpo rloo grpo] [--best-of 4 16] [--curve-n 64]
        [--rl-steps 120] [--no-active] [--jobs 1]

Every method learns from the same gold-labelled pairs of SFT samples (`rlhflab.loop.compare_methods`);
'KTO (ratings)' learns from as many gold thumbs ratings of single SFT samples instead. The gold
annotator then scores each on held-out prompts: win-rate against SFT (ties count half) and KL to
SFT in nats per response (measured, best-of-n's in closed form). Each seed redraws SFT, the labels,
the training and the held-out samples; the table gives the median and the range over seeds.
Over-optimisation (`rlhflab.overoptimization`): gold and proxy gains over SFT as KL grows, along
best-of-n for n = 1, 2, 4, ... `--curve-n` (one draw) and along a PPO run of `--rl-steps` with a
weak KL penalty (`chasing_config`) from the same SFT adapter against the same reward model, with
Gao et al. 2022's forms fitted over every seed's points; the curves go to
benchmarks/results/overoptimization.html and, where Chromium is installed, .png. The
learning curve (`rlhflab.loop.active_vs_random`) spends the same labels in batches, picked at
random or by reward-model uncertainty, and measures the reward model's agreement with gold on
held-out pairs after each batch. `--jobs N` runs N seeds at once in separate processes (a GPU, or a
machine with the cores). Prints Markdown tables and writes benchmarks/results/rlhf_methods.json.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402

from rlhflab import GoldAnnotator, TinyWorld  # noqa: E402
from rlhflab.demo import screenshots  # noqa: E402
from rlhflab.loop import active_vs_random, compare_methods  # noqa: E402
from rlhflab.overoptimization import (best_of_n_points, chasing_config, overoptimization,  # noqa: E402
                                      rl_points)
from rlhflab.stages import METHODS, RLHFConfig, ppo_trainer  # noqa: E402

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


def best_of(args) -> tuple[int, ...]:
    """The n of best-of-n to measure: the table's, and 1, 2, 4, ... up to --curve-n for the curve."""
    curve = [2 ** k for k in range(int(math.log2(args.curve_n)) + 1)] if args.curve_n else []
    return tuple(sorted(set(args.best_of) | set(curve)))


def rl_curve(world, gold, config: RLHFConfig, steps: int) -> pd.DataFrame:
    """Gold and proxy along a weak-KL PPO run from compare_methods' SFT adapter against its reward model."""
    methods = Path(config.out_dir)  # RLHFLoop's layout: sft/, round_1/reward/
    chaser = chasing_config(config, steps, out_dir=str(methods.parent / "rl_curve"))
    return rl_points(ppo_trainer(world, gold, chaser, methods / "sft", methods / "round_1" / "reward").train().history)


def run_seed(job: tuple) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None, dict]:
    """compare_methods, the RL curve and the active-vs-random curve for one (args, seed), in a scratch directory."""
    args, seed = job
    world = TinyWorld(seed=0)
    gold = GoldAnnotator(world)
    seconds, curve, rl = {}, None, None
    with tempfile.TemporaryDirectory() as scratch:
        started = time.time()
        config = RLHFConfig(out_dir=f"{scratch}/methods", labels_per_round=args.labels, ppo_steps=args.ppo_steps,
                            n_heldout=args.heldout, seed=seed)
        table = compare_methods(world, gold, config, best_of=best_of(args), methods=tuple(args.methods))
        table = table.assign(seed=seed, labels=table.attrs["labels"])
        seconds[f"methods seed {seed}"] = round(time.time() - started, 1)
        if args.rl_steps:
            started = time.time()
            rl = rl_curve(world, gold, config, args.rl_steps).assign(seed=seed)
            seconds[f"RL curve seed {seed}"] = round(time.time() - started, 1)
        if not args.no_active:
            started = time.time()
            curve = active_vs_random(world, gold, RLHFConfig(out_dir=f"{scratch}/active", seed=seed,
                                                             n_heldout=args.heldout,
                                                             labels_per_round=args.labels // args.batches),
                                     batches=args.batches).assign(seed=seed)
            seconds[f"active seed {seed}"] = round(time.time() - started, 1)
    return table, curve, rl, seconds


def json_records(table: pd.DataFrame) -> list[dict]:
    """Rows for JSON, which has no infinity: a fit that never turns down has peak KL null."""
    return table.replace(math.inf, None).to_dict("records")


def report_overoptimization(methods: pd.DataFrame, rls: list[pd.DataFrame], args) -> dict:
    """Fit Gao et al.'s forms over every seed's points (and per seed), print them, and draw the curves."""
    points = {"best_of_n": best_of_n_points(methods) if args.curve_n else None,
              "rl": pd.concat(rls) if rls else None}
    study = overoptimization(**points)
    per_seed = pd.concat([overoptimization(**{k: v[v["seed"] == seed] if v is not None else None
                                              for k, v in points.items()}).table().assign(seed=seed)
                          for seed in args.seeds])
    print(f"\n## Over-optimisation: Gao et al. 2022 fits, d = sqrt(KL to SFT) (best-of-n to n = {args.curve_n}, "
          f"a weak-KL PPO run of {args.rl_steps} steps; all seeds' points, and the median (range) of per-seed fits)\n")
    print("| curve | reward | fit | alpha | beta | peak KL (nats) | alpha per seed | beta per seed |\n"
          "|---|---|---|---|---|---|---|---|")
    for row in study.table().to_dict("records"):
        seeds = per_seed[(per_seed["curve"] == row["curve"]) & (per_seed["reward"] == row["reward"])]
        print(f"| {row['curve']} | {row['reward']} | {row['fit']} | {row['alpha']:.3f} | {row['beta']:.3f} | "
              f"{row['peak KL (nats)']:.3g} | {spread(seeds['alpha'])} | {spread(seeds['beta'])} |")
    html = RESULTS / "overoptimization.html"
    figure = study.figure(title=f"Reward over-optimisation on the tiny world, {len(args.seeds)} seed(s): gain over "
                                "SFT as KL grows, with Gao et al. 2022 fits")
    figure.write_html(html, include_plotlyjs=True)  # plotly.js inlined: opens offline
    pictures = screenshots({html: html.with_suffix(".png")})  # kaleido is not installed; Chromium draws the PNG
    print("curves:", html, *pictures)
    return {"fits": json_records(study.table()), "fits_per_seed": json_records(per_seed),
            **{name: frame.to_dict("records") for name, frame in study.curves.items()}}


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
    parser.add_argument("--curve-n", type=int, default=64, help="best-of-n curve to this n (a power of 2; 0: skip)")
    parser.add_argument("--rl-steps", type=int, default=120, help="steps of the weak-KL PPO run for the RL curve "
                        "(0: skip)")
    parser.add_argument("--no-active", action="store_true", help="skip the active-vs-random curve")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, each in its own process")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)

    runs = []
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for run in pool.imap_unordered(run_seed, [(args, seed) for seed in args.seeds]):
            print(run[0].to_string(), run[3], flush=True)  # each seed as it finishes
            runs.append(run)
    tables = [table for table, _, _, _ in runs]
    curves = [curve for _, curve, _, _ in runs if curve is not None]
    rls = [rl for _, _, rl, _ in runs if rl is not None]
    seconds = {name: value for _, _, _, timings in runs for name, value in timings.items()}
    methods = pd.concat(tables)
    shown = {f"best-of-{n}" for n in args.best_of}  # the curve's other n are reported below, not as rows
    order = [m for m in dict.fromkeys(methods["method"]) if not m.startswith("best-of-") or m in shown]
    print(f"\n## Methods at an equal budget of {args.labels} gold labels, {len(args.seeds)} seeds "
          f"({args.heldout} held-out prompts; median (range))\n")
    print("| method | gold win-rate vs SFT | KL to SFT (nats) | gold mean |\n|---|---|---|---|")
    for name in order:
        rows = methods[methods["method"] == name]
        print(f"| {name} | {spread(rows['gold/win_rate_vs_sft'], percent=True)} | {spread(rows['kl/to_sft'])} | "
              f"{spread(rows['gold/mean'])} |")
    result = {"args": vars(args), "seconds": seconds, "device": device_name(), "methods": methods.to_dict("records")}
    if args.curve_n or rls:
        result["overoptimization"] = report_overoptimization(methods, rls, args)
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
    (RESULTS / "rlhf_methods.json").write_text(json.dumps(result, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
