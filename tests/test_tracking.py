"""Tracking, as a Hugging Face user expects it: `report_to="tensorboard"` writes event files for every stage and
for the loop's rounds, any TRL field passes through `trl_args`, and a killed SFT run resumes from its last
checkpoint (issue 31)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlhflab import WorldTask, load_policy
from rlhflab.lab.loop import RLHFLoop
from rlhflab.lab.stages import RLHFConfig
from rlhflab.trainers.dpo import DPOConfig, train_dpo
from rlhflab.trainers.sft import SFTConfig, train_sft

PAIRS = [{"prompt": "What color is the fox?", "chosen": "The fox is red.", "rejected": "Go away."},
         {"prompt": "Where does the owl live?", "chosen": "The owl lives in the barn.", "rejected": "No."}] * 4


def scalars(directory: Path) -> set[str]:
    """Every scalar tag in the event files under `directory`."""
    tags = set()
    for events in directory.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    return tags


def test_report_to_tensorboard_writes_every_stage_and_the_rounds(world, gold, tmp_path):
    config = RLHFConfig.quick(str(tmp_path / "loop"), rounds=1, n_demonstrations=8, labels_per_round=8,
                              ppo_steps=1, ppo_batch_size=4, response_length=8, n_heldout=4, reward_epochs=1.0,
                              report_to="tensorboard")
    RLHFLoop(WorldTask(world, gold), config).run_round()
    loop = tmp_path / "loop"
    assert any("loss" in tag for tag in scalars(loop / "sft" / "runs"))
    assert any("accuracy" in tag for tag in scalars(loop / "round_1" / "reward" / "runs"))
    assert {"objective/kl", "objective/scores"} <= scalars(loop / "ppo" / "runs")  # one curve over the rounds
    assert "gold/win_rate_vs_sft" in scalars(loop / "rounds" / "runs")
    train_dpo(load_policy("tiny", lora=True), PAIRS, DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=2,
                                                               batch_size=4, logging_steps=1,
                                                               report_to="tensorboard"))
    assert any("rewards" in tag for tag in scalars(tmp_path / "dpo" / "runs"))


def test_trl_args_pass_any_trl_field_and_a_wrong_one_is_named(tmp_path):
    from rlhflab.trainers.training import trl_config
    import trl

    config = SFTConfig(output_dir=str(tmp_path), trl_args={"weight_decay": 0.25, "learning_rate": 3e-4})
    args = trl_config(trl.SFTConfig, config, "cpu")
    assert args.weight_decay == 0.25 and args.learning_rate == 3e-4  # trl_args win over the stage's own
    with pytest.raises(ValueError, match="'weight_decayy', which SFTConfig does not have"):
        trl_config(trl.SFTConfig, SFTConfig(output_dir=str(tmp_path), trl_args={"weight_decayy": 0.1}), "cpu")


KILLED_AT_STEP_2 = """
import os, signal, sys
from rlhflab import TinyWorld, load_policy
from rlhflab.trainers.live import LivePlot
from rlhflab.trainers.sft import SFTConfig, train_sft

class KilledAfterTheSecondCheckpoint(LivePlot):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # as a kernel killed for memory, or a Colab runtime gone

out = sys.argv[1]
train_sft(load_policy("tiny", lora=True), TinyWorld().demonstrations("train", 64),
          SFTConfig(output_dir=out, max_steps=4, batch_size=8, save_steps=1, logging_steps=1),
          live=KilledAfterTheSecondCheckpoint(out, widgets=False))
"""


def test_a_killed_sft_run_resumes_from_its_last_checkpoint(world, tmp_path):
    out = tmp_path / "sft"
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_STEP_2, str(out)], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-1", "checkpoint-2"}
    assert not (out / "adapter_model.safetensors").exists()
    result = train_sft(load_policy("tiny", lora=True), world.demonstrations("train", 64),
                       SFTConfig(output_dir=str(out), max_steps=4, batch_size=8, save_steps=1, logging_steps=1,
                                 resume=True))
    logged = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    steps = sorted(int(line.split('"step": ')[1].split(",")[0]) for line in logged)
    assert steps == [3, 4]  # steps 1 and 2 came from checkpoint-2, not again
    assert (result.output_dir / "adapter_model.safetensors").exists()
