"""The loop on HH-RLHF dialogues with SmolLM2-135M, scored by a "gold" reward model (Gao et al. 2022's setting).

    .venv/bin/python benchmarks/hh_reward.py --seeds 0      # first: the gold reward model (seed 0's)
    .venv/bin/python benchmarks/hh_loop.py [--rounds 2] [--labels 32] [--ppo-steps 6] [--heldout 32]

No person labels here, so a reward model stands in for them: `hh_reward.py`'s seed-0 model, trained on 512
human comparisons of HH-RLHF harmless-base, is the gold. The policy's own reward model is a proxy: it starts
from `--human` other human comparisons (a small share) and, each round, learns from `--labels` pairs of the
policy's answers that the gold labels. Each round then runs PPO against the proxy, and the gold judges the
policy's answers against SFT's on held-out dialogues (never trained on): its win-rate with a 95% interval.
The proxy's accuracy on `--proxy-test` held-out human pairs is reported beside it.
Prints one JSON line per round; writes benchmarks/results/hh_loop.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hh_reward import HH, RESULTS, split  # noqa: E402

from rlhflab import Task  # noqa: E402
from rlhflab.lab.loop import RLHFLoop  # noqa: E402
from rlhflab.lab.stages import RLHFConfig  # noqa: E402
from rlhflab.labeling.records import import_comparisons, read_hh_rlhf  # noqa: E402
from rlhflab.trainers.embedded import SMOLLM2  # noqa: E402
from rlhflab.trainers.reward import evaluate_reward_model, load_reward_model  # noqa: E402


def gold_judge(gold):
    """judge(prompts, first, second): 0 when the gold reward model scores the first answer higher, 1 the second."""
    def judge(prompts, first, second):
        a, b = gold.score(prompts, first, normalized=False), gold.score(prompts, second, normalized=False)
        return [0.5 if x == y else 0 if x > y else 1 for x, y in zip(a.tolist(), b.tolist())]
    return judge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hh", type=Path, default=HH)
    parser.add_argument("--gold", type=Path, default=RESULTS / "hh_reward_seed0")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--human", type=int, default=64, help="human comparisons the proxy starts from")
    parser.add_argument("--demonstrations", type=int, default=64)
    parser.add_argument("--labels", type=int, default=32, help="pairs of policy answers the gold labels per round")
    parser.add_argument("--ppo-steps", type=int, default=6, help="PPO steps per round, of 8 responses")
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--proxy-test", type=int, default=64, help="held-out human pairs the proxy is tested on")
    args = parser.parse_args()
    rows = read_hh_rlhf(args.hh)
    gold_rows, heldout_rows = split(rows, 512, 256, seed=0)  # what hh_reward.py's seed 0 trained and tested on
    taken = {row["prompt"] for row in gold_rows + heldout_rows}
    pool = [row for row in rows if row["prompt"] not in taken]  # dialogues neither the gold nor the test saw
    heldout = list(dict.fromkeys(row["prompt"] for row in heldout_rows))
    task = Task(prompts=[row["prompt"] for row in pool], heldout=heldout,
                demonstrations=[{"prompt": r["prompt"], "response": r["chosen"]} for r in pool if r["chosen"]],
                comparisons=heldout_rows, judge=gold_judge(load_reward_model(str(args.gold))), judge_name="gold_rm")
    config = RLHFConfig(out_dir=tempfile.mkdtemp(), base=SMOLLM2, rounds=args.rounds,
                        n_demonstrations=args.demonstrations, labels_per_round=args.labels, pool_per_label=1,
                        ppo_steps=args.ppo_steps, ppo_batch_size=8, n_heldout=args.heldout)
    started = time.time()
    loop = RLHFLoop(task, config)
    print(import_comparisons(loop.store, pool[-args.human:], annotator="hh-rlhf", source_name="hh-rlhf",
                             max_chars=None), flush=True)
    rows_out = []
    for _ in range(args.rounds):
        round_started = time.time()
        result = loop.run_round()
        proxy = load_reward_model(str(result.reward_dir))
        proxy_accuracy = evaluate_reward_model(proxy, heldout_rows[:args.proxy_test])["metrics"]["eval/accuracy"]
        rows_out.append({name: result.metrics.get(name) for name in (
            "round", "labels", "gold_rm/win_rate_vs_sft", "gold_rm/win_rate_vs_sft_low",
            "gold_rm/win_rate_vs_sft_high", "kl/to_sft")}
            | {"proxy/heldout_human_accuracy": proxy_accuracy, "wall_s": time.time() - round_started})
        print(json.dumps(rows_out[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hh_loop.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                      "rounds": rows_out, "wall_s": time.time() - started}, indent=1))


if __name__ == "__main__":
    main()
