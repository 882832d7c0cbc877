"""KTO: trains from thumbs events in the label store; refuses rows it cannot learn from, naming the fix."""

import json

import pytest
import torch

from rlhflab.lab.stages import sample
from rlhflab.labeling.exports import kto_rows
from rlhflab.labeling.records import Item
from rlhflab.labeling.store import LabelStore
from rlhflab.tiny.annotate import label_with_gold
from rlhflab.trainers.kto import KTOConfig, kto_data, train_kto
from rlhflab.trainers.models import load_policy


def test_kto_trains_from_thumbs_events_in_the_store(recipe, world, gold, tmp_path):
    config, sft_dir, _, _ = recipe
    policy = load_policy(config.base, lora=True, adapter=str(sft_dir))
    prompts = [q.text for q in world.questions("train", 48, seed=3)]
    store = LabelStore(tmp_path / "labels.db")
    store.add_items([Item(p, (r,), ("sft",), meta={"playground": True})
                     for p, r in zip(prompts, sample(policy, prompts, config, seed=4))])
    events = label_with_gold(store, gold, annotator="gold")  # a thumbs rating per answer, as a person gives them
    assert {store.events()[0]["choice"], store.events()[-1]["choice"]} <= {"up", "down"}
    rows = kto_rows(store)
    assert len(rows) == len(events) == 48 and {r["source"] for r in rows} == {"rating"}
    ups = sum(r["label"] for r in rows)
    assert 0 < ups < 48, "the gold annotator should rate some SFT answers up and some down"
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    result = train_kto(policy, store, KTOConfig(output_dir=str(tmp_path / "kto"), max_steps=6, batch_size=8,
                                                logging_steps=2))
    changed = [n for n, p in policy.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert changed, "KTO left every adapter weight where it was"
    assert result.metrics["rows/desirable"] == ups and result.metrics["rows/undesirable"] == 48 - ups
    assert result.metrics["kl"] == result.metrics["kl"]  # TRL's KL estimate was logged (not NaN)
    assert (result.output_dir / "adapter_model.safetensors").exists()
    assert "ref" not in json.dumps(sorted(policy.model.peft_config))  # TRL's frozen reference copy is gone
    logged = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in entry for entry in logged)


def test_kto_refuses_rows_it_cannot_learn_from(tmp_path):
    with pytest.raises(ValueError, match="'label' must be True"):
        kto_data([{"prompt": "p", "completion": "c", "label": "yes"}])
    assert kto_data([{"prompt": "p", "answer": "c", "thumbs": False}],
                    columns={"completion": "answer", "label": "thumbs"}) == [{"prompt": "p", "completion": "c",
                                                                               "label": False}]
    policy = load_policy("tiny", lora=True)
    with pytest.raises(ValueError, match="2 up and 0 down"):
        train_kto(policy, [{"prompt": "p", "completion": "c", "label": True}] * 2, KTOConfig(output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="no thumbs ratings or decided pairs"):
        train_kto(policy, LabelStore(tmp_path / "empty.db"), KTOConfig(output_dir=str(tmp_path)))


def test_kto_trains_a_lora_adapter_on_a_4bit_base(tmp_path):
    rows = [{"prompt": "What color is the fox?", "completion": "The fox is red.", "label": True},
            {"prompt": "What color is the fox?", "completion": "Go away.", "label": False}] * 4
    policy = load_policy("tiny", lora=True, quantization="4bit")
    result = train_kto(policy, rows, KTOConfig(output_dir=str(tmp_path), max_steps=2, batch_size=4, logging_steps=1))
    assert (result.output_dir / "adapter_model.safetensors").exists() and result.metrics["rows/desirable"] == 4


def test_no_row_takes_its_kl_completion_from_its_own_prompt(tmp_path, monkeypatch):
    """Issue 29, defect 1: TRL's KTOTrainer gives each row the completion of the row before it in its batch as
    the "mismatched" KL pair; kto_rows writes a pair's chosen and rejected rows next to each other, so 8 of 16
    rows per batch were paired with their own prompt's other reply. The seed now also changes the order."""
    from rlhflab.labeling.records import import_comparisons
    from rlhflab.trainers import kto

    store = LabelStore(tmp_path / "labels.db")
    import_comparisons(store, [{"prompt": f"Question {n}?", "chosen": f"Good {n}.", "rejected": f"Bad {n}."}
                               for n in range(8)])
    handed = []

    class Captured(Exception):
        pass

    def capture(*args, train_dataset, **kwargs):
        handed.append(train_dataset)
        raise Captured

    monkeypatch.setattr(kto.trl, "KTOTrainer", capture)
    orders = []
    for seed in (0, 1):
        with pytest.raises(Captured):
            train_kto(load_policy("tiny", lora=True), store,
                      KTOConfig(output_dir=str(tmp_path), batch_size=8, seed=seed))
        prompts = [row["prompt"][0]["content"] for row in handed[-1]]
        orders.append(prompts)
        for start in range(0, len(prompts), 8):  # TRL's rotation, batch by batch: row i gets row i-1's completion
            batch = prompts[start:start + 8]
            assert all(batch[i] != batch[i - 1] for i in range(len(batch))), batch
    assert len(orders[0]) == 16 and orders[0] != orders[1]
