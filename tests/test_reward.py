"""Reward model: margins from strength, a trained and saved score head, accuracy above chance."""

import logging.handlers

import pandas as pd
import pytest
import torch

from rlhflab import load_policy
from rlhflab.labeling.records import MARGINS
from rlhflab.trainers.reward import (GoldReward, RewardConfig, SharedReward, checked_scores, evaluate_reward_model,
                                     load_reward_model, preference_rows, reward_ids, reward_plot, train_reward_model)


@pytest.fixture(scope="module")
def heldout(world, gold):
    return gold.preferences(*world.candidate_pairs("heldout", 150, seed=2))


def test_beats_chance_on_heldout_pairs_and_agrees_with_gold(recipe, heldout):
    _, _, reward_dir, agreement = recipe
    assert agreement["reward/heldout_pairs_accuracy"] > 0.7  # chance is 0.5
    assert agreement["reward/gold_agreement_sft_samples"] > 0.7
    result = evaluate_reward_model(load_reward_model(str(reward_dir)), heldout)
    assert len(heldout) >= 80 and result["metrics"]["eval/accuracy"] > 0.7
    table = result["calibration"]
    assert table["pairs"].sum() == len(heldout)
    assert table["mean predicted"].between(0, 1).all()
    # pairs predicted to go one way mostly do: the lowest bin's first-side wins are rarer than the highest's
    assert table["observed first wins"].iloc[0] < table["observed first wins"].iloc[-1]
    assert len(reward_plot(result).data) == 2


def test_score_head_is_trained_and_saved_with_the_adapter(recipe, heldout):
    _, _, reward_dir, _ = recipe
    reward_model = load_reward_model(str(reward_dir))
    score = reward_model.model.base_model.model.score  # peft's ModulesToSaveWrapper
    assert not torch.equal(score.modules_to_save["default"].weight, score.original_module.weight)
    base = load_reward_model("tiny", lora=True)  # a fresh adapter: its base loads in the dtype the trained one's did
    base_weights = dict(base.model.base_model.model.named_parameters())
    for name, param in reward_model.model.base_model.model.named_parameters():
        if "lora_" not in name and "score" not in name:  # the base stays frozen
            assert torch.equal(param, base_weights[name]), name
    prompts, responses = [r["prompt"] for r in heldout[:8]], [r["chosen"] for r in heldout[:8]]
    assert not torch.allclose(base.score(prompts, responses), reward_model.score(prompts, responses), atol=1e-3)


def test_normalised_on_sft_samples_and_shared_adapter_scores_the_same(recipe, heldout, tolerance):
    config, sft_dir, reward_dir, _ = recipe
    reward_model = load_reward_model(str(reward_dir))
    assert reward_model.std != 1.0 and reward_model.mean != 0.0
    prompts, responses = [r["prompt"] for r in heldout[:16]], [r["chosen"] for r in heldout[:16]]
    raw = reward_model.score(prompts, responses, normalized=False)
    assert torch.allclose(reward_model.score(prompts, responses), (raw - reward_model.mean) / reward_model.std,
                          **tolerance(reward_model.device))
    shared = SharedReward(load_policy("tiny", lora=True, adapter=str(sft_dir)), reward_dir)
    assert torch.allclose(shared.score(prompts, responses), reward_model.score(prompts, responses),
                          **tolerance(reward_model.device, atol=1e-3))


def test_normalize_on_gives_mean_0_std_1(recipe, heldout, tmp_path, tolerance):
    reward_model = load_reward_model(str(recipe[2]))
    prompts, responses = [r["prompt"] for r in heldout], [r["chosen"] for r in heldout]
    reward_model.normalize_on(prompts, responses)
    scores = reward_model.score(prompts, responses)
    assert abs(scores.mean().item()) < 1e-4 and abs(scores.std().item() - 1) < 1e-4
    reward_model.save(tmp_path)
    assert torch.allclose(load_reward_model(str(tmp_path)).score(prompts, responses), scores,
                          **tolerance(reward_model.device, atol=1e-5))


def test_strength_becomes_a_margin_and_bad_rows_are_named():
    rows = preference_rows(pd.DataFrame([
        {"prompt": "p", "chosen": "a", "rejected": "b", "strength": "much"},
        {"prompt": "p", "chosen": "a", "rejected": "b", "strength": None},
    ]))
    assert [r["margin"] for r in rows] == [MARGINS["much"], 0.0]
    assert preference_rows([{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 0.25}])[0]["margin"] == 0.25
    with pytest.raises(ValueError, match="strength 'huge' is not one of"):
        preference_rows([{"prompt": "p", "chosen": "a", "rejected": "b", "strength": "huge"}])
    with pytest.raises(ValueError, match="column 'rejected' is missing"):
        preference_rows([{"prompt": "p", "chosen": "a", "worse": "b"}])


def test_4bit_reward_model_trains_with_lora(heldout, tmp_path):
    reward_model = load_reward_model("tiny", lora=True, quantization="4bit")
    metrics = train_reward_model(reward_model, heldout[:32], RewardConfig(output_dir=str(tmp_path), max_steps=2,
                                                                        batch_size=8))
    assert metrics["train/loss"] > 0 and (tmp_path / "adapter_model.safetensors").exists()
    with pytest.raises(ValueError, match="lora=True"):
        train_reward_model(load_reward_model("tiny", quantization="4bit"), heldout[:8],
                           RewardConfig(output_dir=str(tmp_path)))


# -- real-model defects: each of these failed before its fix ------------------------------------

@pytest.mark.parametrize("pad", ["pad != eos", "pad == eos"])
def test_shared_adapter_reads_the_score_where_the_reward_model_does(pad, pad_is_eos, heldout, tmp_path, tolerance):
    base = str(pad_is_eos) if pad == "pad == eos" else "tiny"
    torch.manual_seed(0)
    reward_model = load_reward_model(base, lora=True)
    for name, param in reward_model.model.named_parameters():
        if "lora_B" in name:  # a trained-looking adapter, so the shared base really routes through it
            torch.nn.init.normal_(param, std=0.05)
    reward_model.save(tmp_path)
    prompts, responses = [r["prompt"] for r in heldout[:8]], [r["chosen"] for r in heldout[:8]]
    responses[0] += " and more words, so the rows pad differently"
    shared = SharedReward(load_policy(base, lora=True), tmp_path)
    assert torch.allclose(shared.score(prompts, responses), load_reward_model(str(tmp_path)).score(prompts, responses),
                          **tolerance(reward_model.device, atol=1e-4))


def test_4bit_reward_model_scores_with_the_dtypes_a_gpu_leaves(heldout):
    """On a GPU, TRL keeps a QLoRA model's trained adapter and score head in bf16 while its norms,
    and so its residual stream, stay fp32; scoring then runs outside any autocast."""
    reward_model = load_reward_model("tiny", lora=True, quantization="4bit")
    for param in reward_model.model.parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.bfloat16)
    scores = reward_model.score([r["prompt"] for r in heldout[:4]], [r["chosen"] for r in heldout[:4]])
    assert scores.shape == (4,) and torch.isfinite(scores).all()


def test_scoring_reads_the_tokens_training_read(heldout, tmp_path, tolerance):
    reward_model = load_reward_model("tiny", lora=True)
    train_reward_model(reward_model, heldout[:16], RewardConfig(output_dir=str(tmp_path), max_steps=1, batch_size=8,
                                                                max_length=24))
    reloaded = load_reward_model(str(tmp_path))
    assert reloaded.max_length == 24
    prompt, response = heldout[0]["prompt"], heldout[0]["chosen"] + " It is so. It is so. It is so."
    ids = reward_ids(reloaded.tokenizer, prompt, response, 24)
    assert len(ids) == 24
    with torch.no_grad():
        expected = reloaded.model(input_ids=torch.tensor([ids], device=reloaded.device)).logits[0, 0].float().cpu()
    assert torch.allclose(reloaded.score([prompt], [response], normalized=False), expected[None],
                          **tolerance(reloaded.device, atol=1e-5))


def test_bad_reward_output_names_the_reward(gold):
    def length_reward(prompts, responses):
        return [float(len(r)) for r in responses][:-1]

    with pytest.raises(ValueError, match=r"the reward length_reward returned scores of shape \(1,\) for 2"):
        checked_scores(length_reward(["p", "q"], ["a", "b"]), 2, length_reward)
    with pytest.raises(TypeError, match="the reward GoldReward returned None"):
        checked_scores(None, 2, GoldReward(gold))
    with pytest.raises(ValueError, match="returned nan for 1 of 2 responses"):
        checked_scores([1.0, float("nan")], 2, length_reward)
    assert checked_scores([1, 2], 2, length_reward).dtype == torch.float32


def test_a_saved_reward_model_loads_without_a_missing_head_report_and_real_reports_still_show(tmp_path):
    """Issue 26: reloading a trained reward adapter printed transformers' "score.weight | MISSING ... newly
    initialized ... Consider training" table, although the trained head is then loaded: a user reads a broken
    model. That table is held back when the new head is all it lists, and shown when it lists more."""
    trained = load_reward_model("tiny", lora=True)
    with torch.no_grad():
        trained.model.base_model.model.score.modules_to_save["default"].weight.fill_(0.5)
    trained.save(tmp_path / "adapter")
    load_reward_model("tiny").save(tmp_path / "full")  # a score head and no LM head: not a policy
    reports = logging.getLogger("transformers.modeling_utils")
    shown = logging.handlers.BufferingHandler(capacity=100)
    reports.addHandler(shown)
    try:
        reloaded = load_reward_model(str(tmp_path / "adapter"))
        after_the_reward_model = [record.getMessage() for record in shown.buffer]
        load_policy(str(tmp_path / "full"))
    finally:
        reports.removeHandler(shown)
    assert not [message for message in after_the_reward_model if "LOAD REPORT" in message]
    assert torch.allclose(reloaded.model.base_model.model.score.modules_to_save["default"].weight.float().cpu(),
                          torch.tensor(0.5))
    assert any("score.weight | UNEXPECTED" in record.getMessage() for record in shown.buffer)


def test_an_empty_reply_is_kept_and_counted_at_import_and_trains_every_judged_method(tmp_path):
    """Issue 27: `train_reward_model` on HH-RLHF's rows stopped at row 397 ('chosen' is empty), while
    `import_hh_rlhf` kept such rows. One rule now: an empty judged reply is kept, and counted at import."""
    from rlhflab.labeling.records import import_comparisons
    from rlhflab.labeling.store import LabelStore
    from rlhflab.trainers.dpo import dpo_rows
    from rlhflab.trainers.kto import kto_data

    rows = [{"prompt": "Tell me a secret.", "chosen": "", "rejected": "Here is one."},
            {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}]
    report = import_comparisons(LabelStore(tmp_path / "labels.db"), rows)
    assert report.empty_replies == 1 and "stored 2 (1 with an empty reply, kept)" in str(report)
    assert (dpo_rows(rows) == rows
            and kto_data([{"prompt": "p", "completion": "", "label": True}])[0]["completion"] == "")
    result = train_reward_model(load_reward_model("tiny", lora=True), rows,
                                RewardConfig(output_dir=str(tmp_path / "reward"), max_steps=1, batch_size=2))
    assert result["train/loss"] > 0
