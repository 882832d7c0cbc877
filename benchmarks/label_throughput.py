"""Durable labels per second into a SQLite LabelStore (goal: at least 1,000/s).

    .venv/bin/python benchmarks/label_throughput.py [--labels 5000] [--processes 1 4] [--out FILE]

Each label is one `LabelStore.record` call: one transaction, committed with fsync (WAL,
synchronous=FULL) before the call returns, exactly as the widget stores a label. With several
processes they write into the same file at once (forked, so no process pays for imports while timed).
"""

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

from rlhflab.labeling.store import LabelStore
from rlhflab.tiny import TinyWorld
from rlhflab.tiny.annotate import world_items


def label(path: str, annotator: str, n: int, start):
    store = LabelStore(path)
    item_ids = list(store.items())
    start.wait()
    for i in range(n):
        store.record(item_ids[i % len(item_ids)], annotator, choice="ab"[i % 2], strength="clearly",
                     shown_order=[i % 2, 1 - i % 2], flags={"b": ["unhelpful"]} if i % 7 == 0 else None)


def run(processes: int, labels: int) -> float:
    path = str(Path(tempfile.mkdtemp(prefix="rlhflab-throughput-")) / "labels.db")
    LabelStore(path).add_items(world_items(TinyWorld(), 100))
    fork = multiprocessing.get_context("fork")
    start = fork.Event()
    workers = [fork.Process(target=label, args=(path, f"w{k}", labels // processes, start)) for k in range(processes)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)  # every worker has opened the store
    began = time.perf_counter()
    start.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    stored = len(LabelStore(path).events())
    assert stored == labels // processes * processes, f"{stored} events stored"
    return stored / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=5000, help="labels per run, split over the processes")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args()
    figures = {f"{p}_process{'es' if p > 1 else ''}_labels_per_s": round(run(p, args.labels)) for p in args.processes}
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
