"""The one live-plot callback: curves in memory, JSONL as it goes, and a designed dashboard per kind of
run (PPO, SFT, reward model), live in kernels and frozen in HTML."""

import json
import math
from collections import Counter

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from rlhflab import load_policy
from rlhflab.trainers.live import HEALTH, LAYOUTS, MAX_CURVES, Chart, Curve, LivePlot, layout_for
from rlhflab.trainers.ppo import PPOConfig, PPOTrainer
from rlhflab.trainers.reward import GoldReward, RewardConfig, load_reward_model, train_reward_model
from rlhflab.trainers.sft import SFTConfig, train_sft

PAYLOAD = "<img src=x onerror=alert(1)>"


def test_log_keeps_only_finite_numbers_and_recognises_the_run(tmp_path):
    live = LivePlot(tmp_path, widgets=False)
    live.log(1, {"objective/kl": 0.5, "objective/scores": 1.0, "policy/clipfrac_avg": 0.1, "note": "text"})
    live.log(2, {"objective/kl": math.nan, "objective/scores": 1.5, "loss": 2.0, "epoch": 1})
    assert live.history["objective/scores"] == [(1, 1.0), (2, 1.5)]
    assert live.history["objective/kl"] == [(1, 0.5)]
    assert live.layout == "ppo"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0] == {"step": 1, "objective/kl": 0.5, "objective/scores": 1.0, "policy/clipfrac_avg": 0.1}
    assert [layout_for(m) for m in ({"rewards/margins": 1}, {"rewards/margins": 1, "kl": 0.1}, {"loss/q": 1},
                                    {"accuracy": 1}, {"loss": 1}, {"gold/mean": 1})] == [
        "dpo", "kto", "ilql", "reward", "sft", "sft"]
    with pytest.raises(ValueError, match="layout must be one of"):
        LivePlot(None, layout="nlpo")
    with pytest.raises(ValueError, match="1 to 4 curves"):
        Chart("too much", "y", tuple(Curve(f"m{i}", f"m{i}") for i in range(5)))


def test_it_is_a_transformers_callback(tmp_path):
    live = LivePlot(tmp_path, widgets=False)
    state = TrainerState()
    state.global_step = 7
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    live.on_log(args, state, TrainerControl(), logs={"loss": 1.25, "learning_rate": 1e-3})
    live.on_train_end(args, state, TrainerControl())
    assert live.history["loss"] == [(7, 1.25)]
    assert "Is it learning the demonstrations?" in (tmp_path / "metrics.html").read_text()


def check_dashboard(live: LivePlot, questions: set[str]) -> dict:
    """The rules every chart follows, read from the figures the HTML is written from; returns {title: figure}."""
    figures = dict(zip((title for title, _ in live.panels()), live.figures()))
    assert questions <= {c.question for c in live.charts}, {c.question for c in live.charts}
    for title, figure in figures.items():
        per_axis = Counter((trace.xaxis or "x", trace.yaxis or "y") for trace in figure.data)
        assert per_axis and max(per_axis.values()) <= MAX_CURVES, title
        layout = figure.layout.to_plotly_json()
        axes = [name for name in layout if name.startswith(("xaxis", "yaxis"))]
        assert {"xaxis", "yaxis"} <= set(axes), title
        for axis in axes:
            assert layout[axis].get("title", {}).get("text"), f"{title}: {axis} has no title"
    page = live.html_path.read_text()
    assert all(chart.question in page for chart in live.charts)
    return figures


@pytest.mark.slow
def test_ppo_dashboard_answers_its_questions_and_escapes_samples(world, gold, tmp_path):
    prompts = [f"{PAYLOAD} " + q.text for q in world.questions("train", 8, seed=4)]
    config = PPOConfig(output_dir=str(tmp_path), steps=2, batch_size=4, mini_batch_size=2, ppo_epochs=1,
                       response_length=12, sample_every=1)
    trainer = PPOTrainer(load_policy("tiny", lora=True), prompts, GoldReward(gold), config, gold=gold)
    trainer.train()
    figures = check_dashboard(trainer.live, {"Is the policy getting better?", "Is it staying close to SFT?",
                                             "Over-optimisation: proxy and gold as KL grows", "clip fraction",
                                             "approx KL per update", "value explained variance",
                                             "responses that end with EOS"})
    better = figures["Is the policy getting better?"]
    assert [t.name for t in better.data] == ["proxy reward", "gold score"]
    kl = figures["Is it staying close to SFT?"]
    assert [t.name for t in kl.data] == ["KL", "KL coefficient beta"] and kl.data[1].yaxis == "y2"
    assert any(a.text == "target KL" for a in kl.layout.annotations)
    assert sum(a.text == "rule of thumb" for a in figures[HEALTH].layout.annotations) == 3  # approx KL, clip, EV
    page = trainer.live.html_path.read_text()
    assert PAYLOAD not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<th>gold</th>" in page  # the sample table shows the gold score next to the proxy reward


@pytest.mark.slow
def test_sft_and_reward_dashboards(world, gold, tmp_path):
    sft = LivePlot(tmp_path / "sft", widgets=False)
    rows = world.demonstrations("train", 16)
    train_sft(load_policy("tiny", lora=True), rows, SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=2,
                                                                batch_size=8, logging_steps=1),
              eval_demonstrations=rows[:8], live=sft)
    assert sft.layout == "sft"
    figures = check_dashboard(sft, {"Is it learning the demonstrations?"})
    assert {t.name for t in figures["Is it learning the demonstrations?"].data} == {"train", "held out"}

    reward = LivePlot(tmp_path / "reward", widgets=False)
    pairs = gold.preferences(*world.candidate_pairs("train", 24, seed=1))
    train_reward_model(load_reward_model("tiny", lora=True), pairs,
                       RewardConfig(output_dir=str(tmp_path / "reward"), max_steps=2, batch_size=8, logging_steps=1),
                       eval_preferences=pairs[:8], live=reward)
    assert reward.layout == "reward"
    check_dashboard(reward, {"Is it learning the comparisons?", "Does it rank chosen above rejected?"})
    assert "Is the reward model calibrated?" in reward.html_path.read_text()


def test_every_layout_follows_the_rules():
    for kind, charts in LAYOUTS.items():
        for chart in charts:
            assert chart.y_title and chart.x_title and len(chart.curves) <= MAX_CURVES, (kind, chart.question)


def test_widgets_update_in_place_one_per_panel():
    live = LivePlot(None, widgets=True, layout="ppo")
    live.log(1, {"objective/kl": 0.1, "objective/kl_coef": 0.2, "policy/clipfrac_avg": 0.1})
    live.log(2, {"objective/kl": 0.2, "objective/kl_coef": 0.2, "policy/clipfrac_avg": 0.5})
    figure = live._figures["Is it staying close to SFT?"]
    assert list(figure.data[0].y) == [0.1, 0.2]
    health = live._figures[HEALTH]
    assert list(health.data[0].marker.color) == ["#1f77b4", "#d62728"]  # above the 0.3 rule of thumb: red
    live.log(3, {"objective/kl": 0.3, "objective/kl_coef": 0.2, "policy/clipfrac_avg": 0.2})
    assert live._figures[HEALTH] is health and len(live._box.children) == 3  # title, KL, health: made once
