"""Every method at an equal label budget on the tiny world, over seeds; and active vs random labeling.

    .venv/bin/python benchmarks/rlhf_methods.py [--labels 800] [--ppo-steps 60] [--heldout 128]
        [--seeds 0 1 2] [--methods dpo kto ilql ppo nlpo rloo grpo] [--best-of 4 16] [--curve-n 64]
        [--rl-steps 120] [--no-active] [--ensemble 3] [--jobs 1] [--out part.json]
    .venv/bin/python benchmarks/rlhf_methods.py --merge part1.json part2.json ...

Every method learns from the same gold-labelled pairs of SFT samples (`rlhflab.lab.loop.compare_methods`);
'KTO (ratings)' learns from as many gold thumbs ratings of single SFT samples instead. The gold
annotator then scores each on held-out prompts: win-rate against SFT (ties count half) and KL to
SFT in nats per response (measured, best-of-n's in closed form). Each seed redraws SFT, the labels,
the training and the held-out samples; the table gives the median and the range over seeds.
Over-optimisation (`rlhflab.lab.overoptimization`): gold and proxy gains over SFT as KL grows, along
best-of-n for n = 1, 2, 4, ... `--curve-n` (one draw) and along a PPO run of `--rl-steps` with a
weak KL penalty (`chasing_config`) from the same SFT adapter against the same reward model, with
Gao et al. 2022's forms fitted over every seed's points; the curves go to
benchmarks/results/overoptimization.html and, where Chromium is installed, .png. The
learning curve (`rlhflab.lab.loop.active_vs_random`) spends the same labels in batches, picked at
random, by one reward model's uncertainty, or by an ensemble's disagreement, and measures the
reward model's agreement with gold on held-out pairs after each batch; each strategy's gain over
random is given with a 95% t-interval over seeds (paired: a seed's strategies share SFT, the pool
and the held-out pairs). `--jobs N` runs N seeds at once in separate processes (a GPU, or a
machine with the cores); to spread one seed's work too, run parts side by side (say, some
methods each, `--rl-steps 0 --no-active`; or only the curve, `--methods --best-of --curve-n 0`),
each with `--out`, and report them together with `--merge` (benchmarks/methods_frontier.sh does
this). Prints Markdown tables and writes benchmarks/results/rlhf_methods.json.
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
from rlhflab.lab.demo import screenshots  # noqa: E402
from rlhflab.lab.loop import active_vs_random, compare_methods  # noqa: E402
from rlhflab.lab.overoptimization import (best_of_n_points, chasing_config, overoptimization,  # noqa: E402
                                      rl_points)
from rlhflab.lab.stages import METHODS, RLHFConfig, ppo_trainer  # noqa: E402
from rlhflab.tiny.task import WorldTask  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"


def spread(values, percent: bool = False) -> str:
    """'median (min-max)' of one metric over seeds."""
    shown = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.2f}")
    values = list(values)
    if not values:
        return "n/a"
    if len(values) == 1:
        return shown(values[0])
    return f"{shown(statistics.median(values))} ({shown(min(values))}-{shown(max(values))})"


# Student's t quantile t(0.975, df) for df = 1..30 (any statistics table); beyond, the normal's 1.96
T975 = dict(enumerate([12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
                       2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
                       2.052, 2.048, 2.045, 2.042], start=1))


def t_interval(values) -> str:
    """'mean [low, high] pp' of paired differences (shares), a 95% t-interval over seeds, in percentage points."""
    values = [100 * v for v in values]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:+.1f} pp"
    half = T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}] pp"


def best_of(args) -> tuple[int, ...]:
    """The n of best-of-n to measure: the table's, and 1, 2, 4, ... up to --curve-n for the curve."""
    curve = [2 ** k for k in range(int(math.log2(args.curve_n)) + 1)] if args.curve_n else []
    return tuple(sorted(set(args.best_of) | set(curve)))


def rl_curve(world, gold, config: RLHFConfig, steps: int) -> pd.DataFrame:
    """Gold and proxy along a weak-KL PPO run from compare_methods' SFT adapter against its reward model."""
    methods = Path(config.out_dir)  # RLHFLoop's layout: sft/, round_1/reward/
    chaser = chasing_config(config, steps, out_dir=str(methods.parent / "rl_curve"))
    trainer = ppo_trainer(WorldTask(world, gold), chaser, methods / "sft", methods / "round_1" / "reward")
    return rl_points(trainer.train().history)


def run_seed(job: tuple) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None, dict]:
    """compare_methods, the RL curve and the active-vs-random curve for one (args, seed), in a scratch directory."""
    args, seed = job
    world = TinyWorld(seed=0)
    gold = GoldAnnotator(world)
    seconds, table, curve, rl = {}, None, None, None
    with tempfile.TemporaryDirectory() as scratch:
        config = RLHFConfig(out_dir=f"{scratch}/methods", labels_per_round=args.labels, ppo_steps=args.ppo_steps,
                            n_heldout=args.heldout, seed=seed)
        if args.methods or best_of(args) or args.rl_steps:  # the RL curve starts from its SFT and reward model
            started = time.time()
            table = compare_methods(WorldTask(world, gold), config, best_of=best_of(args), methods=tuple(args.methods),
                                    kto_ratings="kto" in args.methods)
            table = table.assign(seed=seed, labels=table.attrs["labels"])
            seconds[f"methods seed {seed}"] = round(time.time() - started, 1)
        if args.rl_steps:
            started = time.time()
            rl = rl_curve(world, gold, config, args.rl_steps).assign(seed=seed)
            seconds[f"RL curve seed {seed}"] = round(time.time() - started, 1)
        if not args.no_active:
            started = time.time()
            curve = active_vs_random(WorldTask(world, gold), RLHFConfig(out_dir=f"{scratch}/active", seed=seed,
                                                             n_heldout=args.heldout,
                                                             labels_per_round=args.labels // args.batches),
                                     batches=args.batches, ensemble=args.ensemble).assign(seed=seed)
            seconds[f"active seed {seed}"] = round(time.time() - started, 1)
    return table, curve, rl, seconds


def json_records(table: pd.DataFrame) -> list[dict]:
    """Rows for JSON, which has no infinity: a fit that never turns down has peak KL null."""
    return table.replace(math.inf, None).to_dict("records")


def report_overoptimization(methods: pd.DataFrame, rl: pd.DataFrame | None, curve_n: int, rl_steps: int,
                            draw: bool = True) -> dict:
    """Fit Gao et al.'s forms over every seed's points (and per seed), print them, and (`draw`) draw the curves."""
    points = {"best_of_n": best_of_n_points(methods) if curve_n else None, "rl": rl}
    seeds = sorted(set(methods["seed"]) | (set(rl["seed"]) if rl is not None else set()))
    study = overoptimization(**points)
    per_seed = []
    for seed in seeds:  # a seed's own fit, from the curves that have its points
        own = {k: v[v["seed"] == seed] if v is not None else None for k, v in points.items()}
        own = {k: v if v is not None and len(v) else None for k, v in own.items()}
        if any(v is not None for v in own.values()):
            per_seed.append(overoptimization(**own).table().assign(seed=seed))
    per_seed = pd.concat(per_seed)
    print(f"\n## Over-optimisation: Gao et al. 2022 fits, d = sqrt(KL to SFT) (best-of-n to n = {curve_n}, "
          f"a weak-KL PPO run of {rl_steps} steps; all seeds' points, and the median (range) of per-seed fits)\n")
    print("| curve | reward | fit | alpha | beta | peak KL (nats) | alpha per seed | beta per seed |\n"
          "|---|---|---|---|---|---|---|---|")
    for row in study.table().to_dict("records"):
        fits = per_seed[(per_seed["curve"] == row["curve"]) & (per_seed["reward"] == row["reward"])]
        print(f"| {row['curve']} | {row['reward']} | {row['fit']} | {row['alpha']:.3f} | {row['beta']:.3f} | "
              f"{row['peak KL (nats)']:.3g} | {spread(fits['alpha'])} | {spread(fits['beta'])} |")
    summary = {"fits": json_records(study.table()), "fits_per_seed": json_records(per_seed),
               **{name: frame.to_dict("records") for name, frame in study.curves.items()}}
    if not draw:
        return summary
    html = RESULTS / "overoptimization.html"
    figure = study.figure(title=f"Reward over-optimisation on the tiny world, {len(seeds)} seed(s): gain over "
                                "SFT as KL grows, with Gao et al. 2022 fits")
    figure.write_html(html, include_plotlyjs=True)  # plotly.js inlined: opens offline
    pictures = screenshots({html: html.with_suffix(".png")})  # kaleido is not installed; Chromium draws the PNG
    print("curves:", html, *pictures)
    return summary


def report_active(curve: pd.DataFrame) -> None:
    """Agreement per label spent for each strategy, and each strategy's gain over random with a t-interval."""
    strategies = list(dict.fromkeys(curve["strategy"]))
    others = [s for s in strategies if s != "random"]
    print(f"\n## Reward-model agreement with gold per label spent ({curve['seed'].nunique()} seeds; median (range); "
          "gain over random: mean [95% t-interval]; decided: share of labels that became a training pair)\n")
    columns = ["labels", *strategies, *(f"{s} - random" for s in others), *(f"decided: {s}" for s in strategies)]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for _, rows in curve.groupby("batch"):
        by = {s: rows[rows["strategy"] == s].set_index("seed")["reward/gold_agreement_sft_samples"]
              for s in strategies}  # aligned by seed: a seed's strategies share SFT, the pool and the held-out pairs
        decided = [spread(rows[rows["strategy"] == s]["decided_share"], percent=True) for s in strategies]
        agreement = [spread(by[s], percent=True) for s in strategies]
        gains = [t_interval((by[s] - by["random"]).dropna()) for s in others]  # seeds that have both
        print(f"| {int(rows['labels'].median())} | " + " | ".join(agreement + gains + decided) + " |")


def run(args) -> dict:
    """Every seed of `args` (N at once with --jobs N): the raw rows, as JSON-ready records. With --out,
    the file is rewritten as each seed ends, so a run stopped early keeps the seeds it finished."""
    runs = []
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for finished in pool.imap_unordered(run_seed, [(args, seed) for seed in args.seeds]):
            table, _, _, seconds = finished
            print(table.to_string() if table is not None else "", seconds, flush=True)  # each seed as it ends
            runs.append(finished)
            part = raw_rows(runs, args)
            if args.out:
                Path(args.out).write_text(json.dumps(part, default=float) + "\n")
    return part


def raw_rows(runs: list[tuple], args) -> dict:
    """The finished seeds' tables, curves and timings as one JSON-ready part (what --merge reads)."""
    frames = {name: [run[i] for run in runs if run[i] is not None]
              for i, name in ((0, "methods"), (1, "active_vs_random"), (2, "rl_points"))}
    return {"args": vars(args), "device": device_name(),
            "seconds": {name: value for *_, timings in runs for name, value in timings.items()},
            **{name: json_records(pd.concat(parts)) if parts else [] for name, parts in frames.items()}}


def report_methods(methods: pd.DataFrame, parts: list[dict]) -> None:
    """The methods table: gold win-rate, KL and gold mean of each method, median (range) over seeds."""
    shown = {f"best-of-{n}" for part in parts for n in part["args"]["best_of"]}  # the curve's other n: below
    order = [m for m in dict.fromkeys(methods["method"]) if not m.startswith("best-of-") or m in shown]
    labels = " / ".join(str(n) for n in sorted({part["args"]["labels"] for part in parts}))
    heldout = " / ".join(str(n) for n in sorted({part["args"]["heldout"] for part in parts}))
    print(f"\n## Methods at an equal budget of {labels} gold labels ({heldout} held-out prompts; median (range) "
          "over the seeds of each row)\n")
    print("| method | seeds | gold win-rate vs SFT | KL to SFT (nats) | gold mean |\n|---|---|---|---|---|")
    for name in order:
        rows = methods[methods["method"] == name]
        print(f"| {name} | {len(rows)} | {spread(rows['gold/win_rate_vs_sft'], percent=True)} | "
              f"{spread(rows['kl/to_sft'])} | {spread(rows['gold/mean'])} |")


def report(parts: list[dict], write: bool = True) -> dict:
    """Print the tables of one run, or of several (`--merge`); with `write`, also benchmarks/results/
    rlhf_methods.json and the over-optimisation curves (a part run with --out leaves them to the merge)."""
    result = {"parts": [{k: part[k] for k in ("args", "device", "seconds")} for part in parts]}
    rows = [row for part in parts for row in part["methods"]]
    methods = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["seed", "method"])
    if len(methods):
        methods = methods.drop_duplicates(["seed", "method"])  # every part has its own SFT row of the same seed
        report_methods(methods, parts)
        result["methods"] = json_records(methods)
    rl = pd.DataFrame([row for part in parts for row in part["rl_points"]])
    has_best_of = methods["method"].str.startswith("best-of-").any()
    curve_n = max(part["args"]["curve_n"] for part in parts) if has_best_of else 0
    if curve_n or len(rl):
        rl_steps = max(part["args"]["rl_steps"] for part in parts)
        result["overoptimization"] = report_overoptimization(methods, rl if len(rl) else None, curve_n, rl_steps,
                                                             draw=write)
    curve = pd.DataFrame([row for part in parts for row in part["active_vs_random"]])
    if len(curve):
        curve = curve.drop_duplicates(["seed", "strategy", "batch"])
        report_active(curve)
        result["active_vs_random"] = json_records(curve)
    for part in parts:
        print(f"\n{part['device']}; seconds:", part["seconds"])
    if write:
        (RESULTS / "rlhf_methods.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=800, help="gold labels every method learns from")
    parser.add_argument("--ppo-steps", type=int, default=60, help="PPO steps of 16 responses")
    parser.add_argument("--heldout", type=int, default=128, help="held-out prompts")
    parser.add_argument("--batches", type=int, default=4, help="batches of the active-vs-random curve")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="*", default=["dpo", "kto", "ilql", "ppo", "nlpo", "rloo", "grpo"],
                        choices=METHODS, help="methods from the labels ('KTO (ratings)' comes with kto)")
    parser.add_argument("--best-of", type=int, nargs="*", default=[4, 16], help="n of best-of-n rows (none: skip)")
    parser.add_argument("--curve-n", type=int, default=64, help="best-of-n curve to this n (a power of 2; 0: skip)")
    parser.add_argument("--rl-steps", type=int, default=120, help="steps of the weak-KL PPO run for the RL curve "
                        "(0: skip)")
    parser.add_argument("--no-active", action="store_true", help="skip the active-vs-random curve")
    parser.add_argument("--ensemble", type=int, default=3, help="reward models of the 'ensemble' strategy "
                        "(0: leave that strategy out)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, each in its own process")
    parser.add_argument("--out", help="write this run's raw rows to this JSON file, for --merge (and leave "
                        "benchmarks/results/ to the merge)")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="report the runs that --out wrote (say, "
                        "parts of the work run side by side) as one, and run nothing")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.merge:
        report([json.loads(Path(path).read_text()) for path in args.merge])
        return
    report([run(args)], write=not args.out)


if __name__ == "__main__":
    main()
