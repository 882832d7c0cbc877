"""A policy update is registered in one place (`rlhflab.lab.stages.register_method`), and from there
`policy_stage`, the loop and the live dashboards run it."""

import json
import shutil

import pytest

from rlhflab import Task
from rlhflab.lab.loop import RLHFLoop
from rlhflab.lab.stages import METHODS, Method, RLHFConfig, policy_stage, register_method
from rlhflab.trainers.live import LAYOUTS, Chart, Curve

PROMPTS = [f"Tell me one thing about the {thing}." for thing in
           ("fox", "owl", "river", "lamp", "cake", "train", "moon", "garden", "violin", "kettle", "bridge", "cloud")]


def keep_the_policy(update):
    """A toy method: the new policy is the one it started from, and its dashboard logs how many labels it saw."""
    shutil.copytree(update.start, update.out, dirs_exist_ok=True)
    if update.live is not None:
        update.live.log(1, {"toy/labels_seen": len(update.comparisons.labels())})
        update.live.close()
    return update.out, update.first_step


@pytest.fixture
def toy_method():
    charts = (Chart("How many labels did it see?", "labels", (Curve("toy/labels_seen", "labels"),)),)
    yield register_method(Method("keep", keep_the_policy, charts=charts))
    METHODS.pop("keep")
    LAYOUTS.pop("keep")


def test_a_registered_method_runs_through_policy_stage_the_loop_and_its_dashboard(tmp_path, toy_method):
    """Issue 28: adding a method took edits in about 7 places. Here one `register_method` call is all."""
    demonstrations = [{"prompt": p, "response": "It is small."} for p in PROMPTS]
    judge = lambda prompts, first, second: [0.5] * len(prompts)  # noqa: E731
    task = Task.from_data(PROMPTS, heldout_share=0.25, demonstrations=demonstrations, judge=judge)
    config = RLHFConfig.quick(str(tmp_path), rounds=1, method="keep", n_demonstrations=4, labels_per_round=4,
                              response_length=8, n_heldout=4)
    loop = RLHFLoop(task, config)
    result = loop.run_round()
    assert result.policy_dir == tmp_path / "round_1" / "keep"
    assert result.reward_dir is None  # it asked for no reward model, so the round fitted none
    assert result.metrics["judge/win_rate_vs_sft"] == 0.5 and result.metrics["labels"] == 4
    logged = [json.loads(line) for line in (result.policy_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("toy/labels_seen") == 4 for row in logged)
    assert "How many labels did it see?" in (result.policy_dir / "metrics.html").read_text()
    policy_dir, step = policy_stage("keep", task, config, sft_dir=loop.sft_dir, start=loop.sft_dir,
                                    out=tmp_path / "again", comparisons=loop.store, first_step=7)
    assert (policy_dir, step) == (tmp_path / "again" / "keep", 7)


def test_a_method_is_registered_once_with_a_dashboard_that_exists(toy_method):
    with pytest.raises(ValueError, match="'keep' is registered already"):
        register_method(Method("keep", keep_the_policy, layout="dpo"))
    with pytest.raises(ValueError, match="no dashboard 'nowhere'"):
        register_method(Method("other", keep_the_policy, layout="nowhere"))
    with pytest.raises(ValueError, match="register_method adds one"):
        RLHFConfig(method="other")
