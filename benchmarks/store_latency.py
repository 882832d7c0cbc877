"""The store's label round trip at 100,000 events: `next_item` + `record`, p50 / p95 (goal: p95 <= 20 ms).

    .venv/bin/python benchmarks/store_latency.py [--events 100000] [--annotators 8] [--rounds 200]
                                                 [--pace 0.3] [--backends sqlite postgres] [--out FILE]

For each backend the store is filled with `--events` labels (one per item, from the annotators in
turn, written in batches), then `--annotators` forked processes label at once, each timing
`--rounds` round trips: ask for the next item, then record a label on it, as the widget does on
every click. Between round trips each annotator looks at the item for `--pace` seconds: by default
the widget's `min_view_ms`, the shortest time it lets an item be on screen before it takes a label,
so this is 8 people labelling as fast as the widget allows. `--pace 0` is a stress test instead:
every process asks again at once, so on a machine with fewer cores than annotators it measures how
long a round trip waits for a core.
Afterwards it checks that nothing was lost or duplicated: every event is stored once,
and no item was handed to two annotators (overlap 1). Postgres is a throwaway local cluster
(tests/test_store.py's `throwaway_postgres`), or RLHFLAB_POSTGRES_URL when set.
"""

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_store import throwaway_postgres

from rlhflab.labeling.records import Item
from rlhflab.labeling.store import LabelStore
from rlhflab.labeling.widget import LabelerConfig

FILL_BATCH = 5000  # events per record_many while filling: one transaction each


def item(n: int) -> Item:
    return Item(f"question {n}?", (f"a careful answer to question {n}", f"a careless answer to question {n}"))


def fill(url: str, project: str, events: int, annotators: int, rounds: int):
    """`events` labels on the first `events` items, and enough open items for every timed round."""
    store = LabelStore(url, project)
    store.add_items(item(n) for n in range(events + annotators * rounds + annotators))
    item_ids = list(store.items())
    for start in range(0, events, FILL_BATCH):
        store.record_many([{"item_id": item_ids[n], "annotator": f"w{n % annotators}", "choice": "ab"[n % 2],
                            "strength": "clearly", "shown_order": [n % 2, 1 - n % 2],
                            "event_id": f"{project}-fill-{n:07d}"}
                           for n in range(start, min(start + FILL_BATCH, events))])
    store.close()


def label(url: str, project: str, annotator: str, rounds: int, pace: float, start, results):
    """Time `rounds` round trips of one annotator; send back the latencies (s) and the items labelled."""
    store = LabelStore(url, project)
    start.wait()
    latencies, labelled = [], []
    for i in range(rounds):
        began = time.perf_counter()
        shown = store.next_item(annotator)
        store.record(shown.item_id, annotator, choice="ab"[i % 2], strength="clearly", shown_order=[i % 2, 1 - i % 2],
                     event_id=f"{project}-{annotator}-{i:05d}")
        latencies.append(time.perf_counter() - began)
        labelled.append(shown.item_id)
        time.sleep(pace)  # the person reads the next item
    results.put((annotator, latencies, labelled))
    store.close()


def run(url: str, events: int, annotators: int, rounds: int, pace: float) -> dict:
    project = uuid.uuid4().hex[:8]  # a fresh project, also in a database used before; it prefixes the event ids
    fill(url, project, events, annotators, rounds)
    fork = multiprocessing.get_context("fork")
    start, results = fork.Event(), fork.Queue()
    workers = [fork.Process(target=label, args=(url, project, f"w{k}", rounds, pace, start, results))
               for k in range(annotators)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # every worker has opened the store
    start.set()
    gathered = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0, f"a worker failed with exit code {worker.exitcode}"
    latencies = sorted(t for _, times, _ in gathered for t in times)
    labelled = Counter(item_id for _, _, items in gathered for item_id in items)

    store = LabelStore(url, project)
    stored = [e["event_id"] for e in store.events()]
    expected = {f"{project}-fill-{n:07d}" for n in range(events)} | {f"{project}-w{k}-{i:05d}"
                                                            for k in range(annotators)
                                                            for i in range(rounds)}
    assert len(stored) == len(set(stored)) == len(expected) and set(stored) == expected, "events lost or duplicated"
    assert max(labelled.values()) == 1, "an item was handed to two annotators"
    labels_per_item = Counter(label["item_id"] for label in store.labels())
    assert max(labels_per_item.values()) == 1 and sum(labels_per_item.values()) == len(expected)
    store.close()
    return {"events_before": events, "annotators": annotators, "pace_s": pace, "round_trips": len(latencies),
            "p50_ms": round(1000 * statistics.median(latencies), 2),
            "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 2),
            "max_ms": round(1000 * latencies[-1], 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="labels in the store before timing starts")
    parser.add_argument("--annotators", type=int, default=8, help="processes labelling at once")
    parser.add_argument("--rounds", type=int, default=200, help="timed round trips per annotator")
    parser.add_argument("--pace", type=float, default=LabelerConfig().min_view_ms / 1000,
                        help="seconds each annotator waits between round trips (0: all ask at once)")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args()
    figures = {}
    for backend in args.backends:
        if backend == "sqlite":
            url = str(Path(tempfile.mkdtemp(prefix="rlhflab-latency-")) / "labels.db")
            figures["sqlite"] = run(url, args.events, args.annotators, args.rounds, args.pace)
        elif os.environ.get("RLHFLAB_POSTGRES_URL"):
            figures["postgres"] = run(os.environ["RLHFLAB_POSTGRES_URL"], args.events, args.annotators, args.rounds,
                                      args.pace)
        else:
            with throwaway_postgres() as url:
                if url is None:
                    sys.exit("no Postgres binaries here (apt-get install postgresql), "
                             "and RLHFLAB_POSTGRES_URL is unset")
                figures["postgres"] = run(url, args.events, args.annotators, args.rounds, args.pace)
        print(json.dumps({backend: figures[backend]}), flush=True)
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
