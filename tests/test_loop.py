"""The iterated loop: rounds raise the gold score, people's labels are kept, the leaderboard ranks the rounds.

The two-round loop these tests read is the quickstart's (`tests/conftest.py::quickstart`): its notebook
runs `RLHFLoop` at QUICK settings into `runs/`, and the tests reopen what it left on disk.
"""

import json

import pandas as pd
import pytest

from rlhflab.lab.loop import RLHFLoop
from rlhflab.lab.stages import RLHFConfig
from rlhflab.labeling.metrics import leaderboard
from rlhflab.labeling.store import LabelStore
from rlhflab.tiny.task import WorldTask


def rounds_of(quickstart) -> list[dict]:
    runs = quickstart[0] / "runs"
    return [json.loads(line) for line in (runs / "rounds.jsonl").read_text().splitlines()]


def test_rounds_raise_the_gold_score(quickstart):
    table = pd.DataFrame(rounds_of(quickstart))
    assert table["round"].tolist() == [1, 2]
    sft_gold = table["gold/sft_mean"].iloc[0]
    assert table["gold/mean"].iloc[-1] > sft_gold + 0.3
    assert table["gold/mean"].iloc[-1] > table["gold/mean"].iloc[0]
    assert table["gold/win_rate_vs_sft"].iloc[-1] > 0.5
    assert table["labels"].is_monotonic_increasing
    assert table["labels"].iloc[-1] <= len(LabelStore(quickstart[0] / "runs" / "labels.db").labels())
    assert (table["reward/gold_agreement"] > 0.6).all()


def test_a_persons_labels_are_kept_and_gold_labels_the_rest(world, gold, tmp_path):
    loop = RLHFLoop(WorldTask(world, gold), RLHFConfig.quick(str(tmp_path), n_demonstrations=16, labels_per_round=12))
    loop.queue_round()
    first = loop.store.next_item("you")  # a person labels one pair before the gold annotator takes over
    loop.store.record(first.item_id, "you", choice="tie")
    assert loop.label() == 11
    labels = LabelStore(tmp_path / "labels.db").labels()  # reopened from disk, as after a restart
    by_item = {}
    for label in labels:
        by_item.setdefault(label["item_id"], []).append(label["annotator"])
    assert by_item[first.item_id] == ["you"]
    assert all(annotators == ["gold"] for item, annotators in by_item.items() if item != first.item_id)
    assert len(by_item) == 12


def test_leaderboard_ranks_each_round_against_the_last(quickstart):
    board = leaderboard(LabelStore(quickstart[0] / "runs" / "labels.db"))
    assert set(board["source"]) == {"sft", "round 1", "round 2"}
    assert board["games"].min() > 10


def test_ppo_curves_join_up_over_the_rounds(quickstart):
    runs = quickstart[0] / "runs"
    steps = [json.loads(line)["step"] for line in (runs / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 2 * rounds_of(quickstart)[0]["config"]["ppo_steps"] + 1))
    assert (runs / "round_2" / "ppo" / "checkpoint" / "adapter_model.safetensors").exists()


def test_an_earlier_run_is_never_mixed_in(quickstart, world, gold):
    with pytest.raises(ValueError, match="give a new out_dir"):
        RLHFLoop(WorldTask(world, gold), RLHFConfig.quick(str(quickstart[0] / "runs")))
    with pytest.raises(ValueError, match="method must be one of ppo, dpo, kto, ilql, nlpo, rloo, grpo, not 'a2c'"):
        RLHFConfig(method="a2c")


def test_one_round_on_smollm2_raises_its_gold_mean(smollm2, world, gold, tmp_path):
    """A real instruct model answers the tiny world off-vocabulary at first; one round of SFT,
    labels, a reward model and PPO must move it toward what the gold annotator wants."""
    from rlhflab import load_policy

    config = RLHFConfig.quick(str(tmp_path), base=smollm2, rounds=1, n_demonstrations=64, labels_per_round=16,
                              pool_per_label=1, reward_epochs=1.0, ppo_steps=1, ppo_batch_size=8, n_heldout=16,
                              response_length=16)  # about 2.5 minutes on 2 cores
    loop = RLHFLoop(WorldTask(world, gold), config)
    before = gold.mean_score(loop.heldout, load_policy(smollm2).generate(loop.heldout, max_new_tokens=16, seed=0))
    result = loop.run_round()
    assert result.metrics["gold/mean"] > before + 0.25, (before, result.metrics)
    assert {"kl/to_sft", "reward/gold_agreement"} <= set(result.metrics)
