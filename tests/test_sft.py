"""SFT: response-only loss, LoRA and QLoRA, every input type, and a measured improvement."""

import json

import pandas as pd
import pytest
from datasets import Dataset

from rlhflab import load_policy
from rlhflab.trainers.models import precision_for
from rlhflab.trainers.sft import SFTConfig, conversations, train_sft


def test_sft_lowers_heldout_loss_and_raises_gold_score(world, gold, tmp_path):
    heldout = world.demonstrations("heldout", 48, seed=1)
    prompts = [d["prompt"] for d in heldout]
    policy = load_policy("tiny", lora=True)
    before = policy.generate(prompts, seed=0)
    result = train_sft(policy, world.demonstrations("train", 256), SFTConfig(output_dir=str(tmp_path / "sft")),
                       eval_demonstrations=heldout)
    after = policy.generate(prompts, seed=0)
    assert result.metrics["eval/loss_after"] < result.metrics["eval/loss_before"] - 0.1
    assert gold.mean_score(prompts, after) > gold.mean_score(prompts, before) + 0.5
    assert gold.win_rate(prompts, after, before) > 0.6
    adapter = tmp_path / "sft"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    assert not list(adapter.glob("*.bin"))
    logged = [json.loads(line) for line in (adapter / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in logged) >= 2
    assert "plotly" in (adapter / "metrics.html").read_text()


def test_loss_covers_the_response_only(world, tmp_path):
    """TRL's completion mask must cover exactly the reply tokens (and the closing <|end|>)."""
    import trl

    policy = load_policy("tiny")
    row = world.demonstrations("train", 1)[0]
    trainer = trl.SFTTrainer(model=policy.model, train_dataset=conversations([row]), processing_class=policy.tokenizer,
                             args=trl.SFTConfig(output_dir=str(tmp_path), report_to="none", bf16=False,
                                                completion_only_loss=True, max_length=256))
    batch = trainer.data_collator([trainer.train_dataset[0]])  # what training sees
    trained = [t for t, label in zip(batch["input_ids"][0], batch["labels"][0]) if label != -100]
    assert policy.tokenizer.decode(trained).strip() == row["response"] + "<|end|>"


@pytest.mark.parametrize("kind", ["dataframe", "dataset", "records"])
def test_qlora_sft_accepts_each_input_type_and_saves_the_adapter(world, tmp_path, kind):
    rows = world.demonstrations("train", 16)
    data = {"dataframe": pd.DataFrame(rows), "dataset": Dataset.from_list(rows), "records": rows}[kind]
    policy = load_policy("tiny", lora=True, quantization="4bit")
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_B" in n}
    result = train_sft(policy, data, SFTConfig(output_dir=str(tmp_path), max_steps=2, batch_size=8))
    assert result.metrics["train/loss"] > 0
    after = dict(policy.model.named_parameters())
    assert any(not (after[n].detach() == b).all() for n, b in before.items())
    # TRL casts QLoRA adapters to bf16; they end in the device's adapter dtype: fp32 on a CPU (and under a T4's
    # GradScaler), bf16 where it is native
    adapter_dtype = precision_for(policy.device).adapter_weights
    assert {p.dtype for p in policy.model.parameters() if p.requires_grad} == {adapter_dtype}
    reloaded = load_policy("tiny", adapter=str(tmp_path), quantization="4bit")
    assert reloaded.is_lora


def test_missing_column_is_named_with_the_fix(world, tmp_path):
    policy = load_policy("tiny", lora=True)
    rows = [{"prompt": r["prompt"], "completion": r["response"]} for r in world.demonstrations("train", 4)]
    with pytest.raises(ValueError, match=r"column 'response' is missing .* found: completion, prompt; pass columns="):
        train_sft(policy, rows, SFTConfig(output_dir=str(tmp_path)))
    result = train_sft(policy, rows, SFTConfig(output_dir=str(tmp_path), max_steps=1),
                       columns={"response": "completion"})
    assert result.metrics["train/loss"] > 0


@pytest.mark.parametrize("bad, message", [
    ([], "empty"),
    ([{"prompt": "Hi", "response": ""}], "'response' is empty"),
    ([{"prompt": 3, "response": "Hi"}], "'prompt' must be text"),
    ("not a table", "must be a pandas DataFrame"),
])
def test_bad_demonstrations_are_refused_clearly(bad, message, tmp_path):
    policy = load_policy("tiny", lora=True)
    with pytest.raises((ValueError, TypeError), match=message):
        train_sft(policy, bad, SFTConfig(output_dir=str(tmp_path)))


def test_4bit_without_lora_points_to_qlora(world, tmp_path):
    policy = load_policy("tiny", quantization="4bit")
    with pytest.raises(ValueError, match="lora=True"):
        train_sft(policy, world.demonstrations("train", 4), SFTConfig(output_dir=str(tmp_path)))
