"""Aggregation on export (issue 14): every label, majority vote, or adjudicated; gold left out by default;
the adjudication queue and decisions; what each policy dropped."""

import pytest

from rlhflab.labeling.exports import adjudication_queue, comparisons, kto_rows, to_dataframe, trl_rows
from rlhflab.labeling.records import Item
from rlhflab.labeling.store import LabelStore

AGREED = Item("What color is the fox?", ("The fox is red.", "Go away."))
SPLIT = Item("Where does the owl live?", ("In the forest.", "Owls? Whatever."))
EVEN = Item("What does the bee make?", ("Honey.", "Noise."))
GOLD = Item("What is 2 + 2?", ("4.", "5."), gold="a")
REPLY = Item("What sound does the cow make?", ("Moo.",))


@pytest.fixture
def store(tmp_path):
    """Three annotators agree on AGREED and GOLD, split 2-1 on SPLIT and REPLY; two split 1-1 on EVEN."""
    store = LabelStore(tmp_path / "labels.db")
    store.add_items([AGREED, SPLIT, EVEN, GOLD, REPLY])
    for who, strength in (("ada", "slightly"), ("bob", "much"), ("cy", "clearly")):
        store.record(AGREED.item_id, who, choice="a", strength=strength, flags={"b": [f"rude-{who}"]})
        store.record(GOLD.item_id, who, choice="a")
    store.record(SPLIT.item_id, "ada", choice="a", strength="much")
    store.record(SPLIT.item_id, "bob", choice="a", strength="slightly")
    store.record(SPLIT.item_id, "cy", choice="b", strength="clearly", rationale="the forest is too vague")
    store.record(EVEN.item_id, "ada", choice="a", strength="clearly")
    store.record(EVEN.item_id, "bob", choice="tie")
    for who, verdict in (("ada", "up"), ("bob", "up"), ("cy", "down")):
        store.record(REPLY.item_id, who, choice=verdict)
    yield store
    store.close()


def pairs(rows):
    return [(r["prompt"], r["chosen"], r["margin"], r["annotator"]) for r in rows]


def test_all_keeps_every_label_and_leaves_gold_out_by_default(store):
    rows = trl_rows(store)
    assert len(rows) == 3 + 3 + 1  # EVEN's tie is no training pair
    assert rows.dropped == {"gold item": 3, "tie or both bad": 1}
    assert len(trl_rows(store, include_gold=True)) == 10
    assert "gold item" not in trl_rows(store, include_gold=True).dropped


def test_what_was_dropped_names_only_reasons_that_dropped_something(tmp_path):
    unanimous = LabelStore(tmp_path / "unanimous.db")
    unanimous.add_items([AGREED])
    for who in ("ada", "bob"):
        unanimous.record(AGREED.item_id, who, choice="a", strength="clearly")
    for policy in ("all", "majority", "adjudicated"):
        rows = trl_rows(unanimous, policy=policy)
        assert len(rows) == (2 if policy == "all" else 1) and dict(rows.dropped) == {}, (policy, rows.dropped)
    unanimous.close()


def test_majority_gives_one_verdict_per_item_and_reports_the_rest(store):
    rows = trl_rows(store, policy="majority")
    assert pairs(rows) == [(AGREED.prompt, "The fox is red.", 2 / 3, "ada+bob+cy"),  # the median strength
                           (SPLIT.prompt, "In the forest.", 1 / 3, "ada+bob")]  # lower of the middle two
    assert rows.dropped == {"gold item": 3, "outvoted": 1 + 1, "no majority": 2}  # cy on SPLIT and on REPLY
    [agreed] = [r for r in comparisons(store, policy="majority") if r["item_id"] == AGREED.item_id]
    assert agreed["votes"] == "3/3" and agreed["flags"] == ["rejected:rude-ada", "rejected:rude-bob",
                                                            "rejected:rude-cy"]
    kto = kto_rows(store, policy="majority")
    assert [(r["completion"], r["label"]) for r in kto if r["source"] == "rating"] == [("Moo.", True)]
    assert to_dataframe(store, policy="majority").attrs["dropped"]["no majority"] == 2


def test_adjudicated_uses_decisions_and_unanimous_items_only(store):
    rows = trl_rows(store, policy="adjudicated")
    assert pairs(rows) == [(AGREED.prompt, "The fox is red.", 2 / 3, "ada+bob+cy")]
    assert rows.dropped == {"gold item": 3, "disagreement without a decision": 3 + 2 + 3}

    queue = adjudication_queue(store)
    assert [entry["item_id"] for entry in queue] == [SPLIT.item_id, EVEN.item_id, REPLY.item_id]
    split = queue[0]
    assert split["responses"] == list(SPLIT.responses) and split["decision"] is None
    assert [(v["annotator"], v["choice"], v["strength"], v["rationale"]) for v in split["labels"]] == [
        ("ada", "a", "much", None), ("bob", "a", "slightly", None), ("cy", "b", "clearly", "the forest is too vague")]

    store.decide(SPLIT.item_id, "lead", choice="b", strength="much", rationale="cy is right: 'the forest' is vague")
    store.decide(EVEN.item_id, "lead", choice="tie")
    rows = trl_rows(store, policy="adjudicated")
    assert pairs(rows) == [(AGREED.prompt, "The fox is red.", 2 / 3, "ada+bob+cy"),
                           (SPLIT.prompt, "Owls? Whatever.", 1.0, "lead")]
    assert rows.dropped == {"gold item": 3, "overruled by a decision": 2 + 1, "tie or both bad": 1,
                            "disagreement without a decision": 3}
    assert adjudication_queue(store)[0]["decision"]["choice"] == "b"
    assert trl_rows(store, policy="all") == trl_rows(store)  # decisions leave the other policies alone
    store.undo("lead")  # the EVEN decision
    store.undo("lead")  # the SPLIT decision
    assert len(trl_rows(store, policy="adjudicated")) == 1


def test_an_unknown_policy_names_the_choices(store):
    with pytest.raises(ValueError, match="policy must be one of \\('all', 'majority', 'adjudicated'\\)"):
        trl_rows(store, policy="vote")
