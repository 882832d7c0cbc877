"""Key press to next item on screen, in a real browser: p50 / p95 in milliseconds (goal: p95 < 50 ms).

    .venv/bin/python benchmarks/label_latency.py [--labels 200] [--nagle] [--generating] [--out FILE]

JupyterLab runs on localhost, headless Chromium opens a notebook with a PairwiseLabeler on a SQLite
store, and a person's key presses ('a' / 'b', alternating) label items, each as soon as the item on screen takes
one: the widget as shipped ignores keys for `min_view_ms` (300 ms) after an item appears, so no person labels
faster, and work the kernel does after sending an item (the progress line) is done by then.
Inside the page a capture-phase
keydown listener notes the time of each press, and a MutationObserver notes when the widget's root
shows the next item id: the label has been committed to SQLite (fsync) and the next item drawn. The
"painted" figure adds the wait for the next animation frame. The server is `make lab`'s: with
scripts/jupyter_nodelay.py (no Nagle delay on the kernel websocket); --nagle serves without it.

--generating labels what a GenerationQueue makes in the same kernel meanwhile, as notebook 02 does (but
16 items ahead): the tiny model answers batches of 4 prompts at two temperatures, so generation and
clicks share the kernel and the cores. "dry_waits" counts the presses after which no item was ready
yet; the time to the next item then includes generating it.
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
from lab_session import CHROMIUM, CHROMIUM_ARGS, LABELER, NODELAY, JupyterLab  # noqa: E402

from rlhflab.labeling.store import LabelStore  # noqa: E402
from rlhflab.tiny import TinyWorld  # noqa: E402
from rlhflab.tiny.annotate import world_items  # noqa: E402

PROBE = """() => {
  window.__presses = []; window.__shown = []; window.__painted = []; window.__dry = 0;
  document.addEventListener('keydown', () => window.__presses.push(performance.now()), true);
  const root = document.querySelector('.rlhflab-labeler');
  new MutationObserver(() => {
    if (!root.dataset.itemId) { window.__dry += 1; return; }  // the queue ran dry: no item on screen
    window.__shown.push(performance.now());
    requestAnimationFrame(() => window.__painted.push(performance.now()));
  }).observe(root, {attributes: true, attributeFilter: ['data-item-id']});
}"""


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=200, help="key presses to time")
    parser.add_argument("--nagle", action="store_true", help="serve without scripts/jupyter_nodelay.py")
    parser.add_argument("--generating", action="store_true",
                        help="label the items a GenerationQueue makes in the same kernel meanwhile")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    workdir = Path(tempfile.mkdtemp(prefix="rlhflab-latency-"))
    store_path = workdir / "labels.db"
    cells = ["from rlhflab.labeling.store import LabelStore\nfrom rlhflab.labeling.widget import PairwiseLabeler"]
    if args.generating:  # notebook 02's set-up; the prompts are drawn twice over, since repeats are dropped
        cells += ["from rlhflab import TinyWorld, load_policy\n"
                  "from rlhflab.labeling.candidates import GenerationConfig, GenerationQueue\n"
                  f"prompts = [q.text for q in TinyWorld(seed=0).questions('train', {2 * (args.labels + 1)}, seed=5)]\n"
                  f"assert len(set(prompts)) > {args.labels}, 'too few distinct prompts for the labels asked'\n"
                  "policy = load_policy('tiny')",
                  f"store = LabelStore({str(store_path)!r})\n"
                  "queue = GenerationQueue(store, prompts, [policy, policy], "
                  "GenerationConfig(batch_size=4, ahead=16),\n"
                  "                        temperatures=[0.7, 1.5]).start()\n"
                  "PairwiseLabeler(store, 'bench', queue=queue)"]
    else:
        LabelStore(store_path).add_items(world_items(TinyWorld(), args.labels + 1))
        cells += [f"PairwiseLabeler(LabelStore({str(store_path)!r}), 'bench')"]
    config = None if args.nagle else NODELAY
    with JupyterLab(workdir, config=config) as lab, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = lab.open_notebook("latency.ipynb", cells, browser)
        page.wait_for_selector(LABELER)
        page.evaluate(PROBE)
        page.locator(".rlhflab-labeler .rl-prompt").click()
        for i in range(args.labels):
            page.wait_for_function("() => document.querySelector('.rlhflab-labeler').dataset.ready === 'true'")
            page.keyboard.press("ab"[i % 2])
            page.wait_for_function(f"() => window.__painted.length > {i}")
        presses, shown, painted, dry = page.evaluate(
            "() => [window.__presses, window.__shown, window.__painted, window.__dry]")
        browser.close()
    assert len(presses) == len(shown) == len(painted) == args.labels, (len(presses), len(shown), len(painted))
    stored = len(LabelStore(store_path).labels())
    to_shown = [s - p for p, s in zip(presses, shown)]
    to_painted = [s - p for p, s in zip(presses, painted)]
    figures = {"labels": args.labels, "stored": stored, "tcp_nodelay": not args.nagle, "generating": args.generating,
               "dry_waits": dry,  # presses after which the queue had no item yet: their figure includes generating one
               "shown_p50_ms": round(percentile(to_shown, 50), 1), "shown_p95_ms": round(percentile(to_shown, 95), 1),
               "painted_p50_ms": round(percentile(to_painted, 50), 1),
               "painted_p95_ms": round(percentile(to_painted, 95), 1)}
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    if stored != args.labels:
        sys.exit(f"only {stored} of {args.labels} labels reached the store")


if __name__ == "__main__":
    main()
