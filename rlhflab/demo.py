"""`make demo`: the lab's main job on the embedded tiny world, headless, with a report.

    python -m rlhflab.demo [--quick] [--out reports]

Today it runs the stages that exist: meet the tiny base model, fine-tune it on demonstrations
(SFT with LoRA), and score both against the gold annotator on held-out prompts. It writes
`reports/sft.html` (curves, numbers, before/after samples) and `reports/sft.json`.
"""

from __future__ import annotations

import argparse
import html
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .live import LivePlot
from .models import Policy, load_policy
from .sft import SFTConfig, train_sft
from .tiny import GoldAnnotator, TinyWorld


@dataclass
class DemoConfig:
    """Sizes of the demo run; `quick()` is what the tests use."""

    out_dir: str = "reports"  # report, metrics and adapter go here
    n_demonstrations: int = 2000  # SFT training demonstrations
    n_heldout: int = 128  # held-out prompts for loss and gold scores
    epochs: float = 1.0  # SFT passes
    samples_per_prompt: int = 1  # sampled responses per held-out prompt for the gold score
    seed: int = 0  # seeds the world draws, sampling and training

    @classmethod
    def quick(cls, out_dir: str) -> "DemoConfig":
        return cls(out_dir=out_dir, n_demonstrations=256, n_heldout=48)


def gold_scores(policy: Policy, gold: GoldAnnotator, prompts: list[str], seed: int = 0) -> tuple[list[str], list[float]]:
    """Sample one reply per prompt and score each with the gold annotator."""
    replies = policy.generate(prompts, seed=seed)
    return replies, [gold.score(p, r) for p, r in zip(prompts, replies)]


def run_sft_demo(config: DemoConfig) -> dict:
    started = time.time()
    out = Path(config.out_dir)
    world = TinyWorld(seed=0)
    gold = GoldAnnotator(world)
    heldout = world.demonstrations("heldout", config.n_heldout, seed=config.seed + 1)
    prompts = [d["prompt"] for d in heldout] * config.samples_per_prompt

    policy = load_policy("tiny", lora=True)
    before, before_scores = gold_scores(policy, gold, prompts, seed=config.seed)
    live = LivePlot(out / "sft", title="SFT on the tiny world")
    result = train_sft(policy, world.demonstrations("train", config.n_demonstrations, seed=config.seed),
                       SFTConfig(output_dir=str(out / "sft"), epochs=config.epochs, seed=config.seed),
                       eval_demonstrations=heldout, live=live)
    after, after_scores = gold_scores(policy, gold, prompts, seed=config.seed)

    summary = {
        "config": asdict(config),
        "eval/loss_before": round(result.metrics["eval/loss_before"], 4),
        "eval/loss_after": round(result.metrics["eval/loss_after"], 4),
        "gold/mean_score_before": round(sum(before_scores) / len(prompts), 4),
        "gold/mean_score_after": round(sum(after_scores) / len(prompts), 4),
        "gold/win_rate_sft_vs_base": round(gold.win_rate(prompts, after, before), 4),
        "seconds": round(time.time() - started, 1),
    }
    samples = pd.DataFrame({"prompt": prompts, "base": before, "base gold": before_scores,
                            "SFT": after, "SFT gold": after_scores}).head(12)
    write_report(out, summary, samples, live)
    return summary


def write_report(out: Path, summary: dict, samples: pd.DataFrame, live: LivePlot) -> None:
    """A self-contained HTML page; model text is escaped by pandas (escape=True)."""
    numbers = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in summary.items() if k != "config")
    page = (
        "<!doctype html><meta charset='utf-8'><title>rlhflab demo</title>"
        "<h1>rlhflab demo: SFT on the tiny world</h1>"
        f"<h2>Numbers</h2><table>{numbers}</table>"
        "<h2>Before / after samples (held-out prompts)</h2>"
        + samples.to_html(index=False, escape=True)
        + "<h2>Training curves</h2>"
        + live.figure().to_html(full_html=False, include_plotlyjs=True)
    )
    (out / "sft.html").write_text(page)
    (out / "sft.json").write_text(json.dumps(summary, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="reports", help="report directory")
    parser.add_argument("--quick", action="store_true", help="small settings (about a minute)")
    args = parser.parse_args()
    config = DemoConfig.quick(args.out) if args.quick else DemoConfig(out_dir=args.out)
    summary = run_sft_demo(config)
    print(json.dumps(summary, indent=2))
    print(f"report: {Path(args.out) / 'sft.html'}")


if __name__ == "__main__":
    main()
