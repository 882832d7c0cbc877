"""DPO: from the label store, SFT as the reference, live margins, LoRA and 4-bit, clear errors."""

import json

import pytest
import torch

from rlhflab import load_policy
from rlhflab.labeling.store import LabelStore
from rlhflab.tiny.annotate import label_with_gold, world_items
from rlhflab.trainers.dpo import DPOConfig, dpo_rows, train_dpo
from rlhflab.trainers.live import LivePlot


@pytest.fixture(scope="module")
def store(world, gold, tmp_path_factory):
    store = LabelStore(tmp_path_factory.mktemp("dpo") / "labels.db")
    store.add_items(world_items(world, 64, seed=4))
    label_with_gold(store, gold)
    return store


def adapter_weights(policy) -> dict:
    return {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("quantization", [None, "4bit"])
def test_dpo_from_the_store_trains_the_adapter_against_the_sft_reference(recipe, store, quantization, tmp_path,
                                                                          tolerance):
    _, sft_dir, _, _ = recipe
    policy = load_policy("tiny", lora=True, adapter=str(sft_dir), quantization=quantization)
    before = adapter_weights(policy)
    live = LivePlot(tmp_path / "dpo", widgets=False)
    result = train_dpo(policy, store, DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=6, batch_size=8,
                                                logging_steps=1), live=live)
    after = adapter_weights(policy)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    frozen = [n for n, p in policy.model.named_parameters() if p.requires_grad and "lora_" not in n]
    assert not frozen  # only the adapter trains
    # the reference is the starting (SFT) adapter: before the first update the implicit rewards are 0
    first = json.loads((tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
    near_zero = tolerance(policy.device, atol=1e-4)["atol"]
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=near_zero)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=near_zero)
    assert [step for step, _ in live.history["rewards/accuracies"]] == list(range(1, 7))
    assert result.metrics["rewards/margins"] > 0  # chosen pulled above rejected
    saved = result.output_dir
    assert (saved / "adapter_model.safetensors").exists() and not (saved / "ref").exists()
    assert not list(saved.glob("*.bin"))
    reloaded = load_policy("tiny", adapter=str(saved), quantization=quantization)
    assert reloaded.generate(["What color is the fox?"], max_new_tokens=4, seed=0)


def test_rows_from_a_dataframe_with_renamed_columns(store):
    import pandas as pd

    frame = pd.DataFrame(dpo_rows(store)).rename(columns={"prompt": "question"})
    rows = dpo_rows(frame, columns={"prompt": "question"})
    assert len(rows) == len(dpo_rows(store)) > 30 and set(rows[0]) >= {"prompt", "chosen", "rejected"}


def test_empty_store_and_missing_columns_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="no decided pairs yet"):
        dpo_rows(LabelStore(tmp_path / "empty.db"))
    with pytest.raises(ValueError, match="rejected"):
        dpo_rows([{"prompt": "p", "chosen": "c"}])


def test_two_processes_with_accelerate(two_processes, tmp_path):
    """TRL's trainers under `accelerate launch`, as PPO is in tests/test_ppo.py."""
    out = two_processes("dpo_two_processes.py", str(tmp_path))
    assert "process 0 of 2" in out.stdout and "process 1 of 2" in out.stdout
    assert (tmp_path / "dpo" / "adapter_model.safetensors").exists()
