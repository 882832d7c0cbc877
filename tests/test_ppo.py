"""PPO on the tiny world: KL starts at 0, only the right parameters learn, checkpoints resume,
NaNs stop cleanly, and a short run beats SFT on both the reward model and the gold annotator."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rlhflab import load_policy
from rlhflab.lab.stages import evaluate, load, ppo_trainer, sft_baseline
from rlhflab.tiny.task import WorldTask
from rlhflab.trainers.models import left_padded_positions, precision_for, token_logprobs
from rlhflab.trainers.nlpo import MaskedPolicy, masked_logits, nucleus_mask
from rlhflab.trainers.ppo import PPOConfig, PPOTrainer, train_ppo
from rlhflab.trainers.reward import GoldReward, SharedReward


def small(tmp_path, **overrides):
    return PPOConfig(**{**dict(output_dir=str(tmp_path), steps=2, batch_size=4, mini_batch_size=2, ppo_epochs=1,
                               response_length=16, save_every=1), **overrides})


def prompts(world, n=32):
    return [q.text for q in world.questions("train", n, seed=4)]


def test_kl_is_zero_before_the_first_update(world, gold, recipe, tmp_path, tolerance):
    _, sft_dir, reward_dir, _ = recipe
    policy = load_policy("tiny", lora=True, adapter=str(sft_dir))
    trainer = PPOTrainer(policy, prompts(world), SharedReward(policy, reward_dir), small(tmp_path),
                         reference_adapter=sft_dir)
    batch = trainer.rollout(prompts(world, 8))
    assert batch["mask"].sum() > 8
    assert batch["k1"].abs().max().item() < tolerance(policy.device, atol=1e-4)["atol"]


def test_only_policy_adapter_and_value_head_learn(world, recipe, tmp_path):
    _, sft_dir, reward_dir, _ = recipe
    policy = load_policy("tiny", lora=True, adapter=str(sft_dir))
    reward = SharedReward(policy, reward_dir)
    trainer = PPOTrainer(policy, prompts(world), reward, small(tmp_path, steps=1), reference_adapter=sft_dir)
    before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters()}
    trainable = {n for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n or n.startswith("value_head") for n in trainable)
    trainer.train()
    changed = {n for n, p in trainer.unwrapped.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert any(n.startswith("value_head") for n in changed) and any(".default." in n for n in changed)
    assert changed <= trainable  # base, reference and reward adapters stay as they were


def test_gradient_checkpointing_gives_the_same_update(world, gold, tmp_path, tolerance):
    trainers = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same LoRA initialisation for both
        policy = load_policy("tiny", lora=True)
        trainers.append(PPOTrainer(policy, prompts(world), GoldReward(gold),
                                   small(tmp_path / str(checkpointing), gradient_checkpointing=checkpointing)))
    torch.manual_seed(1)
    batch = trainers[0].rollout(prompts(world, 4))
    before = {n: p.detach().clone() for n, p in trainers[0].unwrapped.named_parameters() if p.requires_grad}
    for trainer in trainers:
        trainer.update(batch)
    plain, checkpointed = (dict(t.unwrapped.named_parameters()) for t in trainers)
    assert plain.keys() == checkpointed.keys()
    # weights are not of order one: the precision's relative tolerance (a bf16 or fp16 weight rounds to 8 or 11
    # bits), and the test's own absolute one
    rtol = tolerance(trainers[0].policy.device)["rtol"]
    for name, param in plain.items():
        assert torch.allclose(param, checkpointed[name], atol=1e-5, rtol=rtol), name
    assert any(not torch.equal(plain[n], before[n]) for n in before if ".default." in n)  # the update did learn
    assert trainers[1].unwrapped.model.get_base_model().is_gradient_checkpointing


def test_checkpoint_resumes_to_the_same_step(world, gold, tmp_path):
    policy = load_policy("tiny", lora=True)
    first = train_ppo(policy, prompts(world), GoldReward(gold), small(tmp_path, steps=2))
    checkpoint = first.output_dir / "checkpoint"
    assert first.step == 2 and (checkpoint / "adapter_model.safetensors").exists()
    assert (checkpoint / "value_head.safetensors").exists()
    again = load_policy("tiny", lora=True)
    trainer = PPOTrainer(again, prompts(world), GoldReward(gold), small(tmp_path / "resumed", steps=3))
    trainer.resume(checkpoint)
    assert trainer.step == 2
    saved = dict(policy.model.named_parameters())
    for name, param in again.model.named_parameters():
        if "lora_" in name:
            assert torch.equal(param, saved[name]), name
    result = trainer.train()
    assert result.step == 3 and len(result.history) == 1


def test_interrupt_stops_cleanly_with_a_checkpoint(world, gold, tmp_path):
    class InterruptingReward(GoldReward):
        calls = 0

        def score(self, prompts, responses):
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt  # what a notebook's stop button raises
            return super().score(prompts, responses)

    result = train_ppo(load_policy("tiny", lora=True), prompts(world), InterruptingReward(gold),
                       small(tmp_path, steps=5, save_every=100))
    assert result.interrupted and result.step == 1
    assert '"step": 1' in (tmp_path / "checkpoint" / "ppo_state.json").read_text()


def test_nan_reward_stops_before_touching_the_adapter(world, gold, tmp_path):
    class NanReward:
        def score(self, prompts, responses):
            return torch.full((len(prompts),), float("nan"))

    policy = load_policy("tiny", lora=True)
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" in n}
    with pytest.raises(ValueError, match="the reward NanReward returned nan for 4 of 4 responses.*nothing was applied"):
        train_ppo(policy, prompts(world), NanReward(), small(tmp_path))
    after = dict(policy.model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in before.items())


def test_ptx_term_is_logged(world, gold, tmp_path):
    texts = [d["prompt"] + " " + d["response"] for d in world.demonstrations("train", 8)]
    result = train_ppo(load_policy("tiny", lora=True), prompts(world), GoldReward(gold),
                       small(tmp_path, steps=1, ptx_coef=0.5), ptx_texts=texts)
    assert result.history[0]["loss/ptx_avg"] > 0


@pytest.fixture(scope="module")
def sft_answers(world, gold, recipe):
    """SFT's held-out answers, the baseline every mode below is scored against."""
    config, sft_dir, _, _ = recipe
    return sft_baseline(WorldTask(world, gold), config, sft_dir)


@pytest.mark.parametrize("mode", ["lora-shared", "4bit-shared", "lora-separate", "nlpo"])
def test_short_ppo_beats_sft_on_reward_and_gold(world, gold, recipe, sft_answers, tmp_path, mode):
    config, sft_dir, reward_dir, _ = recipe
    config = replace(config, out_dir=str(tmp_path), quantization="4bit" if mode == "4bit-shared" else None,
                     ppo_steps=10)
    trainer = ppo_trainer(WorldTask(world, gold), config, sft_dir, reward_dir, separate_reward=mode == "lora-separate",
                          ppo_fields={"nlpo_top_p": 0.9} if mode == "nlpo" else None)
    result = trainer.train()
    names = set(result.history[-1])
    assert {"objective/kl", "objective/kl_coef", "objective/scores", "objective/gold_scores", "objective/entropy",
            "val/response_length", "policy/approxkl_avg", "policy/clipfrac_avg", "loss/value_avg",
            "val/explained_variance"} <= names
    outcome, _ = evaluate(load(config, result.output_dir / "checkpoint"), sft_answers, WorldTask(world, gold), config,
                          trainer.reward)
    assert outcome["reward/mean"] > outcome["reward/sft_mean"], outcome
    assert outcome["gold/mean"] > outcome["gold/sft_mean"], outcome
    assert (Path(tmp_path) / "ppo" / "checkpoint" / "adapter_model.safetensors").exists()


def test_two_processes_with_accelerate(two_processes, tmp_path):
    out = two_processes("ppo_two_processes.py", str(tmp_path))
    assert "process 0 of 2: step 2" in out.stdout and "process 1 of 2: step 2" in out.stdout
    assert (tmp_path / "checkpoint" / "ppo_state.json").exists()


# -- real-model defects: each of these failed before its fix ------------------------------------

@pytest.mark.parametrize("mode", ["full", "lora", "4bit+lora"])
def test_first_minibatch_has_ratio_one_with_dropout_in_the_model(random_models, world, gold, tmp_path, mode,
                                                                  tolerance):
    """GPT-2 ships dropout 0.1 and the adapter has lora_dropout 0.1; the update must not see either."""
    policy = load_policy(str(random_models["gpt2"]), lora={"lora_dropout": 0.1} if mode != "full" else None,
                         quantization="4bit" if mode == "4bit+lora" else None)
    trainer = PPOTrainer(policy, prompts(world), GoldReward(gold), small(tmp_path, mini_batch_size=4))
    batch = trainer.rollout(prompts(world, 4))
    first = trainer.update(batch)  # one epoch of one minibatch: exactly the first minibatch
    slack = tolerance(policy.device, atol=0.0)["atol"]  # 0 in fp32: the update's log-probs are the rollout's
    assert abs(first["ratio"] - 1) <= slack and first["approxkl"] <= slack ** 2 / 2  # half a mean squared log-ratio
    assert first["clipfrac"] == 0.0  # rounding moves no ratio anywhere near the clip range


def test_adapters_loaded_for_ppo_bring_no_dropout_back(random_models, world, gold, tmp_path):
    """Issue 29, defect 6: dropout was switched off before the value adapter (and NLPO's mask adapter) were
    loaded, so a reward adapter saved with lora_dropout put dropout back into the value forward."""
    from rlhflab.trainers.reward import load_reward_model

    load_reward_model(str(random_models["gpt2"]), lora={"lora_dropout": 0.1}).save(tmp_path / "reward")
    policy = load_policy(str(random_models["gpt2"]), lora={"lora_dropout": 0.1})
    PPOTrainer(policy, prompts(world), GoldReward(gold), small(tmp_path / "ppo", value_model="adapter", nlpo_top_p=0.9),
               value_from=tmp_path / "reward")
    rates = {m.p for m in policy.model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.0}


def test_rollout_logprobs_are_those_the_sampler_drew_from(shipped_sampling_settings, world, gold, tmp_path,
                                                            tolerance):
    policy = load_policy(str(shipped_sampling_settings), lora=True)
    trainer = PPOTrainer(policy, prompts(world), GoldReward(gold),
                         small(tmp_path, temperature=0.7, rollout_batch_size=2))
    original, captured = policy.model.generate, []

    def recording(**kwargs):
        out = original(**kwargs, output_scores=True, return_dict_in_generate=True)
        captured.append(torch.stack(out.scores, 1))  # (b, T_new, V) after every logits processor
        return out.sequences

    policy.model.generate = recording
    batch = trainer.rollout(prompts(world, 4))
    drawn = torch.cat([torch.nn.functional.pad(s, (0, 0, 0, batch["responses"].shape[1] - s.shape[1]))
                       for s in captured])
    sampler = torch.log_softmax(drawn, -1).gather(2, batch["responses"][..., None]).squeeze(-1)
    mask = batch["mask"].bool()
    assert torch.allclose(batch["logprobs"][mask], sampler[mask], **tolerance(policy.device, atol=1e-4))


def test_lm_head_sees_response_positions_only_and_the_rollout_runs_in_micro_batches(world, gold, tmp_path):
    """With a 150k vocabulary, prompt logits and whole-batch forwards are what exhaust a GPU."""
    policy = load_policy("tiny", lora=True)
    trainer = PPOTrainer(policy, prompts(world), GoldReward(gold), small(tmp_path, rollout_batch_size=2))
    head_inputs, generate_rows = [], []
    policy.model.get_output_embeddings().register_forward_hook(
        lambda m, i, o: head_inputs.append(tuple(i[0].shape[:2])))
    original = policy.model.generate

    def recording(**kwargs):
        generate_rows.append(len(kwargs["input_ids"]))
        return original(**kwargs)

    policy.model.generate = recording
    head_inputs.clear()
    batch = trainer.rollout(prompts(world, 4))
    assert generate_rows == [2, 2]
    forwards = [shape for shape in head_inputs if shape[1] > 1]  # generation's one-token steps aside
    assert forwards == [(2, batch["responses"].shape[1] + 1)] * 4  # policy and reference, per micro-batch


def test_4bit_policy_without_lora_is_refused(world, gold, tmp_path):
    with pytest.raises(ValueError, match=r"lora=True"):
        PPOTrainer(load_policy("tiny", quantization="4bit"), prompts(world), GoldReward(gold), small(tmp_path))


def test_gradient_accumulation_cannot_leak_into_the_next_epoch():
    with pytest.raises(ValueError, match="multiple of gradient_accumulation_steps"):
        PPOConfig(batch_size=16, mini_batch_size=8, gradient_accumulation_steps=4)
    PPOConfig(batch_size=16, mini_batch_size=4, gradient_accumulation_steps=4)


def test_seed_fixes_the_samples(world, gold, tmp_path):
    runs = []
    for run in range(2):
        torch.manual_seed(run)  # whatever the global state was before
        result = train_ppo(load_policy("tiny", lora=True), prompts(world), GoldReward(gold),
                           small(tmp_path / str(run), steps=1, seed=3, sample_every=1))
        runs.append(result.history[0]["objective/scores"])
    assert runs[0] == runs[1]


def test_one_ppo_step_on_smollm2_in_4bit_with_lora(smollm2, gold, world, tmp_path, tolerance):
    """A real 135M instruct model (pad == eos, 49k vocabulary) through a whole PPO step on the CPU."""
    policy = load_policy(smollm2, lora=True, quantization="4bit")
    trainer = PPOTrainer(policy, prompts(world), GoldReward(gold),
                         small(tmp_path, steps=1, mini_batch_size=4, response_length=8))
    before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}
    batch = trainer.rollout(prompts(world, 4))
    slack = tolerance(policy.device, atol=0.0)["atol"]  # 0 in fp32
    assert batch["k1"].abs().max().item() <= slack  # the policy starts as the reference
    stats = trainer.update(batch)
    assert abs(stats["ratio"] - 1) <= slack and stats["approxkl"] <= slack ** 2 / 2
    after = dict(trainer.unwrapped.named_parameters())
    assert any(not torch.equal(after[n], p) for n, p in before.items() if "lora_" in n)


def test_linear_schedule_adam_eps_and_prompt_truncation(world, gold, tmp_path):
    policy = load_policy("tiny", lora=True)
    trainer = PPOTrainer(policy, prompts(world), GoldReward(gold),
                         small(tmp_path, steps=4, lr_schedule="linear", learning_rate=1e-3, max_prompt_length=12))
    assert trainer.optimizer.param_groups[0]["eps"] == 1e-5
    long_prompt = "Please tell me, and take your time, " * 5 + "what color is the fox?"
    batch = trainer.rollout([long_prompt] * 4)
    assert batch["query_len"] == 12
    assert policy.tokenizer.decode(batch["input_ids"][0, :12]).endswith(policy.chat_prompt("fox?")[-14:])
    rates = []
    for step in range(3):
        trainer.step = step
        trainer.update(batch)
        rates.append(trainer.optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([1e-3, 0.75e-3, 0.5e-3])
    with pytest.raises(ValueError, match="lr_schedule must be"):
        PPOConfig(lr_schedule="cosine")


def test_value_adapter_starts_from_the_reward_model_and_learns_beside_the_policy(world, gold, recipe, tmp_path,
                                                                                  tolerance):
    _, sft_dir, reward_dir, _ = recipe
    policy = load_policy("tiny", lora=True, adapter=str(sft_dir))
    trainer = PPOTrainer(policy, prompts(world), SharedReward(policy, reward_dir),
                         small(tmp_path, steps=1, value_model="adapter", mini_batch_size=4), reference_adapter=sft_dir,
                         value_from=reward_dir)
    params = dict(trainer.unwrapped.named_parameters())
    for name, param in params.items():
        if ".value." in name:  # a copy of the reward adapter, trainable
            assert torch.equal(param, params[name.replace(".value.", ".reward.")]), name
    assert torch.equal(trainer.unwrapped.value_head.weight, SharedReward(policy, reward_dir).score_weight)
    before = {n: p.detach().clone() for n, p in params.items()}
    batch = trainer.rollout(prompts(world, 4))
    first = trainer.update(batch)
    slack = tolerance(policy.device, atol=0.0)["atol"]  # 0 in fp32
    assert abs(first["ratio"] - 1) <= slack and first["approxkl"] <= slack ** 2 / 2
    changed = {n.split(".")[-2] if "lora_" in n else n for n, p in params.items() if not torch.equal(p, before[n])}
    assert ({"default", "value", "value_head.weight"} <= changed and "reward" not in changed
            and "reference" not in changed)
    trainer.save_checkpoint()
    assert (tmp_path / "checkpoint" / "value" / "adapter_model.safetensors").exists()
    with pytest.raises(ValueError, match="value_from"):
        PPOTrainer(load_policy("tiny", lora=True), prompts(world), GoldReward(gold),
                   small(tmp_path / "x", value_model="adapter"))


# -- NLPO: PPO within the masked policy's nucleus ------------------------------------------------

def test_nucleus_mask_matches_a_slow_reference():
    logits = torch.randn(3, 4, 11, generator=torch.Generator().manual_seed(0)) * 2
    for top_p in (0.05, 0.5, 0.9, 1.0):
        fast = nucleus_mask(logits, top_p)
        for row, keep in zip(logits.flatten(0, 1), fast.flatten(0, 1)):
            probs = row.softmax(-1).tolist()
            expected, mass = set(), 0.0
            for token in sorted(range(11), key=lambda t: -probs[t]):
                if mass >= top_p and expected:
                    break
                expected.add(token)
                mass += probs[token]
            assert set(keep.nonzero().flatten().tolist()) == expected


def test_nlpo_samples_and_scores_within_the_nucleus_and_the_first_ratio_is_one(world, gold, tmp_path, tolerance):
    """Fails when the rollout's or the update's log-probs ignore the mask the sampler applied."""
    policy = load_policy("tiny", lora=True)
    trainer = PPOTrainer(policy, prompts(world), GoldReward(gold),
                         small(tmp_path, nlpo_top_p=0.5, mini_batch_size=4, nlpo_sync_every=2))
    batch = trainer.rollout(prompts(world)[:4])
    nucleus, responses, mask = batch["nucleus"], batch["responses"], batch["mask"].bool()
    assert nucleus.gather(-1, responses[..., None]).squeeze(-1)[mask].all()  # every sampled token is inside
    assert nucleus[mask].sum(-1).float().mean() < 0.5 * nucleus.shape[-1]  # and the nucleus is a real cut
    with torch.no_grad():  # the sampler's KV-cached masks equal the masked policy's nuclei over the whole sequence
        ids, attention = batch["input_ids"], batch["attention_mask"]
        policy.model.eval()
        full = policy.model(input_ids=ids, attention_mask=attention, position_ids=left_padded_positions(attention),
                            adapter_names=[MaskedPolicy.ADAPTER] * len(ids)).logits
    uncached = nucleus_mask(full[:, batch["query_len"] - 1: -1], 0.5, policy.tokenizer.eos_token_id)
    # fp32 gives the sampler's nuclei exactly; bf16 or fp16 rounding may move the top-p cut by a token at its edge
    # (or swap two near-tied ones there), while masks from the wrong logits differ at almost every position
    edge = 0 if precision_for(policy.device).compute == torch.float32 else 2
    assert (uncached != nucleus)[mask].sum(-1).max() <= edge
    with torch.no_grad():
        logits, _ = trainer.unwrapped(batch["input_ids"], batch["attention_mask"], batch["query_len"])
    masked = token_logprobs(masked_logits(logits, nucleus), responses)
    unmasked = token_logprobs(logits, responses)
    assert torch.allclose(batch["logprobs"][mask], masked[mask], **tolerance(policy.device, atol=1e-5))
    assert (masked - unmasked)[mask].max() > 0.1  # ignoring the mask would give other numbers
    losses = trainer.update(batch)  # one epoch, one minibatch: the policy has not moved yet
    slack = tolerance(policy.device, atol=1e-5)["atol"]
    assert losses["ratio"] == pytest.approx(1.0, abs=slack) and losses["approxkl"] < max(1e-8, slack ** 2 / 2)


def test_the_masked_policy_is_a_frozen_copy_synced_every_few_steps(world, gold, tmp_path):
    policy = load_policy("tiny", lora=True)
    trainer = PPOTrainer(policy, prompts(world), GoldReward(gold), small(tmp_path, nlpo_top_p=0.9, nlpo_sync_every=2,
                                                                         learning_rate=1e-2))

    def adapter(name):
        return {n.replace(f".{name}.", "."): p.detach().clone() for n, p in policy.model.named_parameters()
                if f".{name}." in n}

    start = adapter("default")
    assert all(not p.requires_grad for n, p in policy.model.named_parameters() if MaskedPolicy.ADAPTER in n)
    trainer.train()  # 2 steps: synced before step 1 only
    assert all(torch.equal(start[n], p) for n, p in adapter(MaskedPolicy.ADAPTER).items())
    assert not all(torch.equal(start[n], p) for n, p in adapter("default").items())
    trainer.masked_policy.sync()
    assert all(torch.equal(adapter("default")[n], p) for n, p in adapter(MaskedPolicy.ADAPTER).items())
    with pytest.raises(ValueError, match="nlpo_top_p must be in \\(0, 1\\]"):
        PPOConfig(nlpo_top_p=1.5)


def test_a_resumed_nlpo_run_keeps_the_mask_it_had(world, gold, tmp_path):
    """Issue 29, defect 5: the mask policy was not checkpointed, so a run resumed at step 3 (synced at step 2)
    sampled from a fresh copy of the starting adapter's nucleus until its next sync."""
    from peft import get_peft_model_state_dict

    config = small(tmp_path, steps=3, nlpo_top_p=0.9, nlpo_sync_every=2, save_every=3, learning_rate=1e-2)
    first = PPOTrainer(load_policy("tiny", lora=True), prompts(world), GoldReward(gold), config)
    first.train()
    mask = get_peft_model_state_dict(first.policy.model, adapter_name=MaskedPolicy.ADAPTER)
    fresh = get_peft_model_state_dict(first.policy.model, adapter_name="default")
    assert any(not torch.equal(mask[k], fresh[k]) for k in mask)  # the mask is step 2's policy, not step 3's
    again = PPOTrainer(load_policy("tiny", lora=True), prompts(world), GoldReward(gold),
                       small(tmp_path / "resumed", steps=4, nlpo_top_p=0.9, nlpo_sync_every=2))
    again.resume(tmp_path / "checkpoint")
    resumed = get_peft_model_state_dict(again.policy.model, adapter_name=MaskedPolicy.ADAPTER)
    assert all(torch.equal(resumed[k], mask[k]) for k in mask)


def test_the_nucleus_always_keeps_eos():
    """Issue 29, defect 2: RL4LMs keeps EOS in every nucleus, so a reply can always end; ours could mask it out."""
    logits = torch.tensor([[8.0, 6.0, 0.0, -5.0]])  # EOS (3) is far outside a 0.9 nucleus
    assert nucleus_mask(logits, 0.9).tolist() == [[True, True, False, False]]
    assert nucleus_mask(logits, 0.9, eos_token_id=3).tolist() == [[True, True, False, True]]


def test_an_nlpo_checkpoint_is_evaluated_within_its_nucleus(world, gold, tmp_path):
    """Issue 29, defect 2: NLPO trained within its masked policy's nucleus but was saved, loaded and evaluated
    without it, so evaluation sampled tokens NLPO never trained. The stages' loader now gives a policy that
    samples within the nucleus, and scores its replies under the same mask."""
    from rlhflab.trainers.nlpo import NucleusPolicy
    from rlhflab.lab.stages import RLHFConfig, load

    trainer = PPOTrainer(load_policy("tiny", lora=True), prompts(world), GoldReward(gold),
                         small(tmp_path, nlpo_top_p=0.3, nlpo_sync_every=1))
    trainer.train()
    policy = load(RLHFConfig(out_dir=str(tmp_path)), tmp_path / "checkpoint")
    assert isinstance(policy, NucleusPolicy) and policy.masked.top_p == 0.3
    replies, sampled = policy.sample(prompts(world)[:6], max_new_tokens=12, seed=0)
    for prompt, ids in zip(prompts(world)[:6], sampled):
        sequence = policy.prompt_ids(prompt) + list(ids)
        batch = policy.tokenizer.pad({"input_ids": [sequence]}, return_tensors="pt", padding_side="left")
        nuclei = policy.masked.nuclei(batch.to(policy.device), len(ids))[0]  # (R, V)
        sampled_ids = torch.tensor(ids, device=nuclei.device)[:, None]  # (R, 1)
        assert nuclei.gather(-1, sampled_ids).all()  # every sampled token is inside its nucleus
        assert nuclei.sum(-1).float().mean() < 0.5 * nuclei.shape[-1]  # and the nucleus is a real cut
    assert torch.isfinite(policy.reply_logprobs(prompts(world)[:6], sampled)).all()  # scored under the same mask


def test_reference_and_policy_log_probs_share_the_autocast_of_a_mixed_precision_device(world, gold, tmp_path,
                                                                                        bf16_autocast_on_the_cpu,
                                                                                        tolerance):
    """Issue 29, defect 7: on a bf16 GPU the policy's rollout log-probs ran under Accelerate's autocast and the
    reference's outside it, so KL was not 0 at step 0 with identical weights. The CPU shows the same with
    bf16 autocast: a LoRA policy whose adapter is still zero is its own reference."""
    policy = load_policy("tiny", lora=True)  # a fresh adapter: B = 0, so policy == reference exactly
    trainer = PPOTrainer(policy, prompts(world), GoldReward(gold), small(tmp_path))
    assert trainer.accelerator.mixed_precision == "bf16"
    batch = trainer.rollout(prompts(world, 8))
    assert batch["mask"].sum() > 8
    # exactly 0 on the CPU, where bf16 comes in only through autocast; on a GPU, within its precision's tolerance
    assert batch["k1"].abs().max().item() <= tolerance(policy.device, atol=0.0)["atol"]
