"""`make demo`: the whole lab on the embedded tiny world, headless, in one command.

    python -m rlhflab.demo [--quick] [--out reports]

Executes the quickstart notebook that ships in the package (`notebooks/00_quickstart.ipynb`: SFT,
then rounds of gold labeling, reward model and PPO) with nbclient, and writes
`<out>/quickstart.ipynb` (the executed notebook) and `<out>/quickstart.html` (the report of
`rlhflab.report`, which the notebook's last cell writes). It works from a checkout and from an
installed wheel alike.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from .notebook import run_notebook, shipped_notebook
from .stages import RLHFConfig

QUICKSTART = "00_quickstart.ipynb"
_QUICK = RLHFConfig.quick("")
QUICK_SETTINGS = (f"ROUNDS = {_QUICK.rounds}\nN_DEMONSTRATIONS = {_QUICK.n_demonstrations}\n"  # the notebook's
                  f"LABELS_PER_ROUND = {_QUICK.labels_per_round}\nPPO_STEPS = {_QUICK.ppo_steps}\n"  # parameters
                  f"N_HELDOUT = {_QUICK.n_heldout}")  # at RLHFConfig.quick's sizes


def run_quickstart(out_dir: str | Path, quick: bool = False, timeout_s: int = 1800) -> dict:
    """Execute the quickstart notebook with its report going to `out_dir`; returns a summary."""
    out_dir = Path(out_dir).resolve()
    shutil.rmtree(out_dir / "runs", ignore_errors=True)  # the demo's own scratch: every `make demo` starts afresh
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = f"REPORT = {str(out_dir / 'quickstart.html')!r}\nOUT = {str(out_dir / 'runs')!r}\n"
    started = time.time()
    run_notebook(shipped_notebook(QUICKSTART), out_dir, settings + (QUICK_SETTINGS if quick else ""),
                 timeout_s=timeout_s, save_to=out_dir / "quickstart.ipynb")
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
