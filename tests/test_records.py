"""Import (HH-RLHF, generic JSONL/CSV, dedup, malformed input) and export (DataFrame, TRL Dataset, JSONL)."""

import gzip
import json
from pathlib import Path

import pytest

from rlhflab.labeling.exports import (comparisons, kto_rows, ratings, to_dataframe, to_jsonl, to_kto_jsonl, to_openrlhf,
                                      to_openrlhf_prompts, to_trl_dataset, to_verl_prompts, trl_rows)
from rlhflab.labeling.records import (Conversation, Item, dedup, import_comparisons, import_hh_rlhf, read_comparisons,
                                      read_hh_rlhf)
from rlhflab.labeling.store import LabelStore

HH = Path(__file__).parent.parent.parent / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
ROWS = [{"prompt": "What color is the fox?", "chosen": "The fox is red.", "rejected": "Go away."},
        {"prompt": "Where does the owl live?", "chosen": "In the forest.", "rejected": "Owls? Whatever."}]


@pytest.fixture
def store(tmp_path):
    return LabelStore(tmp_path / "labels.db")


@pytest.mark.skipif(not HH.exists(), reason="the shared HH-RLHF file is not next to this checkout")
def test_hh_rlhf_imports_to_2312_comparisons(store):
    rows = read_hh_rlhf(HH)
    assert len(rows) == 2312
    first = rows[0]
    assert first["prompt"].messages()[:3] == [
        {"role": "user", "content": "what are some pranks with a pen i can do?"},
        {"role": "assistant", "content": "Are you looking for practical joke ideas?"},
        {"role": "user", "content": "yep"}]
    assert len(first["prompt"]) == 5 and first["prompt"][-1].role == "user"
    assert first["chosen"].startswith("No, sorry!") and "\n\nHuman:" not in first["chosen"]
    assert sum(isinstance(r["prompt"], Conversation) for r in rows) == 1650  # the others have one user turn
    report = import_hh_rlhf(store, HH)
    assert store.item(Item(first["prompt"], (first["chosen"], first["rejected"])).item_id).prompt == first["prompt"]
    assert report.stored == 2312 and report.dedup.kept == 2312
    assert len(to_trl_dataset(store)) == 2312
    assert import_hh_rlhf(store, HH).already_stored == 2312  # importing twice adds nothing
    assert len(store.labels()) == 2312


def test_hh_prompt_is_the_shared_prefix_even_when_the_last_turns_differ_in_number():
    record = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: more?\n\nAssistant: sure",
              "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    path = Path(__import__("tempfile").mkdtemp()) / "hh.jsonl"
    path.write_text(json.dumps(record) + "\n")
    [row] = read_hh_rlhf(path)
    assert row == {"prompt": "hi", "chosen": "hello\n\nHuman: more?\n\nAssistant: sure", "rejected": "go away"}


def test_hh_dialogues_become_chat_turns():
    record = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: a joke?\n\nAssistant: no",
              "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: a joke?\n\nAssistant: Why did the owl..."}
    path = Path(__import__("tempfile").mkdtemp()) / "hh.jsonl"
    path.write_text(json.dumps(record) + "\n")
    [row] = read_hh_rlhf(path)
    assert row["prompt"].messages() == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                        {"role": "user", "content": "a joke?"}]
    assert (row["chosen"], row["rejected"]) == ("no", "Why did the owl...")


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a bird."}]


def test_chat_prompts_pass_through_the_readers_and_the_store(tmp_path, store):
    conversational = [{"prompt": CHAT, "chosen": [{"role": "assistant", "content": "Owl."}],
                       "rejected": [{"role": "assistant", "content": "No."}]},
                      {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello", "rejected": "Go"}]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in conversational))
    rows = read_comparisons(tmp_path / "chat.jsonl")
    assert isinstance(rows[0]["prompt"], Conversation) and rows[0]["prompt"].messages() == CHAT
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("Owl.", "No.")
    assert rows[1]["prompt"] == "Hi"  # one user turn is a text prompt: one prompt, spelled two ways
    import_comparisons(store, rows)
    reopened = LabelStore(store.engine.url)
    [stored] = [i for i in reopened.items().values() if isinstance(i.prompt, Conversation)]
    assert stored.prompt.messages() == CHAT  # the item keeps its conversation
    assert trl_rows(reopened)[0]["prompt"] == rows[0]["prompt"]
    assert to_trl_dataset(reopened)[0]["prompt"] == CHAT  # every turn, in TRL's conversational format
    verl = __import__("pandas").read_parquet(to_verl_prompts(reopened, tmp_path / "train.parquet"))
    assert [list(p) for p in verl["prompt"]] == [CHAT, [{"role": "user", "content": "Hi"}]]
    lines = to_openrlhf_prompts(reopened, tmp_path / "prompts.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"input": CHAT}
    assert read_comparisons(to_jsonl(reopened, tmp_path / "again.jsonl"))[0]["prompt"] == rows[0]["prompt"]


@pytest.mark.parametrize("prompt, message", [
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "ends with 'assistant' turn"),
    ([{"role": "robot", "content": "Hi"}], "message 0 is"),
    ([{"role": "user"}], "message 0 is"),
    ([], "must be text or a list of chat messages"),
    ([{"role": "user", "content": " "}], "non-empty user turn"),
])
def test_a_malformed_conversation_names_the_row_and_the_fix(prompt, message):
    with pytest.raises(ValueError, match="data row 0: 'prompt'.*" + message):
        read_comparisons([{"prompt": prompt, "chosen": "a", "rejected": "b"}])


def test_generic_jsonl_and_csv_with_a_column_mapping(tmp_path, store):
    renamed = [{"question": r["prompt"], "better": r["chosen"], "worse": r["rejected"]} for r in ROWS]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in renamed) + "\n\n")
    (tmp_path / "a.csv").write_text("question,better,worse\n" + "".join(
        f'"{r["question"]}","{r["better"]}","{r["worse"]}"\n' for r in renamed))
    columns = {"prompt": "question", "chosen": "better", "rejected": "worse"}
    assert read_comparisons(tmp_path / "a.jsonl", columns) == ROWS
    assert read_comparisons(tmp_path / "a.csv", columns) == ROWS
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps(ROWS[0]))
    assert read_comparisons(tmp_path / "a.jsonl.gz") == ROWS[:1]


def test_dedup_exact_then_normalised_and_reports_what_was_dropped():
    rows = [ROWS[0], dict(ROWS[0]), {k: "  " + v.upper() + " " for k, v in ROWS[0].items()}, ROWS[1]]
    kept, report = dedup(rows)
    assert kept == [ROWS[0], ROWS[1]] and report.exact == [1] and report.normalized == [2]
    assert "dropped 1 exact duplicates (rows [1]) and 1 case/whitespace duplicates (rows [2])" in str(report)
    prompts, report = dedup([{"prompt": "Hi"}, {"prompt": "hi "}], keys=("prompt",))
    assert len(prompts) == 1 and report.normalized == [1]


@pytest.mark.parametrize("make_file, message", [
    (lambda: [{"prompt": "p", "chosen": "c"}],
     "column 'rejected' is missing from data; found: chosen, prompt; pass columns="),
    (lambda: [{"prompt": "  ", "chosen": "c", "rejected": "r"}], "row 0: 'prompt' is empty; drop that row"),
    (lambda: [{"prompt": "p", "chosen": 3, "rejected": "r"}], "row 0: 'chosen' must be text, not int"),
    (lambda: [{"prompt": "p", "chosen": None, "rejected": "r"}], "must be text, not NoneType"),
    (lambda: [{"prompt": "p", "chosen": "x" * 2**20, "rejected": "r"}], "1,048,576 characters, over max_chars"),
    (lambda: b'{"prompt": "p", "chosen": "ok", "rejected": "r"}\n{"prompt": "caf\xe9"}\n', "line 2 is not valid UTF-8"),
    (lambda: b'{"prompt": "p",\n', "line 1 is not JSON"),
    (lambda: b'["p", "c", "r"]\n', "line 1 is a JSON list, not an object"),
])
def test_malformed_input_names_the_problem_and_the_store_keeps_everything(tmp_path, store, make_file, message):
    import_comparisons(store, ROWS)
    before = (store.items(), store.events())
    data = make_file()
    if isinstance(data, bytes):
        (tmp_path / "bad.jsonl").write_bytes(data)
        data = tmp_path / "bad.jsonl"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_comparisons(store, data)
    assert (store.items(), store.events()) == before


def test_a_one_megabyte_response_is_kept_when_asked(store):
    long = "word " * 2**18
    report = import_comparisons(store, [{"prompt": "p", "chosen": long, "rejected": "r"}], max_chars=None)
    assert report.stored == 1 and trl_rows(store)[0]["chosen"] == long


def test_missing_file_says_where_it_looked(tmp_path, store):
    with pytest.raises(FileNotFoundError, match="check the path"):
        import_comparisons(store, tmp_path / "nope.jsonl")


def test_export_keeps_margins_flags_annotators_and_expands_rankings(tmp_path, store):
    pair = Item("What color is the fox?", ("The fox is red.", "Go away."), ("sft", "ppo"))
    ranking = Item("Where does the owl live?", ("forest", "desert", "cave"), ("x", "y", "z"))
    store.add_items([pair, ranking])
    store.record(pair.item_id, "ada", choice="b", strength="much", flags={"a": ["harmful"]}, shown_order=[1, 0])
    store.record(ranking.item_id, "bob", ranking=[1, 3, 1])
    rows = comparisons(store)
    assert [(r["chosen"], r["rejected"], r["label"], r["margin"]) for r in rows] == [
        ("Go away.", "The fox is red.", "preferred", 1.0),
        ("forest", "desert", "preferred", 2 / 3), ("forest", "cave", "tie", 0.0),
        ("cave", "desert", "preferred", 2 / 3)]
    assert rows[0]["flags"] == ["rejected:harmful"] and rows[0]["shown_left"] is True
    assert rows[0]["annotator"] == "ada" and rows[0]["chosen_source"] == "ppo"
    dataset = to_trl_dataset(store)
    assert dataset.column_names == ["prompt", "chosen", "rejected", "margin", "annotator", "flags"]
    assert dataset[0]["prompt"] == [{"role": "user", "content": "What color is the fox?"}]
    assert dataset[0]["chosen"] == [{"role": "assistant", "content": "Go away."}]
    assert len(dataset) == 3  # the tie is kept in the DataFrame and JSONL, not in TRL rows
    assert len(to_dataframe(store)) == 4
    lines = to_jsonl(store, tmp_path / "out/labels.jsonl").read_text().splitlines()
    assert [json.loads(line)["label"] for line in lines] == ["preferred", "preferred", "tie", "preferred"]


def test_ratings_decide_no_pair_and_kto_rows_hold_ratings_and_both_sides_of_pairs(tmp_path, store):
    pair = Item("What color is the fox?", ("The fox is red.", "Go away."), ("sft", "ppo"))
    tie = Item("Where does the owl live?", ("In the forest.", "In a tree."), ("sft", "ppo"))
    good = Item("What sound does the cow make?", ("Moo.",), ("sft",))
    bad = Item("What does the bee make?", ("Go away, human.",), ("sft",))
    store.add_items([pair, tie, good, bad])
    store.record(good.item_id, "ada", choice="up", rationale="right and short")
    store.record(pair.item_id, "ada", choice="b", strength="clearly", flags={"b": ["harmful"]}, shown_order=[0, 1])
    store.record(tie.item_id, "ada", choice="tie")
    store.record(bad.item_id, "bob", choice="down", flags={"a": ["unhelpful"]})
    assert [(r["chosen"], r["label"]) for r in comparisons(store)] == [("Go away.", "preferred"),
                                                                       ("In the forest.", "tie")]
    assert len(trl_rows(store)) == 1
    rows = ratings(store)
    assert [(r["prompt"], r["response"], r["label"], r["annotator"], r["rationale"], r["flags"]) for r in rows] == [
        (good.prompt, "Moo.", True, "ada", "right and short", []),
        (bad.prompt, "Go away, human.", False, "bob", None, ["unhelpful"])]
    assert rows[0]["item_id"] == good.item_id and rows[0]["event_id"] == store.labels()[0]["event_id"]
    kto = kto_rows(store)
    assert kto == [
        {"prompt": good.prompt, "completion": "Moo.", "label": True, "source": "rating"},
        {"prompt": bad.prompt, "completion": "Go away, human.", "label": False, "source": "rating"},
        {"prompt": pair.prompt, "completion": "Go away.", "label": True, "source": "pair"},
        {"prompt": pair.prompt, "completion": "The fox is red.", "label": False, "source": "pair"}]
    assert kto_rows(store, include_flagged=False) == [kto[0], kto[3]]  # the flagged completions are left out
    lines = to_kto_jsonl(store, tmp_path / "out/kto.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [  # TRL's conversational format: the chat template is applied
        {**r, "prompt": [{"role": "user", "content": r["prompt"]}],
         "completion": [{"role": "assistant", "content": r["completion"]}]} for r in kto]


def test_empty_store_export_says_what_to_do(store):
    with pytest.raises(ValueError, match="label some items"):
        to_trl_dataset(store)
    assert to_dataframe(store).empty


def test_exports_for_openrlhf_and_verl(store, tmp_path):
    import pandas as pd

    import_comparisons(store, ROWS + [{**ROWS[0], "chosen": "Red, of course.", "rejected": "Blue."}])
    plain = [json.loads(line) for line in to_openrlhf(store, tmp_path / "o.jsonl", chat=False).read_text().splitlines()]
    assert plain[1] == {**ROWS[1], "margin": 0.0} and len(plain) == 3
    pairs = [json.loads(line) for line in to_openrlhf(store, tmp_path / "openrlhf.jsonl").read_text().splitlines()]
    assert pairs[1] == {"prompt": [{"role": "user", "content": ROWS[1]["prompt"]}], "margin": 0.0,
                        "chosen": [{"role": "assistant", "content": ROWS[1]["chosen"]}],
                        "rejected": [{"role": "assistant", "content": ROWS[1]["rejected"]}]}
    prompts = to_openrlhf_prompts(store, tmp_path / "prompts.jsonl", chat=False).read_text().splitlines()
    assert [json.loads(line) for line in prompts] == [{"input": ROWS[0]["prompt"]}, {"input": ROWS[1]["prompt"]}]
    verl = pd.read_parquet(to_verl_prompts(store, tmp_path / "verl" / "train.parquet"))
    assert list(verl.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert list(verl["prompt"][1]) == [{"role": "user", "content": ROWS[1]["prompt"]}]
    assert verl["extra_info"][1] == {"split": "train", "index": 1}
    with pytest.raises(ValueError, match="no decided pairs yet"):
        to_openrlhf(LabelStore(tmp_path / "empty.db"), tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match="non-empty list"):
        to_verl_prompts(["ok", ""], tmp_path / "bad.parquet")


# -- exports that one bad event cannot stop (issue 14) ---------------------------------------------

def test_every_export_skips_and_reports_events_it_cannot_interpret(tmp_path, store):
    import time

    from sqlalchemy import insert

    from rlhflab.labeling.exports import UnreadableEventWarning
    from rlhflab.labeling.store import events_table

    import_comparisons(store, ROWS)
    reply = Item("What sound does the cow make?", ("Moo.",))
    store.add_items([reply])
    store.record(reply.item_id, "ada", choice="up")
    with store.engine.begin() as conn:  # as an older version or a concurrent writer could have left them
        conn.execute(insert(events_table), [
            {"event_id": f"bad-{n}", "project": store.project, "item_id": item_id, "annotator": "old",
             "action": "label", "created_at": time.time(), "choice": None, "ranking": None, "strength": None,
             **fields}
            for n, (item_id, fields) in enumerate([
                ("deleted-item", {"choice": "a"}),
                (reply.item_id, {"choice": "a"}),  # a pair choice on a one-response item
                (store.labels()[0]["item_id"], {"ranking": [1, 2, 3]}),
                (store.labels()[1]["item_id"], {"choice": "b", "strength": "enormously"})])])
    exports = {
        "comparisons": lambda: comparisons(store), "trl_rows": lambda: trl_rows(store),
        "ratings": lambda: ratings(store), "kto_rows": lambda: kto_rows(store),
        "to_dataframe": lambda: to_dataframe(store), "to_trl_dataset": lambda: to_trl_dataset(store),
        "to_jsonl": lambda: to_jsonl(store, tmp_path / "c.jsonl"),
        "to_kto_jsonl": lambda: to_kto_jsonl(store, tmp_path / "k.jsonl"),
        "to_openrlhf": lambda: to_openrlhf(store, tmp_path / "o.jsonl")}
    for export in exports.values():
        with pytest.warns(UnreadableEventWarning, match="skipped 4 events that cannot be interpreted.*1 unknown item"):
            export()
    with pytest.warns(UnreadableEventWarning):
        rows = trl_rows(store)
    assert [r["chosen"] for r in rows] == [ROWS[0]["chosen"], ROWS[1]["chosen"]]
    assert rows.dropped == {"unreadable: unknown item": 1, "unreadable: a pair choice on an item with 1 responses": 1,
                            "unreadable: a ranking that does not fit the item": 1, "unreadable: unknown strength": 1}
    with pytest.warns(UnreadableEventWarning):
        assert to_dataframe(store).attrs["dropped"]["unreadable: unknown item"] == 1


def test_identical_responses_never_become_a_training_pair(store):
    same = Item("Say hi.", ("Hi!", "Hi!"))
    ranked = Item("Name a bird.", ("Owl.", "Owl.", "Cat."))
    store.add_items([same, ranked])
    store.record(same.item_id, "ada", choice="a", strength="much")
    store.record(ranked.item_id, "ada", ranking=[1, 2, 3])
    rows = trl_rows(store)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("Owl.", "Cat."), ("Owl.", "Cat.")]
    assert rows.dropped["identical responses"] == 2  # the pair label, and Owl. over Owl. in the ranking
    assert all(r["chosen"] != r["rejected"] for r in comparisons(store))
    assert all(r["completion"] != "Hi!" for r in kto_rows(store))


def test_a_label_without_a_strength_exports_with_margin_zero(store):
    pair = Item("What color is the fox?", ("The fox is red.", "Go away."))
    store.add_items([pair])
    store.record(pair.item_id, "ada", choice="a")  # the person did not say how much better
    assert [(r["chosen"], r["margin"]) for r in trl_rows(store)] == [("The fox is red.", 0.0)]


def test_an_export_interrupted_midway_leaves_the_earlier_file_whole(tmp_path):
    """Issue 30, defect 15: write_jsonl wrote in place, so a kill midway left a truncated file that still parsed."""
    from rlhflab.labeling.exports import write_jsonl

    path = write_jsonl([{"n": n} for n in range(3)], tmp_path / "pairs.jsonl")

    def rows_then_a_failure():
        yield {"n": 10}
        raise KeyboardInterrupt  # as a kernel interrupt midway through an export

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(rows_then_a_failure(), path)
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.jsonl"]  # no partial file left behind


def test_dedup_folds_unicode_forms():
    """Issue 30, defect 12: the same text in NFC and NFD (or full-width) was not a duplicate."""
    rows = [{"prompt": "Caf\u00e9?", "chosen": "Yes", "rejected": "No"},
            {"prompt": "Cafe\u0301?", "chosen": "Yes", "rejected": "No"},
            {"prompt": "Caf\u00e9?", "chosen": "\uff39es", "rejected": "No"}]  # a full-width Y
    kept, report = dedup(rows)
    assert kept == rows[:1] and report.normalized == [1, 2]


def test_a_flagged_prompt_reaches_the_exports_and_can_be_left_out(store):
    """Issue 30, defect 7: a prompt flagged harmful by one annotator still exported the others' labels with no
    mark, and include_flagged=False did not drop it."""
    from rlhflab.labeling.exports import kto_rows

    import_comparisons(store, ROWS, annotator="ada")
    flagged = next(iter(store.items()))
    store.flag_prompt(flagged, "bo", rationale="asks for something harmful")
    rows = comparisons(store)
    assert [row["flags"] for row in rows if row["item_id"] == flagged] == [["prompt:flagged"]]
    assert all(row["flags"] == [] for row in rows if row["item_id"] != flagged)
    prompt = store.item(flagged).prompt
    kept = trl_rows(store, include_flagged=False)
    assert prompt not in {row["prompt"] for row in kept} and kept.dropped["flagged chosen or prompt"] == 1
    assert prompt in {row["prompt"] for row in trl_rows(store)}
    assert prompt not in {row["prompt"] for row in kto_rows(store, include_flagged=False)}


def test_an_import_interrupted_midway_leaves_the_store_as_it_was_and_a_rerun_stores_everything(store, monkeypatch):
    """Issue 30, defect 2: items were committed, then their labels written in a second transaction; an interrupt
    between the two left items without labels for good (a re-run said "already stored")."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(store, "_keep_in_force", interrupted)
        with pytest.raises(KeyboardInterrupt):
            import_comparisons(store, ROWS)
    assert store.items() == {} and store.events() == []
    report = import_comparisons(store, ROWS)
    assert report.stored == 2 and len(store.labels()) == 2 and trl_rows(store) == [
        {**{k: row[k] for k in ("prompt", "chosen", "rejected")}, "margin": 0.0, "annotator": "imported", "flags": []}
        for row in ROWS]


def test_an_export_reads_the_items_and_the_labels_at_one_moment(tmp_path, store):
    """Issue 30, defect 10: exports read items, labels and decisions in three transactions, so a label written
    in between met an item list without its item and was dropped as 'unknown item', with a warning."""
    import warnings

    from sqlalchemy import event

    import_comparisons(store, ROWS)
    other = LabelStore(store.engine.url)  # another kernel, labeling while the export runs
    late = Item("Is the owl awake at noon?", ("No.", "Yes."))

    def write_once(_conn, _cursor, statement, *_):
        if "FROM items" in statement and not other.items().get(late.item_id):
            other.add_items([late])
            other.record(late.item_id, "bob", choice="a")

    event.listen(store.engine, "after_cursor_execute", write_once)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an UnreadableEventWarning fails the test
        rows = trl_rows(store)
    assert len(rows) == 2 and not rows.dropped
    assert len(trl_rows(store)) == 3  # the next export sees the late label, with its item
