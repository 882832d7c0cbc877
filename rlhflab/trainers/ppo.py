"""PPO for language models, with a KL penalty to the reference policy.

Our own implementation (TRL 1.16 removed its PPOTrainer), following Ziegler et al. 2019
("Fine-Tuning Language Models from Human Preferences"), Ouyang et al. 2022 (InstructGPT) and
Huang et al. 2022/2024 ("The N Implementation Details of RLHF with PPO"). One PPO step is:

    rollout  1. sample responses to a batch of prompts (KV cache, temperature, no top-k/top-p)
             2. truncate each response after its first EOS
             3. log-probs of the policy and of the reference (adapters off), values of the value head
             4. score the responses with the reward model; penalise responses with no EOS
             5. per-token reward = -kl_coef * KL (k1 or k3), plus the score on the last real token
             6. (optional) whiten the rewards; advantages by GAE, then whiten them
    update   7. several epochs over minibatches: clipped policy loss, clipped value loss
                (+ ptx: the pretraining log-likelihood term of InstructGPT's objective, eq. 2)
             8. adapt kl_coef toward the target KL (Ziegler et al. 2019, eq. 2)

NLPO (Ramamurthy et al. 2023, "Is Reinforcement Learning (Not) for Natural Language Processing?",
RL4LMs) is an option of this PPO, `nlpo_top_p`: step 1 samples only within the top-p nucleus of a
masked policy (a frozen copy of the policy, synced every `nlpo_sync_every` steps), and steps 3 and
7 score the policy on that same masked distribution, with the masks the sampler applied. The masked
policy and its sampling live in `rlhflab.trainers.nlpo`, and the tensor maths of steps 2 and 5-8 (GAE,
whitening, the KL estimators and controller) in `rlhflab.trainers.ppo_math`.

Memory: with LoRA one base model, optionally 4-bit, serves every role: the policy is
its adapter plus a value head, the reference is the base with adapters disabled, and the reward
model can be a second adapter with its score head on the same base (`SharedReward`).
Everything runs through Accelerate, so `accelerate launch` spreads rollouts over processes.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import LogitsProcessorList

from .live import LivePlot
from .models import Policy, disable_dropout, left_padded_positions, precision_for, sample_tokens, token_logprobs
from .nlpo import MaskedPolicy, NucleusSampling, masked_logits
from .ppo_math import (AdaptiveKLController, compute_gae, entropy_of, kl_per_token, masked_mean, masked_var,
                       masked_whiten, truncate_after_eos)
from .reward import ADAPTER_WEIGHTS, checked_scores, score_weight
from .reward_functions import as_reward
from .training import refuse_to_train_quantized

__all__ = ["PPOConfig", "PolicyWithValue", "PPOResult", "PPOTrainer", "train_ppo"]

VALUE_ADAPTER = "value"  # the adapter name of PPOConfig(value_model='adapter')


@dataclass
class PPOConfig:
    """Settings of one PPO run (sizes are per process)."""

    output_dir: str = "runs/ppo"  # checkpoints (peft adapter + value head + state) and metrics
    steps: int = 100  # PPO steps; each is one rollout batch and its update
    batch_size: int = 16  # prompts (and so responses) per rollout
    mini_batch_size: int = 8  # responses per gradient step
    gradient_accumulation_steps: int = 1  # minibatches whose gradients add up before a step
    rollout_batch_size: int = 16  # responses per generate / forward call in the rollout (memory, not maths)
    ppo_epochs: int = 4  # passes over each rollout batch
    response_length: int = 32  # most tokens sampled per response
    temperature: float = 1.0  # sampling temperature, also applied to the log-probs
    learning_rate: float = 1e-4  # AdamW rate for adapter and value head (~1e-5 for full weights); see kl_coef
    lr_schedule: str = "constant"  # 'constant', or 'linear': decays to 0 over `steps` (Huang et al. 2024)
    adam_eps: float = 1e-5  # AdamW epsilon; 1e-5 as in lm-human-preferences (Huang et al. 2024, detail 5)
    max_prompt_length: int = 256  # prompt tokens kept (the chat prompt's end); longer prompts lose their start
    max_grad_norm: float = 1.0  # gradient clipping
    value_model: str = "head"  # 'head': a value head on the policy's trunk; 'adapter': its own LoRA adapter
    # on the same base, initialised from the reward model (Huang et al. 2024), at one more forward pass
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: far less memory, ~1.3x time
    # KL penalty
    # initial beta of the per-token KL penalty. With learning_rate, chosen by benchmarks/ppo_details.py --study
    # defaults (docs/results.md): the one pair of three that kept KL to SFT under 2 nats in every seed
    kl_coef: float = 0.2
    adaptive_kl: bool = True  # adapt beta toward target_kl (False: beta stays fixed)
    target_kl: float = 3.0  # target KL per response in nats (Ziegler et al. used 6 for text)
    kl_horizon: int = 10_000  # responses over which beta adapts (Ziegler et al. 2019)
    kl_estimator: str = "k1"  # 'k1' (log-ratio) or 'k3' ((r - 1) - log r, low variance; Schulman 2020)
    # PPO losses
    cliprange: float = 0.2  # policy ratio clip
    cliprange_value: float = 0.2  # value prediction clip
    vf_coef: float = 0.1  # weight of the value loss
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    whiten_rewards: bool = False  # whiten per-token rewards before GAE
    missing_eos_penalty: float = 1.0  # subtracted from the score of a response with no EOS
    ptx_coef: float = 0.0  # weight of the pretraining log-likelihood term (InstructGPT's gamma)
    # NLPO (Ramamurthy et al. 2023, RL4LMs): act only within the top-p tokens of a masked policy, a frozen
    # copy of the policy synced every nlpo_sync_every steps (checkpointed: a resumed run keeps its mask)
    nlpo_top_p: float | None = None  # None: plain PPO; RL4LMs used 0.9
    nlpo_sync_every: int = 5  # steps between syncs of the masked policy (RL4LMs: 5)
    # bookkeeping
    sample_every: int = 10  # show a prompt / response / reward table every this many steps
    save_every: int = 25  # checkpoint every this many steps (and at the end or on interrupt)
    report_to: str | list[str] = "none"  # "tensorboard": the logged metrics as event files under output_dir/runs/
    seed: int = 0  # seeds prompt order, sampling and minibatch order
    minibatches: int = field(init=False)  # derived: minibatches per epoch

    def __post_init__(self):
        if self.batch_size % self.mini_batch_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of mini_batch_size "
                             f"({self.mini_batch_size})")
        if (self.batch_size // self.mini_batch_size) % self.gradient_accumulation_steps:
            raise ValueError(f"the {self.batch_size // self.mini_batch_size} minibatches "
                             "of an epoch must be a multiple "
                             f"of gradient_accumulation_steps ({self.gradient_accumulation_steps}); otherwise "
                             "gradients of one epoch would be applied with the next one's")
        if self.value_model not in ("head", "adapter"):
            raise ValueError(f"value_model must be 'head' or 'adapter', not {self.value_model!r}")
        if self.lr_schedule not in ("constant", "linear"):
            raise ValueError(f"lr_schedule must be 'constant' or 'linear', not {self.lr_schedule!r}")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', not {self.kl_estimator!r}")
        if self.nlpo_top_p is not None and not 0 < self.nlpo_top_p <= 1:
            raise ValueError(f"nlpo_top_p must be in (0, 1] (RL4LMs used 0.9), or None for plain PPO; "
                             f"not {self.nlpo_top_p}")
        if self.nlpo_sync_every < 1:
            raise ValueError(f"nlpo_sync_every must be at least 1 step, not {self.nlpo_sync_every}")
        self.minibatches = self.batch_size // self.mini_batch_size


# ---------------------------------------------------------------------------------------------
# Models: the policy with its value head (rewards live in rlhflab.trainers.reward)
# ---------------------------------------------------------------------------------------------

class PolicyWithValue(torch.nn.Module):
    """The policy LM plus a scalar value head, on the policy's last hidden state or on that of its
    own value adapter.

    Args:
        model: the policy LM (a peft model when `value_adapter` is given).
        value_adapter: the name of a trainable LoRA adapter of `model` that computes the values
            (None: the value head reads the policy's own hidden states).
        value_head_init: (1, H) starting weight of the value head (a reward model's score head);
            zeros when None.
    """

    def __init__(self, model, value_adapter: str | None = None, value_head_init: torch.Tensor | None = None):
        super().__init__()
        self.model, self.value_adapter = model, value_adapter
        hidden = model.config.get_text_config().hidden_size
        self.value_head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.value_head.bias)
        with torch.no_grad():
            self.value_head.weight.copy_(value_head_init if value_head_init is not None else torch.zeros(1, hidden))
        self.value_head.to(next(model.parameters()).device)

    def forward(self, input_ids, attention_mask, query_len: int):
        """Logits and values at the positions that predict the response tokens (query_len onward).

        The LM head runs on those positions only (`logits_to_keep`): the prompt's logits would be
        (B, Q, V) of memory that nothing reads.
        """
        response_len = input_ids.shape[1] - query_len
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                      position_ids=left_padded_positions(attention_mask))
        # the hidden states come from the pass that feeds the value head: the policy's own, or the value adapter's
        out = self.model(**inputs, logits_to_keep=response_len + 1, output_hidden_states=self.value_adapter is None)
        if self.value_adapter is None:
            hidden = out.hidden_states[-1]  # (B, T, H)
        else:
            self.model.set_adapter(self.value_adapter)
            try:
                hidden = self.model(**inputs, logits_to_keep=1, output_hidden_states=True).hidden_states[-1]
            finally:
                self.model.set_adapter("default")
                # set_adapter freezes the inactive adapter, and autograd gives no gradient to a frozen leaf
                self.model.set_requires_grad(self.value_adapter, requires_grad=True)
        values = self.value_head(hidden[:, query_len - 1: -1].to(self.value_head.weight.dtype)).squeeze(-1)  # (B, R)
        return out.logits[:, :-1], values  # (B, R, V), (B, R)


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------

@dataclass
class PPOResult:
    step: int  # PPO steps completed in all (resumed runs count from their checkpoint)
    history: list[dict]  # one metrics dict per step of this run
    output_dir: Path  # holds checkpoint/ (peft adapter, value head, optimizer, state)
    interrupted: bool  # True when a KeyboardInterrupt stopped the run (a checkpoint was saved)


class PPOTrainer:
    """Runs PPO on a policy against a reward; see the module docstring for the algorithm.

    Args:
        policy: from `load_policy`, usually `load_policy(base, lora=True, adapter=sft_dir)` so the
            trainable adapter starts from SFT.
        prompts: the prompts to sample from (a list of strings).
        reward: a `RewardModel` or `SharedReward` (normalised), the gold annotator, a function
            f(prompts, responses) -> list[float], or a `WeightedReward` of these
            (`rlhflab.trainers.reward_functions`).
        config: PPOConfig.
        gold: optional GoldAnnotator; its mean score is logged next to the proxy reward.
        ptx_texts: demonstration or pretraining texts for the ptx term (needs ptx_coef > 0).
        live: a LivePlot; by default one writing to `output_dir`.
        value_from: the reward model's directory, for value_model='adapter': the value adapter
            starts as a copy of it (Huang et al. 2024 initialise the value model from the reward model).
        reference_adapter: the SFT adapter directory; the reference is then the base plus that
            adapter, frozen. Without it the reference is the base with adapters off (LoRA) or a
            frozen copy of the starting weights (full fine-tuning).

    Examples:
        >>> trainer = PPOTrainer(policy, prompts, reward, PPOConfig(steps=50), gold=gold)
        >>> result = trainer.train()
    """

    def __init__(self, policy: Policy, prompts: list[str], reward, config: PPOConfig | None = None, *,
                 gold=None, ptx_texts: list[str] | None = None, live: LivePlot | None = None,
                 reference_adapter: str | Path | None = None, value_from: str | Path | None = None):
        self.config = config = config or PPOConfig()
        if not prompts:
            raise ValueError("PPO needs at least one prompt")
        if config.ptx_coef > 0 and not ptx_texts:
            raise ValueError("ptx_coef > 0 needs ptx_texts (demonstrations or pretraining text)")
        refuse_to_train_quantized(policy.model, policy.is_lora, "load_policy")
        self.policy, self.reward, self.gold = policy, as_reward(reward), gold
        self.prompts, self.ptx_texts = list(prompts), ptx_texts or []
        self.output_dir = Path(config.output_dir)
        self.accelerator = Accelerator(cpu=policy.device.type == "cpu",
                                       mixed_precision=precision_for(policy.device).mixed_precision,
                                       gradient_accumulation_steps=config.gradient_accumulation_steps)
        self.live = live or (LivePlot(self.output_dir, title="PPO", layout="ppo") if self.accelerator.is_main_process
                             else LivePlot(None, widgets=False))
        self.live.track(config.report_to)
        self.kl_ctl = AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
        if config.adaptive_kl:
            self.live.reference("objective/kl", config.target_kl, "target KL")
        # Full fine-tuning needs its own frozen reference; LoRA gets it by switching adapters off.
        self.reference = None if policy.is_lora else copy.deepcopy(policy.model).requires_grad_(False).eval()
        self.reference_adapter = None
        if reference_adapter is not None:
            if not policy.is_lora:
                raise ValueError("reference_adapter needs a LoRA policy: load_policy(..., lora=True, adapter=...)")
            policy.model.load_adapter(str(reference_adapter), adapter_name="reference", is_trainable=False)
            self.reference_adapter = "reference"
        if config.gradient_checkpointing:  # on in train mode only, so sampling keeps its KV cache (the name
            # is deprecated in transformers 5 but is the one every 5.x release has)
            backbone = policy.model.get_base_model() if policy.is_lora else policy.model
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.masked_policy = (MaskedPolicy(policy.model, config.nlpo_top_p, policy.is_lora,
                                           policy.tokenizer.eos_token_id)
                              if config.nlpo_top_p is not None else None)
        module = self.value_module(policy, value_from)
        disable_dropout(policy.model)  # after every adapter is on (reference, NLPO's mask, value): each has its own
        optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=config.learning_rate,
                                      eps=config.adam_eps)
        self.module, self.optimizer = self.accelerator.prepare(module, optimizer)
        self.step = 0
        self._rng = random.Random(f"{config.seed}:{self.accelerator.process_index}")

    def value_module(self, policy: Policy, value_from: str | Path | None) -> PolicyWithValue:
        """The policy with its value head; with value_model='adapter', a value adapter copied from
        the reward model at `value_from` (its LoRA weights, and its score head as the value head)."""
        if self.config.value_model == "head":
            return PolicyWithValue(policy.model)
        if value_from is None or not policy.is_lora:
            raise ValueError("value_model='adapter' needs a LoRA policy (load_policy(..., lora=True)) and "
                             "value_from=the reward model's directory, whose adapter the value adapter starts from")
        policy.model.load_adapter(str(value_from), adapter_name=VALUE_ADAPTER, is_trainable=True)
        policy.model.set_requires_grad(VALUE_ADAPTER, requires_grad=True)
        return PolicyWithValue(policy.model, VALUE_ADAPTER, score_weight(value_from).to(policy.device))

    @property
    def unwrapped(self) -> PolicyWithValue:
        return self.accelerator.unwrap_model(self.module)

    # -- rollout ---------------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> dict:
        """Steps 1-6 for a batch of prompts, `rollout_batch_size` responses at a time."""
        c, tokenizer, device = self.config, self.policy.tokenizer, self.accelerator.device
        model = self.unwrapped.model
        model.eval()
        prompt_ids = [tokenizer(self.policy.chat_prompt(p),
                                add_special_tokens=False)["input_ids"][-c.max_prompt_length:]
                      for p in prompts]  # cut from the left: the turn's end and the reply's start stay
        queries = tokenizer.pad({"input_ids": prompt_ids}, return_tensors="pt", padding_side="left").to(device)
        query_len = queries["input_ids"].shape[1]  # one left-padded width for every micro-batch
        parts = []
        for rows in torch.arange(len(prompts), device=device).split(c.rollout_batch_size):
            query = {k: v[rows] for k, v in queries.items()}
            # 1. sample with the KV cache, from softmax(logits / T) only (NLPO: within the masked policy's nucleus)
            sampling = NucleusSampling(self.masked_policy, query["attention_mask"]) if self.masked_policy else None
            generated = sample_tokens(model, tokenizer, query, c.response_length, c.temperature,
                                      logits_processor=LogitsProcessorList([sampling]) if sampling else None)
            raw_responses = F.pad(generated[:, query_len:], (0, c.response_length - generated.shape[1] + query_len),
                                  value=tokenizer.pad_token_id)
            # 2. truncate after the first EOS
            responses, response_mask, has_eos = truncate_after_eos(raw_responses, tokenizer.eos_token_id,
                                                                   tokenizer.pad_token_id)  # (b, R)
            input_ids = torch.cat([query["input_ids"], responses], dim=1)  # (b, Q + R)
            attention_mask = torch.cat([query["attention_mask"], response_mask.long()], dim=1)
            # 3. policy (NLPO: within the nucleus) and reference log-probs, values
            nucleus = sampling.masks(c.response_length, response_mask) if sampling else None
            logits, values = self.unwrapped(input_ids, attention_mask, query_len)  # (b, R, V), (b, R)
            logits = masked_logits(logits, nucleus)
            logprobs = token_logprobs(logits, responses, c.temperature)
            entropy = entropy_of(logits, c.temperature)
            del logits
            ref_logprobs = token_logprobs(self.reference_logits(input_ids, attention_mask, query_len), responses,
                                          c.temperature)
            parts.append(dict(input_ids=input_ids, attention_mask=attention_mask, responses=responses,
                              mask=response_mask, has_eos=has_eos, logprobs=logprobs, ref_logprobs=ref_logprobs,
                              values=values, entropy=entropy, **({"nucleus": nucleus} if sampling else {})))
        batch = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
        responses, response_mask, has_eos = batch["responses"], batch["mask"], batch["has_eos"]
        # 4. score the decoded responses; penalise no EOS
        decoded = [t.strip() for t in tokenizer.batch_decode(responses, skip_special_tokens=True)]
        scores = checked_scores(self.reward.score(prompts, decoded), len(prompts), self.reward).to(device)
        scores = scores - c.missing_eos_penalty * (~has_eos).float()
        # 5. per-token KL penalty, plus the score on the last real token
        kl = kl_per_token(batch["logprobs"], batch["ref_logprobs"], c.kl_estimator) * response_mask
        rewards = -self.kl_ctl.value * kl
        last = (response_mask.sum(1) - 1).long()
        rewards[torch.arange(len(prompts)), last] += scores
        # 6. whiten rewards (optional), GAE, whiten advantages
        if c.whiten_rewards:
            rewards = masked_whiten(rewards, response_mask, shift_mean=False)
        advantages, returns = compute_gae(rewards, batch["values"], response_mask, c.gamma, c.lam)
        advantages = masked_whiten(advantages, response_mask)
        model.train()
        batch.update(advantages=advantages, returns=returns, scores=scores, kl=kl, decoded=decoded, query_len=query_len,
                     entropy=masked_mean(batch["entropy"], response_mask),
                     k1=(batch["logprobs"] - batch["ref_logprobs"]) * response_mask)
        return batch

    def reference_logits(self, input_ids, attention_mask, query_len: int) -> torch.Tensor:
        """The reference policy's logits at the response positions: (B, R, V), under the same autocast as the
        policy's forward pass (Accelerate wraps only the prepared module's), so that identical weights give
        identical log-probs and a KL of 0 on a bf16 or fp16 GPU too."""
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                      position_ids=left_padded_positions(attention_mask),
                      logits_to_keep=input_ids.shape[1] - query_len + 1)
        with self.accelerator.autocast():
            if self.reference is not None:
                return self.reference(**kwargs).logits[:, :-1]
            if self.reference_adapter is not None:  # routed per sample; the model is in eval mode here
                names = [self.reference_adapter] * len(input_ids)
                return self.unwrapped.model(**kwargs, adapter_names=names).logits[:, :-1]
            with self.unwrapped.model.disable_adapter():
                return self.unwrapped.model(**kwargs).logits[:, :-1]

    # -- update ----------------------------------------------------------------------------------

    def update(self, batch: dict) -> dict:
        c = self.config
        for group in self.optimizer.param_groups:  # from the step count, so a resumed run continues the decay
            group["lr"] = c.learning_rate * (1 - self.step / c.steps if c.lr_schedule == "linear" else 1.0)
        stats = {k: [] for k in ("pg_loss", "vf_loss", "approxkl", "clipfrac", "vf_clipfrac", "ratio", "ptx_loss")}
        q = batch["query_len"]
        for _ in range(c.ppo_epochs):
            order = torch.randperm(c.batch_size, generator=torch.Generator().manual_seed(self._rng.randrange(2**31)))
            for start in range(0, c.batch_size, c.mini_batch_size):
                idx = order[start: start + c.mini_batch_size]
                mb = {k: batch[k][idx] for k in ("input_ids", "attention_mask", "responses", "mask", "logprobs",
                                                  "values", "advantages", "returns")}
                nucleus = batch["nucleus"][idx] if "nucleus" in batch else None
                with self.accelerator.accumulate(self.module):
                    logits, vpred = self.module(mb["input_ids"], mb["attention_mask"], q)
                    new_logprobs = token_logprobs(masked_logits(logits, nucleus), mb["responses"], c.temperature)
                    mask = mb["mask"]
                    # clipped value loss
                    vclipped = mb["values"] + (vpred - mb["values"]).clamp(-c.cliprange_value, c.cliprange_value)
                    vf_losses = torch.max((vpred - mb["returns"]) ** 2, (vclipped - mb["returns"]) ** 2)
                    vf_loss = 0.5 * masked_mean(vf_losses, mask)
                    # clipped policy loss
                    log_ratio = (new_logprobs - mb["logprobs"]) * mask
                    ratio = torch.exp(log_ratio)
                    pg_losses = torch.max(-mb["advantages"] * ratio,
                                          -mb["advantages"] * ratio.clamp(1 - c.cliprange, 1 + c.cliprange))
                    pg_loss = masked_mean(pg_losses, mask)
                    loss = pg_loss + c.vf_coef * vf_loss
                    if c.ptx_coef > 0:
                        ptx_loss = self.ptx_loss()
                        loss = loss + c.ptx_coef * ptx_loss
                        stats["ptx_loss"].append(ptx_loss.item())
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"PPO loss became {loss.item()} at step {self.step + 1}; nothing was applied, and the "
                            f"last checkpoint in {self.output_dir / 'checkpoint'} is intact. Lower learning_rate, "
                            "raise kl_coef, or check the reward model's scores for inf/nan")
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients:
                        self.accelerator.clip_grad_norm_(self.module.parameters(), c.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                with torch.no_grad():
                    stats["pg_loss"].append(pg_loss.item())
                    stats["vf_loss"].append(vf_loss.item())
                    stats["approxkl"].append((0.5 * masked_mean(log_ratio ** 2, mask)).item())
                    stats["clipfrac"].append(masked_mean(((ratio - 1).abs() > c.cliprange).float(), mask).item())
                    stats["vf_clipfrac"].append(masked_mean(((vpred - mb["values"]).abs() > c.cliprange_value).float(),
                                                            mask).item())
                    stats["ratio"].append(masked_mean(ratio, mask).item())
        return {k: sum(v) / len(v) for k, v in stats.items() if v}

    def ptx_loss(self) -> torch.Tensor:
        """Negative log-likelihood of a few ptx texts (InstructGPT's pretraining mix)."""
        tokenizer = self.policy.tokenizer
        texts = self._rng.sample(self.ptx_texts, min(self.config.mini_batch_size, len(self.ptx_texts)))
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=128,
                          add_special_tokens=False).to(self.accelerator.device)
        logits, _ = self.module(batch["input_ids"], batch["attention_mask"], 1)  # (B, T - 1, V): tokens 1 onward
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)

    # -- the loop --------------------------------------------------------------------------------

    def train(self) -> PPOResult:
        c = self.config
        history: list[dict] = []
        interrupted = False
        progress = tqdm(total=c.steps, initial=self.step, desc="PPO", disable=not self.accelerator.is_main_process)
        try:
            while self.step < c.steps:
                if self.masked_policy and self.step % c.nlpo_sync_every == 0:
                    self.masked_policy.sync()
                prompts = [self._rng.choice(self.prompts) for _ in range(c.batch_size)]
                torch.manual_seed(self._rng.randrange(2**31))  # sampling follows the seed, resumed runs too
                batch = self.rollout(prompts)
                losses = self.update(batch)
                self.step += 1
                metrics = self.metrics(batch, losses, prompts)
                self.kl_ctl.update(metrics["objective/kl"], c.batch_size * self.accelerator.num_processes)
                history.append(metrics)
                self.live.log(self.step, metrics)
                if self.step % c.sample_every == 0 or self.step == 1:
                    self.live.samples(self.step, self.sample_table(prompts, batch))
                if self.step % c.save_every == 0:
                    self.save_checkpoint()
                progress.update(1)
        except KeyboardInterrupt:
            interrupted = True  # a notebook interrupt: keep what was learned, stop cleanly
        progress.close()
        self.save_checkpoint()
        self.live.close()
        return PPOResult(self.step, history, self.output_dir, interrupted)

    def sample_table(self, prompts: list[str], batch: dict, rows: int = 8) -> pd.DataFrame:
        """What the policy says now: prompt, response, proxy reward and (when known) gold score."""
        table = pd.DataFrame({"prompt": prompts, "response": batch["decoded"], "reward": batch["scores"].tolist()})
        table = table.head(rows)
        if self.gold is not None:
            table["gold"] = [self.gold.score(p, r) for p, r in zip(table["prompt"], table["response"])]
        return table

    def metrics(self, batch: dict, losses: dict, prompts: list[str]) -> dict:
        mask, returns, values = batch["mask"], batch["returns"], batch["values"]
        explained = 1 - masked_var(returns - values, mask) / masked_var(returns, mask).clamp(min=1e-8)
        local = {
            "objective/kl": batch["k1"].sum(1).mean(),
            "objective/kl_k3": kl_per_token(batch["logprobs"], batch["ref_logprobs"], "k3").mul(mask).sum(1).mean(),
            "objective/scores": batch["scores"].mean(),
            "objective/rlhf_reward": (batch["scores"] - self.kl_ctl.value * batch["kl"].sum(1)).mean(),
            "objective/entropy": batch["entropy"],
            "val/response_length": mask.sum(1).mean(),
            "val/num_eos_tokens": batch["has_eos"].float().sum(),
            "val/eos_rate": batch["has_eos"].float().mean(),
            "val/explained_variance": explained,
        }
        if self.gold is not None:
            local["objective/gold_scores"] = torch.tensor(
                [self.gold.score(p, r) for p, r in zip(prompts, batch["decoded"])]).float().mean()
        names = list(local)
        averaged = self.accelerator.reduce(torch.stack([local[n].float().to(self.accelerator.device) for n in names]),
                                           reduction="mean")
        out = {n: v.item() for n, v in zip(names, averaged)}
        out.update({
            "objective/kl_coef": self.kl_ctl.value,
            "policy/approxkl_avg": losses["approxkl"], "policy/clipfrac_avg": losses["clipfrac"],
            "loss/policy_avg": losses["pg_loss"], "loss/value_avg": losses["vf_loss"],
            "val/clipfrac_avg": losses["vf_clipfrac"], "val/ratio": losses["ratio"],
        })
        if "ptx_loss" in losses:
            out["loss/ptx_avg"] = losses["ptx_loss"]
        return out

    # -- checkpoints -----------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """peft adapter (or full model) + value head (safetensors) + optimizer + PPO state."""
        path = self.output_dir / "checkpoint"
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            path.mkdir(parents=True, exist_ok=True)
            module = self.unwrapped
            if self.policy.is_lora:
                module.model.save_pretrained(path, selected_adapters=["default", *filter(None, [module.value_adapter])])
            else:
                module.model.save_pretrained(path, safe_serialization=True)
            save_file({k: v.contiguous() for k, v in module.value_head.state_dict().items()},
                      path / "value_head.safetensors")
            if self.masked_policy is not None:
                self.masked_policy.save(path)
            torch.save(self.optimizer.state_dict(), path / "optimizer.pt")
            state = {"step": self.step, "kl_coef": self.kl_ctl.value, "config": asdict(self.config)}
            (path / "ppo_state.json").write_text(json.dumps(state, indent=2) + "\n")
        self.accelerator.wait_for_everyone()
        return path

    def resume(self, checkpoint: str | Path) -> None:
        """Continue from a checkpoint: weights, value head, NLPO's mask, optimizer, kl_coef and the step count."""
        from peft import set_peft_model_state_dict

        checkpoint = Path(checkpoint)
        state = json.loads((checkpoint / "ppo_state.json").read_text())
        module = self.unwrapped
        if self.policy.is_lora:
            set_peft_model_state_dict(module.model, load_file(checkpoint / "adapter_model.safetensors"),
                                      adapter_name="default")
        else:
            weights = {}
            for shard in checkpoint.glob("model*.safetensors"):
                weights.update(load_file(shard))
            module.model.load_state_dict(weights, strict=False)
        if module.value_adapter is not None:  # peft saves a second adapter in a folder of its name
            set_peft_model_state_dict(module.model, load_file(checkpoint / module.value_adapter / ADAPTER_WEIGHTS),
                                      adapter_name=module.value_adapter)
        module.value_head.load_state_dict(load_file(checkpoint / "value_head.safetensors"))
        if self.masked_policy is not None:
            self.masked_policy.load(checkpoint)
        self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        self.step, self.kl_ctl.value = state["step"], state["kl_coef"]
        self._rng = random.Random(f"{self.config.seed}:{self.accelerator.process_index}:{self.step}")


def train_ppo(policy: Policy, prompts: list[str], reward, config: PPOConfig | None = None, *,
              gold=None, ptx_texts=None, live=None, reference_adapter=None, value_from=None,
              resume_from: str | Path | None = None) -> PPOResult:
    """Build a PPOTrainer, resume it if asked, and train. See `PPOTrainer`."""
    trainer = PPOTrainer(policy, prompts, reward, config, gold=gold, ptx_texts=ptx_texts, live=live,
                         reference_adapter=reference_adapter, value_from=value_from)
    if resume_from is not None:
        trainer.resume(resume_from)
    return trainer.train()

