"""Gold items that calibrate (mixed in at a rate, a qualification round, feedback) and the guidelines'
rules (a reason for some answers, a minimum time on an item, the version stored with every label)."""

import time

import pytest

from rlhflab.labeling.records import Item
from rlhflab.labeling.store import LabelStore, QualificationFailed, StoreConfig
from rlhflab.labeling.widget import GuidelineExample, LabelerConfig, PairwiseLabeler


def pair(n: int) -> Item:
    return Item(f"prompt {n}?", (f"good answer {n}", f"bad answer {n}"), ("sft", "ppo"))


def gold_pair(n: int) -> Item:
    return Item(f"gold prompt {n}?", (f"right {n}", f"wrong {n}"), ("sft", "ppo"), gold="a")


def served(store: LabelStore, annotator: str, choice=lambda item: "a") -> list[Item]:
    """Everything `next_item` hands `annotator`, in order, each labeled with `choice(item)`."""
    out = []
    while (item := store.next_item(annotator)) is not None:
        out.append(item)
        store.record(item.item_id, annotator, choice=choice(item))
    return out


# -- gold items mixed in -----------------------------------------------------------------------

def test_gold_items_are_mixed_in_at_the_rate_wherever_they_sit_in_the_queue(tmp_path):
    store = LabelStore(tmp_path / "l.db", config=StoreConfig(gold_rate=0.2, overlap=2, synchronous="NORMAL"))
    store.add_items([gold_pair(n) for n in range(6)] + [pair(n) for n in range(24)])  # gold added first
    positions = {}
    for who in ("ada", "bob"):
        is_gold = [item.gold is not None for item in served(store, who)]
        for n in range(1, 25):  # every prefix holds gold_rate of its items, give or take less than one
            assert abs(sum(is_gold[:n]) - 0.2 * n) < 1, (who, n, is_gold[:n])
        assert len(is_gold) == 30 and sum(is_gold) == 6
        positions[who] = [n for n, g in enumerate(is_gold) if g]
    assert positions["ada"] != positions["bob"]  # no fixed period to learn, for one annotator or between two
    assert len({b - a for a, b in zip(positions["ada"], positions["ada"][1:])}) > 1

    in_order = LabelStore(tmp_path / "l.db", project="in queue order")  # gold_rate=None: as added, so first here
    in_order.add_items([gold_pair(n) for n in range(3)] + [pair(n) for n in range(3)])
    assert [item.gold for item in served(in_order, "ada")] == ["a"] * 3 + [None] * 3


def test_no_one_can_compute_the_gold_schedule_from_what_an_annotator_sees(tmp_path):
    """Issue 30, defect 13: the draw was crc32(project/annotator/answered), all known to the annotator, so the
    same name in a project of the same name met gold at the same places in every store."""
    schedules = set()
    for copy in range(3):
        store = LabelStore(tmp_path / f"copy{copy}.db", config=StoreConfig(gold_rate=0.3, synchronous="NORMAL"))
        store.add_items([gold_pair(n) for n in range(12)] + [pair(n) for n in range(28)])
        schedules.add(tuple(item.gold is not None for item in served(store, "ada")))
    assert len(schedules) > 1


# -- the qualification round ---------------------------------------------------------------------

def test_real_items_wait_for_a_passed_qualification_round_and_a_failure_says_why(tmp_path):
    config = StoreConfig(qualification=3, qualification_accuracy=0.6)
    store = LabelStore(tmp_path / "l.db", config=config)
    store.add_items([pair(n) for n in range(4)] + [gold_pair(n) for n in range(5)])  # gold at the end of the queue
    for answer in "aba":
        item = store.next_item("ada")
        assert item.gold == "a"  # only gold until the round is over
        store.record(item.item_id, "ada", choice=answer)
    assert store.qualification("Ada") == {"required": 3, "answered": 3, "correct": 2, "passed": True}
    assert store.next_item("ada").gold is None  # 2 of 3 right: real items now

    for n in range(3):  # bob gets 1 of 3 right, then fixes his answers once he hears the right ones
        item = store.next_item("bob")
        store.record(item.item_id, "bob", choice="a" if n == 0 else "b")
        store.record(item.item_id, "bob", choice="a")
    assert store.qualification("bob")["passed"] is False
    with pytest.raises(QualificationFailed, match="'bob' did not pass the qualification round: 1 of 3 gold items "
                                                  "right, and this project asks for 60%.*no real items"):
        store.next_item("bob")

    short = LabelStore(tmp_path / "l.db", project="too little gold", config=config)
    short.add_items([pair(0), gold_pair(0), gold_pair(1)])
    with pytest.raises(QualificationFailed, match="'cy' has labeled 2 of the 3 gold items.*add gold items"):
        served(short, "cy")


def test_the_widget_shows_a_failed_qualification_and_feedback_after_each_gold_item(tmp_path):
    store = LabelStore(tmp_path / "l.db", config=StoreConfig(qualification=2, qualification_accuracy=1.0))
    store.add_items([pair(0), gold_pair(0), gold_pair(1)])
    labeler = PairwiseLabeler(store, "ada", LabelerConfig(seed=0, gold_feedback=True))
    assert labeler.progress["qualifying"] == "0 of 2"
    item = labeler.item
    wrong = "right" if item["shown_order"][0] == 0 else "left"  # the side showing the wrong response
    labeler.handle({"action": "label", "item_id": item["item_id"], "choice": wrong, "strength": "much"})
    feedback = labeler.feedback
    assert feedback["correct"] is False and feedback["given"] == f"{wrong} better much"
    assert feedback["expected"] == f"{'left' if wrong == 'right' else 'right'} better"
    assert feedback["better"] == "right 0" and feedback["prompt"] == "gold prompt 0?"
    item = labeler.item
    right = "left" if item["shown_order"][0] == 0 else "right"
    labeler.handle({"action": "label", "item_id": item["item_id"], "choice": right})
    assert labeler.feedback["correct"] is True
    assert labeler.item == {} and "did not pass the qualification round: 1 of 2" in labeler.status
    assert [e["item_id"] for e in store.events()] == [gold_pair(0).item_id, gold_pair(1).item_id]


# -- guidelines and rules --------------------------------------------------------------------------

def test_the_rules_refuse_an_answer_without_a_reason_or_given_too_fast_and_keep_what_is_stored(tmp_path):
    store = LabelStore(tmp_path / "l.db")
    store.add_items([pair(n) for n in range(3)])
    config = LabelerConfig(seed=0, rationale_for=("both_bad", "much", "flagged"), min_seconds=0.2)
    labeler = PairwiseLabeler(store, "ada", config)
    time.sleep(0.2)
    labeler.handle({"action": "label", "item_id": labeler.item["item_id"], "choice": "tie"})  # no rule: stored
    first = labeler.item
    time.sleep(0.2)
    for message, rule in ((dict(choice="both_bad"), "both bad"), (dict(choice="left", strength="much"), "much better"),
                          (dict(choice="right", flags={"0": ["harmful"]}), "a flagged response")):
        labeler._on_message(labeler, {"action": "label", "item_id": first["item_id"], **message}, [])
        assert labeler.status == (f"not saved: the guidelines ask for a reason when the answer is {rule}: "
                                  "type it in 'Why?' and answer again")
        assert labeler.item == first  # still on screen, to answer again
    labeler.handle({"action": "label", "item_id": first["item_id"], "choice": "both_bad", "rationale": "both rude"})
    labeler._on_message(labeler, {"action": "label", "item_id": labeler.item["item_id"], "choice": "tie"}, [])
    assert labeler.status.startswith("not saved: answered 0.0 s after the item appeared; the guidelines ask for at "
                                     "least 0.2 s on each item")
    assert [(e["choice"], e["rationale"]) for e in store.events()] == [("tie", None), ("both_bad", "both rude")]
    with pytest.raises(ValueError, match="rationale_for names \\['typo'\\]; pick from"):
        LabelerConfig(rationale_for=("typo",))


def test_every_answer_stores_the_guidelines_version_and_examples_reach_the_widget_as_text(tmp_path):
    store = LabelStore(tmp_path / "l.db")
    store.add_items([pair(n) for n in range(2)])
    example = GuidelineExample("Capital of France?", "Paris.", "<img src=x onerror=alert(1)>", why="a fact")
    config = LabelerConfig(seed=0, examples=(example,))
    assert config.guidelines_version != LabelerConfig().guidelines_version  # the examples are part of it
    assert LabelerConfig(guidelines_version="2024-06").guidelines_version == "2024-06"
    labeler = PairwiseLabeler(store, "ada", config)
    assert labeler.examples == [{"prompt": "Capital of France?", "good": "Paris.",
                                 "bad": "<img src=x onerror=alert(1)>", "why": "a fact"}]  # raw: drawn with textContent
    labeler.handle({"action": "label", "item_id": labeler.item["item_id"], "choice": "left"})
    labeler.handle({"action": "skip", "item_id": labeler.item["item_id"]})
    assert {e["guidelines"] for e in store.events()} == {config.guidelines_version}
    assert labeler.guidelines_version == config.guidelines_version
