"""`make demo`: the whole lab on the embedded tiny world, headless, in one command.

    python -m rlhflab.demo [--quick] [--out reports]

Executes `notebooks/00_quickstart.ipynb` (SFT, then rounds of gold labeling, reward model and PPO)
with nbclient and writes `reports/quickstart.ipynb` (the executed notebook) and
`reports/quickstart.html` (the curves, the before/after samples, the per-round table and the
leaderboard), which the notebook's last cell builds with `write_report`.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import time
from pathlib import Path

import pandas as pd

from .loop import LoopConfig

QUICKSTART = Path(__file__).resolve().parent.parent / "notebooks" / "00_quickstart.ipynb"
_QUICK = LoopConfig.quick("")
QUICK_SETTINGS = (f"ROUNDS = {_QUICK.rounds}\nN_DEMONSTRATIONS = {_QUICK.n_demonstrations}\n"  # the notebook's
                  f"LABELS_PER_ROUND = {_QUICK.labels_per_round}\nPPO_STEPS = {_QUICK.ppo_steps}\n"  # parameters
                  f"N_HELDOUT = {_QUICK.n_heldout}")  # at LoopConfig.quick's sizes


def write_report(loop, path: str | Path, leaderboard: pd.DataFrame | None = None) -> Path:
    """A self-contained HTML page of an `RLHFLoop`'s run; model text is escaped (pandas escape=True)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    last = loop.results[-1]
    numbers = loop.table().round(4)
    sections = [
        "<!doctype html><meta charset='utf-8'><title>rlhflab quickstart</title>",
        f"<h1>rlhflab quickstart: {len(loop.results)} rounds of RLHF ({html.escape(loop.config.method.upper())}) "
        "on the tiny world</h1>",
        "<h2>Per round (held-out prompts, gold annotator)</h2>", numbers.to_html(index=False, escape=True),
    ]
    if leaderboard is not None:
        sections += ["<h2>Leaderboard (Elo / Bradley-Terry over the labeled pairs)</h2>",
                     leaderboard.to_html(index=False, escape=True)]
    sections += [f"<h2>Before / after samples (SFT vs round {last.round})</h2>",
                 last.samples.head(12).round(2).to_html(index=False, escape=True), "<h2>Curves</h2>"]
    figures = [live.figure() for live in (loop.rounds_live, loop.live) if live.history]
    for index, figure in enumerate(figures):  # plotly.js inlined once, so the page works offline
        sections.append(figure.to_html(full_html=False, include_plotlyjs=index == 0))
    path.write_text("\n".join(sections))
    return path


def run_quickstart(out_dir: str | Path, quick: bool = False, timeout_s: int = 1800) -> dict:
    """Execute the quickstart notebook with its report going to `out_dir`; returns a summary."""
    import nbformat
    from nbclient import NotebookClient

    out_dir = Path(out_dir).resolve()
    shutil.rmtree(out_dir / "runs", ignore_errors=True)  # the demo's own scratch: every `make demo` starts afresh
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.read(QUICKSTART, as_version=4)
    index = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    settings = f"REPORT = {str(out_dir / 'quickstart.html')!r}\nOUT = {str(out_dir / 'runs')!r}\n"
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(settings + (QUICK_SETTINGS if quick else "")))
    started = time.time()
    client = NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(out_dir)}})
    try:
        client.execute()
    finally:
        nbformat.write(notebook, out_dir / "quickstart.ipynb")
    rounds = [json.loads(line) for line in (out_dir / "runs" / "rounds.jsonl").read_text().splitlines()]
    return {"seconds": round(time.time() - started, 1), "report": str(out_dir / "quickstart.html"),
            "notebook": str(out_dir / "quickstart.ipynb"),
            "rounds": [{k: v for k, v in r.items() if k != "config"} for r in rounds]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="reports", help="report directory")
    parser.add_argument("--quick", action="store_true", help="small settings (a couple of minutes)")
    args = parser.parse_args()
    summary = run_quickstart(args.out, quick=args.quick)
    print(json.dumps(summary, indent=2))
    print(f"report: {summary['report']}")


if __name__ == "__main__":
    main()
