"""Memory and time of one PPO step on SmolLM2-135M-Instruct, this tree against an older revision.

    .venv/bin/python benchmarks/ppo_step_memory.py [--before 7e001db] [--repeats 3] [--modes lora 4bit+lora]

One PPO step: batch 16 prompts of the tiny world, 32-token responses, 4 PPO epochs of two
minibatches of 8, the gold annotator as the reward (so only the policy and its reference are in
memory), LoRA on every linear layer. Each run is a fresh process; runs of the two revisions
alternate (interleaved repeats), and the table gives the median and the range of:

- peak RSS: the process's lifetime `ru_maxrss`, loading and the memory-mapped checkpoint included;
- RssAnon in the rollout and in the update: the largest anonymous resident memory sampled every
  10 ms during each phase (/proc/self/status), which leaves out the memory-mapped checkpoint;
- step time in seconds (rollout + update).

`--before` names a git revision (default: the last one before the vocabulary-scaled log-probs);
it is checked out into a temporary worktree and imported from there, with this virtualenv.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ppo_vs_trl import while_sampling  # the RSS sampler both PPO benchmarks share

ROOT = Path(__file__).resolve().parent.parent
BATCH, MINI_BATCH, RESPONSE_LENGTH, EPOCHS = 16, 8, 32, 4


def one_step(mode: str, model_path: str) -> dict:
    """Runs in the child process, importing rlhflab from sys.path[0]."""
    import torch

    from rlhflab import load_policy
    from rlhflab.tiny import GoldAnnotator, TinyWorld
    try:
        from rlhflab.trainers.ppo import PPOConfig, PPOTrainer
        from rlhflab.trainers.reward import GoldReward
    except ImportError:  # `--before` revisions from before the layers were folders: the modules at the top
        from rlhflab.ppo import PPOConfig, PPOTrainer
        try:
            from rlhflab.reward import GoldReward
        except ImportError:  # and before GoldReward moved from rlhflab.ppo to rlhflab.reward
            from rlhflab.ppo import GoldReward

    world = TinyWorld(seed=0)
    prompts = [q.text for q in world.questions("train", 64, seed=4)]
    policy = load_policy(model_path, lora=True, quantization="4bit" if mode == "4bit+lora" else None, device="cpu")
    config = PPOConfig(output_dir=tempfile.mkdtemp(), steps=1, batch_size=BATCH, mini_batch_size=MINI_BATCH,
                       ppo_epochs=EPOCHS, response_length=RESPONSE_LENGTH, save_every=10**9, sample_every=10**9)
    trainer = PPOTrainer(policy, prompts, GoldReward(GoldAnnotator(world)), config)
    torch.manual_seed(0)
    rollout = while_sampling(lambda: trainer.rollout(prompts[:BATCH]))
    update = while_sampling(lambda: trainer.update(rollout.pop("result")))
    return {"seconds": rollout["seconds"] + update["seconds"], "rollout_rss_anon_mb": rollout["rss_anon_mb"],
            "update_rss_anon_mb": update["rss_anon_mb"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(source: Path, mode: str, model_path: str) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {str(source)!r}); sys.path.insert(1, {str(ROOT / 'benchmarks')!r}); "
            f"import ppo_step_memory as b; print('RESULT', json.dumps(b.one_step({mode!r}, {model_path!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="7e001db", help="git revision to compare with")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["lora", "4bit+lora"])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from rlhflab.trainers.embedded import SMOLLM2, model_dir

    model_path = str(model_dir(SMOLLM2))  # both revisions load the same converted checkpoint
    worktree = Path(tempfile.mkdtemp()) / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(worktree), args.before],
                   check=True)
    try:
        results: dict[tuple[str, str], list[dict]] = {}
        for repeat in range(args.repeats):
            for mode in args.modes:
                for label, source in (("before", worktree), ("after", ROOT)):
                    result = run_child(source, mode, model_path)
                    results.setdefault((mode, label), []).append(result)
                    print(f"repeat {repeat + 1} {mode:10s} {label:6s} {json.dumps(result)}", flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    print("\n| mode | code | peak RSS (MB) | RssAnon in the rollout (MB) | RssAnon in the update (MB) | step time (s) |"
          "\n|---|---|---|---|---|---|")
    for (mode, label), runs in results.items():
        cells = []
        for key in ("peak_rss_mb", "rollout_rss_anon_mb", "update_rss_anon_mb", "seconds"):
            values = [r[key] for r in runs]
            cells.append(f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})" if key != "seconds"
                         else f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        print(f"| {mode} | {label} ({args.before if label == 'before' else 'this tree'}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
