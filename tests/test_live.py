"""The one live-plot callback: curves in memory, JSONL as it goes, HTML at the end, widgets in kernels."""

import json
import math

from transformers import TrainerControl, TrainerState, TrainingArguments

from rlhflab.live import LivePlot, panel_of


def test_log_groups_by_prefix_and_keeps_only_finite_numbers(tmp_path):
    live = LivePlot(tmp_path, widgets=False)
    live.log(1, {"objective/kl": 0.5, "objective/scores": 1.0, "policy/clipfrac_avg": 0.1, "note": "text"})
    live.log(2, {"objective/kl": math.nan, "objective/scores": 1.5, "loss": 2.0, "eval_loss": 2.5, "epoch": 1})
    assert live.history["objective/scores"] == [(1, 1.0), (2, 1.5)]
    assert live.history["objective/kl"] == [(1, 0.5)]
    assert live.panels() == {"objective": ["objective/kl", "objective/scores"], "policy": ["policy/clipfrac_avg"],
                             "train": ["loss"], "eval": ["eval_loss"]}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0] == {"step": 1, "objective/kl": 0.5, "objective/scores": 1.0, "policy/clipfrac_avg": 0.1}
    live.close()
    page = (tmp_path / "metrics.html").read_text()
    names = page.replace("\\u002f", "/")  # plotly escapes '/' inside its JSON
    assert "objective/scores" in names and "policy/clipfrac_avg" in names


def test_it_is_a_transformers_callback(tmp_path):
    live = LivePlot(tmp_path, widgets=False)
    state = TrainerState()
    state.global_step = 7
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    live.on_log(args, state, TrainerControl(), logs={"loss": 1.25, "learning_rate": 1e-3})
    live.on_train_end(args, state, TrainerControl())
    assert live.history["loss"] == [(7, 1.25)]
    assert (tmp_path / "metrics.html").exists()


def test_widgets_update_in_place():
    live = LivePlot(None, widgets=True)
    live.log(1, {"objective/kl": 0.1})
    live.log(2, {"objective/kl": 0.2, "loss": 3.0})
    figure = live._figures["objective"]
    assert list(figure.data[0].y) == [0.1, 0.2]
    assert set(live._figures) == {"objective", "train"}
    assert len(live._box.children) == 3  # title + two panels


def test_panel_names():
    assert panel_of("rewards/accuracies") == "rewards"
    assert panel_of("grad_norm") == "train"
    assert panel_of("eval_loss") == "eval"
