"""NLPO's masked policy (Ramamurthy et al. 2023, RL4LMs): PPO samples, and is scored, only within the top-p
nucleus of a frozen copy of the policy that is synced every few steps (`PPOConfig.nlpo_top_p`).

    nucleus_mask        the top-p nucleus of a distribution as a bool mask; EOS always stays in it
    masked_logits       logits with everything outside a nucleus at -inf
    MaskedPolicy        the frozen copy: one more LoRA adapter on the same base (routed per sample), or a
                        copy of the model; saved beside each checkpoint so a resume keeps its nucleus
    NucleusSampling     the logits processor that masks each sampling step and keeps the masks it applied
    NucleusPolicy       a trained NLPO policy, sampling and scored within its nucleus, as RL4LMs evaluates
    load_nlpo           one from an NLPO checkpoint; `is_nlpo_checkpoint` tells such a checkpoint apart
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList

from .models import Policy, cache_keyword, left_padded_positions, load_policy, sample_tokens

__all__ = ["nucleus_mask", "masked_logits", "MaskedPolicy", "NucleusSampling", "NucleusPolicy", "is_nlpo_checkpoint",
           "load_nlpo"]


def nucleus_mask(logits: torch.Tensor, top_p: float, eos_token_id: int | None = None) -> torch.Tensor:
    """The top-p nucleus of softmax(logits) as a bool mask of the same shape (..., V): the most likely
    tokens, in order, while the probability before them is below top_p. The top token always stays, and so
    does `eos_token_id`, as in RL4LMs: a reply may always end."""
    probs = F.softmax(logits.float(), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep = (sorted_probs.cumsum(-1) - sorted_probs) < top_p
    keep[..., 0] = True
    nucleus = torch.zeros_like(keep).scatter(-1, order, keep)
    if eos_token_id is not None:
        nucleus[..., eos_token_id] = True
    return nucleus


def masked_logits(logits: torch.Tensor, nucleus: torch.Tensor | None) -> torch.Tensor:
    """Logits with every token outside the nucleus at -inf (unchanged without NLPO)."""
    return logits if nucleus is None else logits.masked_fill(~nucleus, float("-inf"))


class MaskedPolicy:
    """NLPO's masked policy: a frozen copy of the policy whose top-p nucleus, at every position, is the
    only set of tokens the policy may sample and is scored on.

    With LoRA the copy is one more adapter on the same base, routed per sample; with full weights it
    is a copy of the model. `sync` copies the policy's current weights into it.
    """

    ADAPTER = "nlpo_mask"

    def __init__(self, model, top_p: float, is_lora: bool, eos_token_id: int | None):
        self.model, self.top_p, self.is_lora, self.eos_token_id = model, top_p, is_lora, eos_token_id
        self.cache_name = cache_keyword(model)  # read once: nucleus() runs at every sampled token
        if is_lora:
            model.add_adapter(self.ADAPTER, model.peft_config["default"])
            for name, parameter in model.named_parameters():
                if f".{self.ADAPTER}." in name:
                    parameter.requires_grad_(False)
            self.copy = None
        else:
            self.copy = copy.deepcopy(model).requires_grad_(False).eval()
        self.sync()

    def save(self, checkpoint: Path) -> None:
        """The mask's weights beside a checkpoint: its adapter (LoRA) or its copy of the model."""
        from peft import get_peft_model_state_dict

        if self.is_lora:
            weights = get_peft_model_state_dict(self.model, adapter_name=self.ADAPTER)
            save_file({k: v.contiguous() for k, v in weights.items()}, checkpoint / f"{self.ADAPTER}.safetensors")
        else:
            self.copy.save_pretrained(checkpoint / self.ADAPTER, safe_serialization=True)

    @torch.no_grad()
    def load(self, checkpoint: Path) -> None:
        """The mask as `save` left it, so a resumed run samples from the nucleus it had, not from a fresh copy."""
        from peft import set_peft_model_state_dict

        if self.is_lora:
            set_peft_model_state_dict(self.model, load_file(checkpoint / f"{self.ADAPTER}.safetensors"),
                                      adapter_name=self.ADAPTER)
        else:
            weights = {}
            for shard in (checkpoint / self.ADAPTER).glob("model*.safetensors"):
                weights.update(load_file(shard))
            self.copy.load_state_dict(weights, strict=False)

    @torch.no_grad()
    def sync(self):
        if self.is_lora:
            from peft import get_peft_model_state_dict, set_peft_model_state_dict

            set_peft_model_state_dict(self.model, get_peft_model_state_dict(self.model, adapter_name="default"),
                                      adapter_name=self.ADAPTER)
        else:
            self.copy.load_state_dict(self.model.state_dict())

    @torch.no_grad()
    def nucleus(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache=None) -> torch.Tensor:
        """The nucleus for the token after each row's last position: (B, V).

        With a `cache` (a transformers `DynamicCache` that only this call fills), only the positions it
        has not seen yet are run, so a whole rollout costs one pass instead of one pass per token.
        """
        seen = cache.get_seq_length() if cache is not None else 0
        logits = self.logits(input_ids=input_ids[:, seen:], attention_mask=attention_mask, logits_to_keep=1,
                             position_ids=left_padded_positions(attention_mask)[:, seen:],
                             use_cache=cache is not None, **{self.cache_name: cache})
        return nucleus_mask(logits[:, -1], self.top_p, self.eos_token_id)

    @torch.no_grad()
    def nuclei(self, batch: dict, keep: int) -> torch.Tensor:
        """The nuclei at the `keep` positions that predict a left-padded batch's last `keep` tokens: (B, keep, V)."""
        logits = self.logits(**batch, position_ids=left_padded_positions(batch["attention_mask"]),
                             logits_to_keep=keep + 1)
        return nucleus_mask(logits[:, :-1], self.top_p, self.eos_token_id)

    def logits(self, **inputs) -> torch.Tensor:
        if self.is_lora:
            return self.model(**inputs, adapter_names=[self.ADAPTER] * len(inputs["input_ids"])).logits
        return self.copy(**inputs).logits


class NucleusSampling(LogitsProcessor):
    """Masks each sampling step to the masked policy's nucleus, and keeps the masks it applied, so that
    the rollout's and the update's log-probs score exactly the distribution that was sampled. One
    instance serves one `generate` call: it keeps the masked policy's KV cache between steps."""

    def __init__(self, masked: MaskedPolicy, query_mask: torch.Tensor):
        self.masked, self.query_mask, self.applied = masked, query_mask, []
        self.cache = DynamicCache()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        new = input_ids.shape[1] - self.query_mask.shape[1]
        attention_mask = torch.cat([self.query_mask, self.query_mask.new_ones(len(input_ids), new)], dim=1)
        nucleus = self.masked.nucleus(input_ids, attention_mask, self.cache)
        self.applied.append(nucleus)
        return scores.masked_fill(~nucleus, float("-inf"))

    def masks(self, length: int, response_mask: torch.Tensor) -> torch.Tensor:
        """(B, length, V): the applied masks, all-true where nothing was sampled or after the response."""
        stacked = torch.stack(self.applied, dim=1)
        stacked = F.pad(stacked, (0, 0, 0, length - stacked.shape[1]), value=True)
        return stacked | ~response_mask.bool()[..., None]


@dataclass
class NucleusPolicy(Policy):
    """A policy as NLPO trained it: it samples, and is scored, only within its masked policy's top-p nucleus
    at every token, as RL4LMs decodes at evaluation too. `load_nlpo` builds one from an NLPO checkpoint."""

    masked: MaskedPolicy | None = None

    def sample_tokens(self, inputs: dict, max_new_tokens: int, temperature: float, do_sample: bool) -> torch.Tensor:
        sampling = NucleusSampling(self.masked, inputs["attention_mask"])
        return sample_tokens(self.model, self.tokenizer, inputs, max_new_tokens, temperature, do_sample,
                             LogitsProcessorList([sampling]))

    def response_logits(self, batch: dict, keep: int) -> torch.Tensor:
        return masked_logits(super().response_logits(batch, keep), self.masked.nuclei(batch, keep))


def is_nlpo_checkpoint(directory: str | Path) -> bool:
    """Whether `directory` is a checkpoint of an NLPO run (it holds the masked policy beside the policy)."""
    directory = Path(directory)
    return (directory / f"{MaskedPolicy.ADAPTER}.safetensors").exists() or (directory / MaskedPolicy.ADAPTER).is_dir()


def load_nlpo(base: str, checkpoint: str | Path, quantization: str | None = None) -> NucleusPolicy:
    """The policy of an NLPO checkpoint on `base`, with its masked policy and top_p, sampling as it trained."""
    checkpoint = Path(checkpoint)
    top_p = json.loads((checkpoint / "ppo_state.json").read_text())["config"]["nlpo_top_p"]
    policy = load_policy(base, adapter=str(checkpoint), quantization=quantization)
    masked = MaskedPolicy(policy.model, top_p, policy.is_lora, policy.tokenizer.eos_token_id)
    masked.load(checkpoint)
    policy.model.eval()
    return NucleusPolicy(policy.model, policy.tokenizer, f"NLPO({policy.name})", masked=masked)
