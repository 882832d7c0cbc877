"""`make demo`: the whole lab on the embedded tiny world, headless, in one command.

    python -m rlhflab.lab.demo [--quick] [--out reports]

Executes the quickstart notebook that ships in the package (`notebooks/00_quickstart.ipynb`: SFT,
then rounds of gold labeling, reward model and PPO) with nbclient, and writes
`<out>/quickstart.ipynb` (the executed notebook) and `<out>/quickstart.html` (the report of
`rlhflab.lab.report`, which the notebook's last cell writes). `--quick` sets the notebook's QUICK
toggle, whose sizes are those of the tests. Where Chromium and Playwright are
installed (`make test` installs Playwright; `apt-get install chromium`), it also writes screenshots
of the report and of the PPO dashboard next to them, for people to look at. It works from a checkout
and from an installed wheel alike.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from .notebook import run_notebook, shipped_notebook

__all__ = ["CHROMIUM", "run_quickstart", "screenshots", "main"]

QUICKSTART = "00_quickstart.ipynb"
CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright's own browser download is the fallback


def run_quickstart(out_dir: str | Path, quick: bool = False, timeout_s: int = 1800) -> dict:
    """Execute the quickstart notebook with its report going to `out_dir`; returns a summary."""
    out_dir = Path(out_dir).resolve()
    shutil.rmtree(out_dir / "runs", ignore_errors=True)  # the demo's own scratch: every `make demo` starts afresh
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = f"REPORT = {str(out_dir / 'quickstart.html')!r}\nOUT = {str(out_dir / 'runs')!r}\n"
    started = time.time()
    run_notebook(shipped_notebook(QUICKSTART), out_dir, settings + f"QUICK = {quick}",  # the notebook's small sizes
                 timeout_s=timeout_s, save_to=out_dir / "quickstart.ipynb")
    rounds = [json.loads(line) for line in (out_dir / "runs" / "rounds.jsonl").read_text().splitlines()]
    pictures = screenshots({out_dir / "quickstart.html": out_dir / "quickstart.png",
                            out_dir / "runs" / "ppo" / "metrics.html": out_dir / "ppo.png"})
    return {"seconds": round(time.time() - started, 1), "report": str(out_dir / "quickstart.html"),
            "notebook": str(out_dir / "quickstart.ipynb"), "screenshots": [str(p) for p in pictures],
            "rounds": [{k: v for k, v in r.items() if k != "config"} for r in rounds]}


def screenshots(pages: dict[Path, Path]) -> list[Path]:
    """Full-page PNGs of HTML pages ({page: png}) in headless Chromium; none, with a note, without one."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        print("no screenshots: Playwright is not installed (pip install playwright)")
        return []
    executable = CHROMIUM if Path(CHROMIUM).exists() else None  # else Playwright's own download, if any
    written = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            view = browser.new_page(viewport={"width": 1200, "height": 900})
            for html_path, png in pages.items():
                view.goto(html_path.resolve().as_uri())
                view.wait_for_selector(".plotly-graph-div .main-svg")  # plotly has drawn
                view.screenshot(path=str(png), full_page=True)
                written.append(png)
            browser.close()
    except Error as error:
        print(f"no screenshots: Chromium did not start ({str(error).splitlines()[0]}); apt-get install chromium")
    return written


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
