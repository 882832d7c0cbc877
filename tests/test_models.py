"""load_policy on three architectures, in fp32, with LoRA and with 4-bit + LoRA, plus its errors."""

import json

import pytest
import torch

from rlhflab import load_policy
from rlhflab.trainers.models import (FALLBACK_CHAT_TEMPLATE, Precision, default_device, precision_for, sample_tokens,
                                     transcript_ids)

MODES = {"fp32": {}, "lora": {"lora": True}, "4bit+lora": {"lora": True, "quantization": "4bit"}}


def source(name, random_models):
    return "tiny" if name == "tiny" else str(random_models[name])


def one_training_step(policy):
    """One AdamW step on a chat transcript; returns {name: (before, after)} for every parameter."""
    text = policy.chat_prompt("What color is the fox?") + "Sure! The fox is red.<|end|>"
    batch = policy.tokenizer([text], return_tensors="pt", add_special_tokens=False).to(policy.device)
    params = {n: p for n, p in policy.model.named_parameters()}
    before = {n: p.detach().clone() for n, p in params.items()}
    trainable = [p for p in params.values() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    policy.model.train()
    loss = policy.model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()
    return {n: (before[n], params[n].detach()) for n in params}, loss


# Generating first and training after is the RLHF pattern; on the CPU bitsandbytes can swap in a
# kernel with no backward after an eval-mode forward, which torch reports with this warning.
@pytest.mark.filterwarnings("error:.*autograd kernel was not registered")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ["tiny", "llama", "gpt2"])
def test_load_generate_and_train(arch, mode, random_models):
    policy = load_policy(source(arch, random_models), **MODES[mode])
    replies = policy.generate(["What color is the fox?", "Hi! Where does the cat live? Thanks!"],
                              max_new_tokens=12, seed=0)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert policy.tokenizer.padding_side == "left" and policy.tokenizer.pad_token is not None

    changes, loss = one_training_step(policy)
    assert torch.isfinite(loss)
    changed = {n for n, (a, b) in changes.items() if not torch.equal(a, b)}
    assert changed, "a training step changed nothing"
    if mode == "fp32":
        assert policy.is_lora is False
        assert len(changed) > len(changes) // 2
    else:  # only the adapter trains; the base (4-bit or not) stays frozen
        assert policy.is_lora
        assert all("lora_" in n for n in changed), sorted(changed - {n for n in changed if "lora_" in n})[:3]
    if mode == "4bit+lora":
        import bitsandbytes as bnb
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in policy.model.modules())


def test_shipped_model_is_small_llama_with_its_chat_format():
    policy = load_policy("tiny")
    assert policy.model.config.model_type == "llama"
    n_params = sum(p.numel() for p in policy.model.parameters())
    assert 1_000_000 < n_params < 10_000_000
    assert policy.chat_prompt("Hi!") == "<|user|>\nHi!\n<|assistant|>\n"
    greedy = policy.generate(["What color is the fox?"], do_sample=False, max_new_tokens=30)
    assert greedy == policy.generate(["What color is the fox?"], do_sample=False, max_new_tokens=30)


def test_fallback_chat_template_for_models_without_one(random_models):
    policy = load_policy(str(random_models["gpt2"]))
    assert policy.tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    assert policy.chat_prompt("Hi!").endswith("<|assistant|>\n")


def test_8bit_loads_and_generates():
    policy = load_policy("tiny", quantization="8bit")
    assert policy.model.is_loaded_in_8bit
    assert isinstance(policy.generate(["What color is the fox?"], max_new_tokens=8, seed=0)[0], str)


def test_saved_adapter_reloads(tmp_path):
    policy = load_policy("tiny", lora=True)
    one_training_step(policy)
    policy.model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists()
    again = load_policy("tiny", adapter=str(tmp_path))
    prompt = ["Where does the owl live?"]
    assert again.generate(prompt, do_sample=False) == policy.generate(prompt, do_sample=False)


def test_unknown_path_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_policy(str(tmp_path / "missing"))


def test_model_without_causal_lm_head_is_refused(tmp_path):
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    DistilBertModel(DistilBertConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(
        tmp_path / "encoder", safe_serialization=True)
    with pytest.raises(ValueError, match="no causal-LM head"):
        load_policy(str(tmp_path / "encoder"))
    # BERT has a causal-LM class, but a bare BertModel checkpoint holds no trained head for it.
    BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path / "headless", safe_serialization=True)
    with pytest.raises(ValueError, match="not a complete causal LM"):
        load_policy(str(tmp_path / "headless"))


def test_pickled_weights_are_refused(tmp_path, random_models):
    (tmp_path / "config.json").write_text((random_models["llama"] / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="safetensors only"):
        load_policy(str(tmp_path))


def test_remote_code_stays_off(tmp_path, random_models):
    config = json.loads((random_models["llama"] / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    for f in random_models["llama"].iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    policy = load_policy(str(tmp_path))  # loads the built-in Llama class, never evil.py
    assert type(policy.model).__name__ == "LlamaForCausalLM"


def test_4bit_on_a_device_that_cannot_serve_it():
    with pytest.raises(RuntimeError, match="cannot run bitsandbytes 4bit"):
        load_policy("tiny", quantization="4bit", device="mps")


def test_bad_options_name_the_choices():
    with pytest.raises(ValueError, match="'4bit', '8bit' or None"):
        load_policy("tiny", quantization="3bit")
    with pytest.raises(TypeError, match="LoraConfig"):
        load_policy("tiny", lora="yes")


def test_precision_per_device(monkeypatch):
    cpu = precision_for("cpu")
    assert ((cpu.compute, cpu.mixed_precision, cpu.weights(trained_in_full=False))
            == (torch.float32, "no", torch.float32))
    assert cpu.trainer_args() == {"use_cpu": True, "bf16": False, "fp16": False}
    assert cpu.adapter_weights == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 answers (emulated)
    for capability, compute, mixed in (((7, 5), torch.float16, "fp16"), ((8, 0), torch.bfloat16, "bf16"),
                                       ((9, 0), torch.bfloat16, "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, c=capability: c)
        gpu = precision_for("cuda")
        assert (gpu.compute, gpu.mixed_precision) == (compute, mixed), capability
        assert gpu.trainer_args() == {"use_cpu": False, "bf16": mixed == "bf16", "fp16": mixed == "fp16"}
        assert gpu.weights(trained_in_full=True) == torch.float32  # master weights for full fine-tuning
        assert gpu.weights(trained_in_full=False) == compute
        assert gpu.adapter_weights == (torch.bfloat16 if mixed == "bf16" else torch.float32)


def test_a_t4_trains_fp32_adapters_over_fp16_weights(monkeypatch):
    """Seen on a GPU with a T4's precision: the reward model's trainable score head was an fp16 copy
    of the base's, and the fp16 GradScaler refused it ('Attempting to unscale FP16 gradients')."""
    import rlhflab.trainers.models
    from rlhflab.trainers.reward import load_reward_model

    monkeypatch.setattr(rlhflab.trainers.models, "precision_for", lambda device: Precision(torch.float16, "cpu"))
    for model in (load_policy("tiny", lora=True).model, load_reward_model("tiny", lora=True).model):
        trainable = [p for p in model.parameters() if p.requires_grad]
        frozen = [p for p in model.parameters() if not p.requires_grad]
        assert trainable and {p.dtype for p in trainable} == {torch.float32}
        assert {p.dtype for p in frozen} == {torch.float16}


def test_each_process_takes_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")  # what `accelerate launch` sets in the second process
    assert default_device() == "cuda:1"
    monkeypatch.delenv("LOCAL_RANK")
    assert default_device() == "cuda:0"


def test_sampling_ignores_the_checkpoints_generation_settings(shipped_sampling_settings, tolerance):
    """The tokens come from softmax(logits / T) although the checkpoint ships other settings."""
    policy = load_policy(str(shipped_sampling_settings))
    assert policy.model.generation_config.repetition_penalty == 1.5
    inputs = policy.tokenizer([policy.chat_prompt("What color is the fox?")] * 4, return_tensors="pt",
                              add_special_tokens=False).to(policy.device)
    original, captured = policy.model.generate, []

    def recording(**kwargs):
        out = original(**kwargs, output_scores=True, return_dict_in_generate=True)
        captured.append(torch.stack(out.scores, 1))  # (B, T_new, V): what the sampler drew from
        return out.sequences

    policy.model.generate = recording
    torch.manual_seed(0)
    sequences = sample_tokens(policy.model, policy.tokenizer, inputs, 12, temperature=0.7)
    expected = torch.log_softmax(policy.model(sequences).logits[:, inputs["input_ids"].shape[1] - 1: -1] / 0.7, -1)
    assert torch.allclose(torch.log_softmax(captured[0], -1), expected, **tolerance(policy.device, atol=1e-4))
    assert policy.model.generation_config.repetition_penalty == 1.5  # the checkpoint's own settings are back


def test_smollm2_loads_offline_and_generates(smollm2):
    policy = load_policy(smollm2)
    assert sum(p.numel() for p in policy.model.parameters()) == 134_515_008
    assert policy.tokenizer.pad_token_id == policy.tokenizer.eos_token_id  # pad == eos, as in many real models
    assert len(policy.tokenizer) == 49_152
    replies = policy.generate(["What color is the fox?", "Name a fruit."], max_new_tokens=12, seed=0)
    assert len(replies) == 2 and all(r.strip() for r in replies)


@pytest.mark.parametrize("arch", ["tiny", "gpt2"])
def test_response_logprobs_match_a_row_by_row_reference(arch, random_models, tolerance):
    policy = load_policy(source(arch, random_models))
    prompts = ["What color is the fox?", "Hi! Where does the cat live? Thanks!", "Name a food."]
    responses = ["Red.", "The cat lives in the barn, and it sleeps there all day long.", ""]
    expected = []
    with torch.no_grad():
        for prompt, response in zip(prompts, responses):
            ids = transcript_ids(policy.tokenizer, prompt, response)
            start = len(policy.tokenizer(policy.chat_prompt(prompt), add_special_tokens=False)["input_ids"])
            logp = torch.log_softmax(policy.model(torch.tensor([ids], device=policy.device)).logits[0, :-1].float(), -1)
            expected.append(sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids))))
    assert torch.allclose(policy.response_logprobs(prompts, responses, batch_size=3), torch.tensor(expected),
                          **tolerance(policy.device, atol=1e-3))


def slow_reply_logprob(policy, prompt: str, reply_ids: list[int]) -> float:
    """The obvious way: one unpadded forward pass over prompt + reply, log-softmax, the reply's tokens summed."""
    ids = policy.prompt_ids(prompt) + reply_ids
    with torch.no_grad():
        logits = policy.model(input_ids=torch.tensor([ids], device=policy.device)).logits[0, :-1]  # (T - 1, V)
    targets = torch.tensor(ids[1:], device=policy.device)[:, None]  # (T - 1, 1)
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(1, targets)[:, 0]
    return logprobs[-len(reply_ids):].sum().item()


def test_an_evaluations_kl_is_k1_on_the_token_ids_it_sampled(tolerance):
    """Issue 29, defect 4: evaluate's kl/to_sft tokenized the decoded replies again and closed each with EOS, so a
    reply cut off at response_length was scored with an EOS it never sampled (9 of 24 held-out replies at 32
    tokens on the tiny model), and the estimate could go negative. It is now k1 on the sampled ids."""
    from rlhflab import Task
    from rlhflab.lab.stages import Baseline, RLHFConfig, evaluate

    sft = load_policy("tiny")
    policy = load_policy("tiny", lora=True)
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from SFT: LoRA's B starts at zero
        for name, weight in policy.model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.02)
    prompts = ["What color is the fox?", "Where does the owl live?", "What does the rope do?"]
    replies, reply_ids = policy.sample(prompts, max_new_tokens=6, seed=3)
    eos = policy.tokenizer.eos_token_id
    assert all(len(ids) == 6 or ids[-1] == eos for ids in reply_ids) and any(eos not in ids for ids in reply_ids)
    assert [policy.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in reply_ids] == replies
    expected = [slow_reply_logprob(policy, p, ids) for p, ids in zip(prompts, reply_ids)]
    assert torch.allclose(policy.reply_logprobs(prompts, reply_ids), torch.tensor(expected),
                          **tolerance(policy.device, atol=1e-4))

    config = RLHFConfig(response_length=6, seed=0)
    _, evaluated = policy.sample(prompts, max_new_tokens=6, seed=config.seed + 41)  # what evaluate samples
    k1 = [slow_reply_logprob(policy, p, ids) - slow_reply_logprob(sft, p, ids) for p, ids in zip(prompts, evaluated)]
    task = Task(prompts=["Say hi."], heldout=prompts)
    metrics, _ = evaluate(policy, Baseline(sft, prompts, sft.generate(prompts, seed=1), None), task, config)
    tol = tolerance(policy.device, atol=1e-4, rtol=1e-6)  # pytest.approx's own rel
    assert metrics["kl/to_sft"] == pytest.approx(sum(k1) / len(k1), abs=tol["atol"], rel=tol["rtol"])
