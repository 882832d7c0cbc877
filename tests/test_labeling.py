"""The labelers' Python side (driven as the browser would), the queue, the playground, gold labeling,
and the front end's pure logic under node."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from rlhflab.candidates import GenerationConfig, GenerationQueue, items_from
from rlhflab.exports import comparisons, kto_rows, ratings
from rlhflab.labeling import LabelerConfig, PairwiseLabeler, RankingLabeler, render_guidelines
from rlhflab.records import Item
from rlhflab.store import LabelStore, StoreConfig
from rlhflab.tiny import GoldAnnotator
from rlhflab.tiny.annotate import label_with_gold, world_items

WIDGETS = Path(__file__).parent.parent / "widgets"


@pytest.fixture
def store(tmp_path, world):
    store = LabelStore(tmp_path / "labels.db")
    store.add_items(world_items(world, 6))
    return store


def test_pairwise_label_maps_shown_sides_to_stored_responses(store):
    labeler = PairwiseLabeler(store, "ada", LabelerConfig(seed=3))
    seen = []
    for choice in ("left", "right", "left"):
        item = labeler.item
        seen.append(item)
        labeler.handle({"action": "label", "item_id": item["item_id"], "choice": choice, "strength": "much",
                        "flags": {"1": ["harmful", "harmful"]}, "rationale": "because"})
    labels = store.labels()
    assert len(labels) == 3 and labels[0]["annotator"] == "ada" and labels[0]["rationale"] == "because"
    for item, label, choice in zip(seen, labels, ("left", "right", "left")):
        stored = store.item(item["item_id"])
        shown_winner = item["responses"][0 if choice == "left" else 1]
        assert stored.responses["ab".index(label["choice"])] == shown_winner
        assert label["shown_order"] == item["shown_order"]
        assert label["flags"] == {"ab"[item["shown_order"][1]]: ["harmful"]}
    assert {tuple(i["shown_order"]) for i in seen} == {(0, 1), (1, 0)}  # the order really is randomised
    assert labeler.progress["labelled"] == 3 and labeler.progress["remaining"] == 3
    assert labeler.history[0]["summary"] == labels[-1]["choice"] + " much"


def test_undo_brings_the_item_back_and_edit_replaces_an_earlier_label(store):
    labeler = PairwiseLabeler(store, "ada", LabelerConfig(seed=0))
    first = labeler.item["item_id"]
    labeler.handle({"action": "label", "item_id": first, "choice": "tie"})
    second = labeler.item["item_id"]
    labeler.handle({"action": "skip", "item_id": second})
    labeler.handle({"action": "undo"})  # undoes the skip
    assert labeler.item["item_id"] == second and labeler.item["previous"]["action"] == "skip"
    labeler.handle({"action": "label", "item_id": second, "choice": "both_bad"})
    earlier = next(h for h in labeler.history if h["summary"] == "tie")
    labeler.handle({"action": "edit", "event_id": earlier["event_id"]})
    assert labeler.item["item_id"] == first and labeler.item["editing"] and labeler.item["previous"]["choice"] == "tie"
    labeler.handle({"action": "label", "item_id": first, "choice": "left", "strength": "slightly"})
    current = {l["item_id"]: l["choice"] for l in store.labels()}
    assert current[second] == "both_bad" and current[first] in ("a", "b")
    assert [e["action"] for e in store.events()] == ["label", "skip", "undo", "label", "label"]


def test_stale_and_bad_messages_store_nothing(store):
    labeler = PairwiseLabeler(store, "ada")
    labeler._on_message(labeler, {"action": "label", "item_id": "not-on-screen", "choice": "left"}, [])
    assert "no longer on screen" in labeler.status
    labeler._on_message(labeler, {"action": "label", "item_id": labeler.item["item_id"], "choice": "maybe"}, [])
    assert labeler.status.startswith("not saved: choice must be")
    assert store.events() == []
    with pytest.raises(ValueError, match="annotator='your-name'"):
        PairwiseLabeler(store, " ")


def test_flag_prompt_and_the_end_of_the_queue(tmp_path):
    store = LabelStore(tmp_path / "l.db")
    store.add_items([Item("asdf?", ("x", "y"))])
    labeler = PairwiseLabeler(store, "ada")
    labeler.handle({"action": "flag_prompt", "item_id": labeler.item["item_id"], "rationale": "gibberish"})
    assert labeler.item == {} and "nothing left" in labeler.status
    assert store.events()[0]["action"] == "flag_prompt" and store.events()[0]["rationale"] == "gibberish"


def test_ranking_labeler_stores_ranks_by_response_and_exports_pairs(tmp_path, world):
    store = LabelStore(tmp_path / "l.db")
    store.add_items(world_items(world, 2, k=4))
    labeler = RankingLabeler(store, "ada", LabelerConfig(seed=1))
    item = labeler.item
    with pytest.raises(ValueError, match="give every one of the 4"):
        labeler.handle({"action": "label", "item_id": item["item_id"], "ranks": [1, 2]})
    labeler.handle({"action": "label", "item_id": item["item_id"], "ranks": [2, 1, 3, 1]})
    [label] = store.labels()
    for position, rank in enumerate([2, 1, 3, 1]):
        assert label["ranking"][item["shown_order"][position]] == rank
    rows = comparisons(store)
    assert len(rows) == 6 and sum(r["label"] == "tie" for r in rows) == 1


def test_items_from_dataframe_and_jsonl(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"prompt": ["p1", "p2"], "a": ["x", "y"], "b": ["z", "w"], "who_a": ["sft", "sft"],
                          "who_b": ["ppo", "ppo"], "answer": ["a", ""]})
    items = items_from(frame, responses=("a", "b"), sources=("who_a", "who_b"), gold="answer")
    assert items[0].responses == ("x", "z") and items[0].sources == ("sft", "ppo")
    assert items[0].gold == "a" and items[1].gold is None
    (tmp_path / "c.jsonl").write_text(json.dumps({"prompt": "p", "response_a": "x", "response_b": "y"}) + "\n")
    assert items_from(tmp_path / "c.jsonl")[0].responses == ("x", "y")
    with pytest.raises(ValueError, match="column 'response_b' is missing"):
        items_from([{"prompt": "p", "response_a": "x"}])


def test_label_with_gold_labels_everything_left_through_the_store(tmp_path, world):
    store = LabelStore(tmp_path / "l.db", config=StoreConfig(overlap=2))
    store.add_items(world_items(world, 10) + world_items(world, 3, k=3, seed=5))
    assert len(label_with_gold(store, GoldAnnotator(world), "g1", n=4)) == 4
    label_with_gold(store, GoldAnnotator(world), "g1")
    label_with_gold(store, GoldAnnotator(world, noise=0.3, seed=1), "g2")
    assert store.progress()["by_annotator"] == {"g1": 13, "g2": 13}
    gold = GoldAnnotator(world)
    for label in store.labels():  # noise-free gold picked the response gold scores higher
        item = store.item(label["item_id"])
        if label["annotator"] == "g1" and label["choice"] in ("a", "b"):
            winner = "ab".index(label["choice"])
            assert gold.score(item.prompt, item.responses[winner]) > gold.score(item.prompt, item.responses[1 - winner])


@pytest.fixture(scope="module")
def tiny_policy():
    from rlhflab.models import load_policy

    return load_policy("tiny")


def test_generation_queue_runs_ahead_in_the_background(tmp_path, world, tiny_policy):
    store = LabelStore(tmp_path / "l.db")
    prompts = [q.text for q in world.questions("train", 12, seed=2)] + [world.questions("train", 1, seed=2)[0].text.upper()]
    queue = GenerationQueue(store, prompts, [tiny_policy, tiny_policy], GenerationConfig(batch_size=4, ahead=4,
                            max_new_tokens=16), temperatures=[0.7, 1.3])
    labeler = PairwiseLabeler(store, "ada", queue=queue)
    assert labeler.item == {}
    queue.start()  # the first batch is ready when start() returns, the rest comes in the background
    assert labeler.item and queue.generated == 4
    labeled = 0
    while labeled < 12:
        if labeler.item:
            labeler.handle({"action": "label", "item_id": labeler.item["item_id"], "choice": "tie"})
            labeled += 1
        else:
            queue._thread.join(0.05)
    queue.join(timeout=60)
    assert queue.generated == 12 and queue.dedup_report.normalized == [12]  # the shouted repeat was dropped
    assert set(next(iter(store.items().values())).sources) == {"tiny@T0.7", "tiny@T1.3"}


def test_playground_judges_two_fresh_replies_to_a_typed_prompt(tmp_path, tiny_policy):
    store = LabelStore(tmp_path / "l.db")
    labeler = PairwiseLabeler(store, "ada", playground=[tiny_policy])
    assert labeler.playground and labeler.item == {}
    labeler.handle({"action": "prompt", "text": "What sound does the cow make?"})
    assert labeler.item["prompt"] == "What sound does the cow make?" and len(labeler.item["responses"]) == 2
    labeler.handle({"action": "label", "item_id": labeler.item["item_id"], "choice": "right", "strength": "clearly"})
    [label] = store.labels()
    assert store.item(label["item_id"]).meta == {"playground": True}


def test_playground_rates_one_reply_up_or_down_with_a_reason_and_undo_takes_a_rating_back(tmp_path, tiny_policy):
    store = LabelStore(tmp_path / "l.db")
    labeler = PairwiseLabeler(store, "ada", playground=[tiny_policy])
    labeler.handle({"action": "prompt", "text": "What sound does the cow make?", "mode": "rate"})
    first = labeler.item
    assert len(first["responses"]) == 1 and store.item(first["item_id"]).meta == {"playground": True}
    labeler._on_message(labeler, {"action": "label", "item_id": first["item_id"], "choice": "left"}, [])
    assert labeler.status == "not saved: this reply is rated on its own: choice must be 'up' or 'down', not 'left'"
    assert store.events() == []
    labeler.handle({"action": "label", "item_id": first["item_id"], "choice": "up", "rationale": "says moo",
                    "flags": {}})
    assert labeler.history[0]["summary"] == "rated up"
    labeler.handle({"action": "prompt", "text": "What does the bee make?", "mode": "rate"})
    second = labeler.item
    labeler.handle({"action": "label", "item_id": second["item_id"], "choice": "down", "rationale": "off-topic",
                    "flags": {"0": ["off-topic"]}})
    assert [(r["item_id"], r["label"], r["rationale"], r["flags"]) for r in ratings(store)] == [
        (first["item_id"], True, "says moo", []), (second["item_id"], False, "off-topic", ["off-topic"])]
    assert [r["source"] for r in kto_rows(store)] == ["rating", "rating"] and comparisons(store) == []

    labeler.handle({"action": "undo"})  # the down rating goes, and its reply is back on screen
    assert [r["item_id"] for r in ratings(store)] == [first["item_id"]]
    assert labeler.item["item_id"] == second["item_id"] and labeler.item["previous"]["choice"] == "down"
    assert [e["action"] for e in store.events()] == ["label", "label", "undo"]

    labeler.handle({"action": "prompt", "text": "Where does the owl live?"})  # compare two, as before
    pair = labeler.item
    assert len(pair["responses"]) == 2
    labeler._on_message(labeler, {"action": "label", "item_id": pair["item_id"], "choice": "up"}, [])
    assert labeler.status == "not saved: 'up' rates a single reply; for a pair choose left, right, tie or both_bad"
    labeler._on_message(labeler, {"action": "prompt", "text": "Hi?", "mode": "thumbs"}, [])
    assert labeler.status.startswith("not saved: playground mode must be 'compare'")
    assert len(store.events()) == 3
    labeler.handle({"action": "label", "item_id": pair["item_id"], "choice": "tie"})
    assert [r["label"] for r in comparisons(store)] == ["tie"] and len(ratings(store)) == 1


def test_an_item_with_one_response_in_the_store_is_rated_not_compared(tmp_path):
    store = LabelStore(tmp_path / "l.db")
    store.add_items([Item("What color is the fox?", ("The fox is red.",), ("sft",))])
    labeler = PairwiseLabeler(store, "ada")
    assert labeler.item["responses"] == ["The fox is red."] and labeler.item["shown_order"] == [0]
    labeler.handle({"action": "label", "item_id": labeler.item["item_id"], "choice": "down", "strength": "much"})
    [label] = store.labels()
    assert (label["choice"], label["strength"]) == ("down", None) and labeler.item == {}


def test_guidelines_markdown_is_rendered_without_raw_html_or_unsafe_links():
    html = render_guidelines("**bold** <script>alert(1)</script> <img src=x onerror=alert(2)> "
                             "[bad](javascript:alert(3)) [good](https://example.org)")
    assert "<strong>bold</strong>" in html and '<a href="https://example.org">good</a>' in html
    assert "<script" not in html and "<img" not in html and 'href="javascript' not in html


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_front_end_key_map_and_ranking_logic_under_node():
    script = """
    const fs = await import("node:fs");
    const src = fs.readFileSync(process.argv[1], "utf8");
    const m = await import("data:text/javascript," + encodeURIComponent(src));
    const out = {
      a: m.actionForKey("a", "pairwise", 2), left: m.actionForKey("ArrowLeft", "pairwise", 2),
      B: m.actionForKey("B", "pairwise", 2), t: m.actionForKey("t", "pairwise", 2),
      x: m.actionForKey("x", "pairwise", 2), three: m.actionForKey("3", "pairwise", 2),
      u: m.actionForKey("u", "pairwise", 2), q: m.actionForKey("q", "pairwise", 2),
      rank2: m.actionForKey("2", "ranking", 4), rank5: m.actionForKey("5", "ranking", 4),
      enter: m.actionForKey("Enter", "ranking", 4),
      plus: m.actionForKey("+", "pairwise", 1), up: m.actionForKey("ArrowUp", "pairwise", 1),
      minus: m.actionForKey("-", "pairwise", 1), down: m.actionForKey("ArrowDown", "pairwise", 1),
      aOnOne: m.actionForKey("a", "pairwise", 1), uOnOne: m.actionForKey("u", "pairwise", 1),
      ranks: m.assignRank(m.assignRank(m.assignRank([null, null, null], 2, false), 0, true), 1, false),
    };
    console.log(JSON.stringify(out));
    """
    result = subprocess.run(["node", "--input-type=module", "-e", script, str(WIDGETS / "labeler.js")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["a"] == out["left"] == {"type": "choice", "value": "left"}
    assert out["B"] == {"type": "choice", "value": "right"}
    assert out["t"]["value"] == "tie" and out["x"]["value"] == "both_bad"
    assert out["three"] == {"type": "strength", "value": "much"} and out["u"] == {"type": "undo"}
    assert out["q"] is None and out["rank5"] is None
    assert out["rank2"] == {"type": "rank", "value": 1} and out["enter"] == {"type": "submit"}
    assert out["plus"] == out["up"] == {"type": "choice", "value": "up"}
    assert out["minus"] == out["down"] == {"type": "choice", "value": "down"}
    assert out["aOnOne"] is None and out["uOnOne"] == {"type": "undo"}  # a lone reply has no left or right
    assert out["ranks"] == [1, 3, 1]  # third first, first tied with it, second next ("1, 1, 3" ranking)
