"""Your task, not the tiny world's: prompts from files and frames, a judge's verdicts, win-rates with
intervals, and the loop run on a task with no gold annotator."""

import json

import pandas as pd
import pytest

from rlhflab import LabelStore, Task, WorldTask
from rlhflab.lab.loop import RLHFLoop
from rlhflab.lab.stages import RLHFConfig
from rlhflab.labeling.candidates import items_from
from rlhflab.labeling.metrics import win_rate_interval

PROMPTS = [f"Tell me one thing about the {thing}." for thing in
           ("fox", "owl", "river", "lamp", "cake", "train", "moon", "garden", "violin", "kettle", "bridge", "cloud")]


def fewer_words_win(prompts, first, second):
    """A rule judge: the shorter answer is better (0: first, 1: second, 0.5: the same length)."""
    return [0.5 if len(a.split()) == len(b.split()) else 0 if len(a.split()) < len(b.split()) else 1
            for a, b in zip(first, second)]


def test_a_task_reads_prompts_from_csv_jsonl_frames_and_lists(tmp_path):
    (tmp_path / "prompts.csv").write_text("prompt,topic\n" + "".join(f'"{p}",x\n' for p in PROMPTS + PROMPTS[:2]))
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"question": p}) + "\n" for p in PROMPTS))
    from_csv = Task.from_data(tmp_path / "prompts.csv", heldout_share=0.25)
    assert sorted(from_csv.prompts + from_csv.heldout) == sorted(PROMPTS)  # repeated prompts are kept once
    assert len(from_csv.heldout) == 3 and not set(from_csv.prompts) & set(from_csv.heldout)
    for source in (tmp_path / "prompts.jsonl", pd.DataFrame({"question": PROMPTS})):
        task = Task.from_data(source, heldout_share=0.25, column="question")
        assert (task.prompts, task.heldout) == (from_csv.prompts, from_csv.heldout)  # the same seeded split
    assert Task.from_data(PROMPTS, heldout_share=0.25).heldout == from_csv.heldout


def test_a_task_names_what_is_wrong_with_its_data(tmp_path):
    with pytest.raises(ValueError, match="column 'prompt' is missing from data; found: question"):
        Task.from_data([{"question": "Hi?"}, {"question": "Bye?"}])
    with pytest.raises(ValueError, match="at least 2 distinct prompts"):
        Task.from_data(["Hi?", "Hi?"])
    with pytest.raises(ValueError, match="both train and held-out"):
        Task(prompts=["Hi?", "Bye?"], heldout=["Bye?"])
    with pytest.raises(ValueError, match=r"heldout\[0\] is empty"):
        Task(prompts=["Hi?"], heldout=[""])
    (tmp_path / "prompts.parquet").write_text("not really")
    with pytest.raises(ValueError, match="reads .csv, .jsonl and .jsonl.gz files"):
        Task.from_data(tmp_path / "prompts.parquet")


def test_items_from_reads_a_csv_as_csv(tmp_path):
    """Issue 27: items_from("prompts.csv") read the file as JSON lines ("x.csv line 1 is not JSON")."""
    (tmp_path / "pairs.csv").write_text("prompt,response_a,response_b\nHi?,Hello.,Go away.\n")
    [item] = items_from(tmp_path / "pairs.csv")
    assert (item.prompt, item.responses) == ("Hi?", ("Hello.", "Go away."))


def test_draw_repeats_train_prompts_only_and_never_repeats_held_out_ones():
    task = Task.from_data(PROMPTS, heldout_share=0.25)
    train = task.draw("train", 20, seed=1)
    assert len(train) == 20 and set(train) == set(task.prompts) and train == task.draw("train", 20, seed=1)
    assert sorted(task.draw("heldout", 20, seed=1)) == sorted(task.heldout)  # 3 prompts, each once
    with pytest.raises(ValueError, match="split must be 'train' or 'heldout'"):
        task.draw("test", 2, seed=0)


def test_the_judge_orients_verdicts_and_its_mistakes_are_named():
    task = Task.from_data(PROMPTS, judge=fewer_words_win)
    assert task.outcomes(["p"] * 3, ["a b", "a", "a b c"], ["a", "a b", "d e f"]) == [0.0, 1.0, 0.5]
    assert task.preferences(["p", "q"], ["a b", "c"], ["a", "c"]) == [{"prompt": "p", "chosen": "a", "rejected": "a b"}]
    with pytest.raises(ValueError, match="returned 1 verdicts for 2 pairs"):
        Task.from_data(PROMPTS, judge=lambda p, a, b: [0]).outcomes(["p", "q"], ["a", "b"], ["c", "d"])
    with pytest.raises(ValueError, match="returned 'first'; each verdict must be 0"):
        Task.from_data(PROMPTS, judge=lambda p, a, b: ["first"]).outcomes(["p"], ["a"], ["b"])
    with pytest.raises(ValueError, match="this task has no judge"):
        Task.from_data(PROMPTS).outcomes(["p"], ["a"], ["b"])


def test_a_win_rate_comes_with_an_interval_that_narrows_with_more_prompts():
    few, many = [1.0, 0.0, 0.5, 1.0] * 5, [1.0, 0.0, 0.5, 1.0] * 100
    rate, low, high = win_rate_interval(few)
    assert rate == pytest.approx(0.625) and low < rate < high and 0 <= low and high <= 1
    rate_many, low_many, high_many = win_rate_interval(many)
    assert rate_many == pytest.approx(0.625) and high_many - low_many < (high - low) / 3
    assert win_rate_interval([1.0] * 10) == (1.0, 1.0, 1.0)


def test_the_tiny_world_is_a_task_judged_by_gold(world, gold):
    task = WorldTask(world, gold)
    prompts = task.draw("heldout", 4, seed=0)
    answers = [f"The {p.split()[-1]}" for p in prompts]
    assert task.judge(prompts, answers, answers) == [0.5] * 4
    assert task.outcomes(prompts, answers, answers) == [0.5] * 4 and task.judge_name == "gold"


def test_a_judge_labels_only_what_people_left_and_a_task_without_one_says_so(tmp_path):
    store = LabelStore(tmp_path / "labels.db")
    store.add_items(items_from([{"prompt": p, "response_a": "Yes.", "response_b": "Yes, it is."} for p in PROMPTS[:4]]))
    first = store.next_item("you")
    store.record(first.item_id, "you", choice="b")
    with pytest.raises(ValueError, match="3 items wait for labels and the task has no judge"):
        Task.from_data(PROMPTS).label(store, "judge")
    assert Task.from_data(PROMPTS, judge=fewer_words_win).label(store, "judge") == 3
    chosen = {label["item_id"]: (label["annotator"], label["choice"]) for label in store.labels()}
    assert chosen.pop(first.item_id) == ("you", "b")
    assert set(chosen.values()) == {("judge", "a")}  # "Yes." is shorter, whichever side it was shown on


@pytest.mark.slow
def test_the_loop_runs_two_rounds_on_a_task_with_no_gold_annotator(tmp_path):
    """Issue 27: every stage took `world, gold`. Here a task of plain prompts and a rule judge: a person labels
    one pair, the judge the rest; each round reports the judge's win-rate against SFT with its 95% interval."""
    demonstrations = [{"prompt": p, "response": "It is small."} for p in PROMPTS]
    task = Task.from_data(PROMPTS, heldout_share=0.25, demonstrations=demonstrations, judge=fewer_words_win)
    loop = RLHFLoop(task, RLHFConfig.quick(str(tmp_path), n_demonstrations=8, labels_per_round=6, ppo_steps=2,
                                           ppo_batch_size=4, response_length=8, n_heldout=8))
    loop.queue_round()
    first = loop.store.next_item("you")
    loop.store.record(first.item_id, "you", choice="a")
    results = loop.run()
    table = loop.table()
    assert len(results) == 2 and list(table["round"]) == [1, 2]
    for _, row in table.iterrows():
        assert row["judge/win_rate_vs_sft_low"] <= row["judge/win_rate_vs_sft"] <= row["judge/win_rate_vs_sft_high"]
    assert "gold/mean" not in table and "reward/judge_agreement" in table and "kl/to_sft" in table
    annotators = {label["annotator"] for label in LabelStore(tmp_path / "labels.db").labels()}
    assert annotators == {"you", "judge"}
    assert all(list(result.samples.columns) == ["prompt", "SFT", f"round {result.round}"] for result in results)


def label_as_people(store, people=("ada", "bo")):
    """Scripted people: each takes what the queue serves them; the shorter reply wins, equal lengths tie."""
    for person in people:
        while (item := store.next_item(person)) is not None:
            verdict = fewer_words_win([item.prompt], item.responses[:1], item.responses[1:])[0]
            store.record(item.item_id, person, choice={0: "a", 1: "b", 0.5: "tie"}[verdict])


@pytest.mark.slow
def test_without_a_judge_people_label_and_evaluate_each_round_blind(tmp_path):
    """Issue 27: evaluation without gold. People label the queue; each round's held-out answers then wait in
    the same queue beside SFT's, marked as evaluation: their verdicts give the round's win-rate with its 95%
    interval and a leaderboard, and never become training rows."""
    from rlhflab.labeling.exports import comparisons, trl_rows
    from rlhflab.labeling.metrics import leaderboard

    demonstrations = [{"prompt": p, "response": "It is small."} for p in PROMPTS]
    task = Task.from_data(PROMPTS, heldout_share=0.5, demonstrations=demonstrations)
    loop = RLHFLoop(task, RLHFConfig.quick(str(tmp_path), n_demonstrations=8, labels_per_round=6, ppo_steps=2,
                                           ppo_batch_size=4, response_length=8, n_heldout=6))
    for _ in range(2):
        loop.queue_round()
        label_as_people(loop.store)
        loop.finish_round()
    assert "judge/win_rate_vs_sft" not in loop.table() and "kl/to_sft" in loop.table()
    with pytest.raises(ValueError, match=r"\d+ items wait for labels and the task has no judge"):
        loop.label()  # round 2's evaluation items
    label_as_people(loop.store)
    evaluation = loop.people_evaluation()
    assert list(evaluation["round"]) == [1, 2] and (evaluation["people/verdicts"] > 0).all()
    assert ((evaluation["people/win_rate_vs_sft_low"] <= evaluation["people/win_rate_vs_sft"])
            & (evaluation["people/win_rate_vs_sft"] <= evaluation["people/win_rate_vs_sft_high"])).all()
    evaluated = {item.item_id for item in loop.store.items().values() if item.meta.get("evaluation")}
    assert evaluated and not evaluated & {row["item_id"] for row in comparisons(loop.store)}
    assert trl_rows(loop.store).dropped["evaluation item"] > 0
    assert evaluated >= {row["item_id"] for row in comparisons(loop.store, evaluation=True)}
    assert set(leaderboard(loop.store, evaluation=True)["source"]) == {"sft", "round 1", "round 2"}


def test_demonstrations_and_comparisons_come_from_frames_and_files_too(tmp_path):
    frame = pd.DataFrame({"prompt": PROMPTS[:2], "response": ["Red.", "Blue."]})
    (tmp_path / "pairs.csv").write_text("prompt,chosen,rejected\nHi?,Hello.,\n")
    task = Task.from_data(PROMPTS, demonstrations=frame, comparisons=tmp_path / "pairs.csv")
    assert task.sft_rows(5, seed=0) and len(task.sft_rows(5, seed=0)) == 2
    assert task.reward_pairs(5, seed=0) == [{"prompt": "Hi?", "chosen": "Hello.", "rejected": ""}]
    with pytest.raises(ValueError, match="column 'response' is missing from demonstrations"):
        Task.from_data(PROMPTS, demonstrations=[{"prompt": "Hi?", "answer": "Hello."}])


CONVERSATIONS = [[{"role": "user", "content": p}, {"role": "assistant", "content": "Which part?"},
                  {"role": "user", "content": "Any part."}] for p in PROMPTS]


def test_a_conversation_reaches_the_model_turn_by_turn_in_its_chat_template():
    from rlhflab.labeling.records import as_prompt
    from rlhflab.tiny.assets import MODEL_DIR
    from rlhflab.trainers.models import load_tokenizer, transcript_ids
    from rlhflab.trainers.training import chat_dataset

    tokenizer, conversation = load_tokenizer(str(MODEL_DIR)), as_prompt(CONVERSATIONS[0])
    text = tokenizer.decode(transcript_ids(tokenizer, conversation, "A red tail."))
    prompt = tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=True)
    assert text == prompt + "A red tail." + tokenizer.eos_token and prompt.count("<|user|>") == 2
    assert [row["prompt"] for row in chat_dataset([{"prompt": conversation}], ())] == [CONVERSATIONS[0]]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ppo", "dpo"])
def test_the_loop_trains_on_conversations(tmp_path, method):
    """Issue 27: multi-turn prompts pass through SFT, the store, the reward model and the policy update, and
    each round's labels and samples keep every turn."""
    from rlhflab.labeling.records import Conversation

    demonstrations = [{"prompt": c, "response": "It is small."} for c in CONVERSATIONS]
    task = Task.from_data(CONVERSATIONS, heldout_share=0.25, demonstrations=demonstrations, judge=fewer_words_win)
    assert all(isinstance(p, Conversation) and len(p) == 3 for p in task.prompts + task.heldout)
    loop = RLHFLoop(task, RLHFConfig.quick(str(tmp_path), rounds=1, method=method, n_demonstrations=8,
                                           labels_per_round=6, ppo_steps=2, ppo_batch_size=4, response_length=8,
                                           n_heldout=4))
    [result] = loop.run()
    assert 0 <= result.metrics["judge/win_rate_vs_sft"] <= 1
    items = LabelStore(tmp_path / "labels.db").items().values()
    assert items and all(isinstance(item.prompt, Conversation) and len(item.prompt) == 3 for item in items)
