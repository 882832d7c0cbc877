"""Implicit Language Q-Learning (Snell et al. 2022): offline RL from logged responses and their rewards.

ILQL learns from a fixed set of (prompt, response, reward) rows and samples nothing while it trains.
CarperAI's trlX shipped it next to PPO; trlX pins torch 2.0.1 and transformers 4.32, so this is our
own, following trlX's `modeling_ilql.py` in its heads, losses and defaults.

Model: one base with a LoRA adapter on the trunk, which every head reads (4-bit optional)
    LM          the policy's own head, kept close to the data by behaviour cloning (AWAC)
    V(s)        a value head: hidden -> 2 hidden -> 1
    Q1, Q2(s,.) twin Q heads: hidden -> 2 hidden -> vocabulary, a value for every next token
    targets     Polyak averages of Q1 and Q2, moved toward them every `target_sync_every` steps

Losses, over response tokens only: action a_t is the token taken in state s_t (the transcript up to
it); the reward r sits on the last token, and the state after it is terminal (V = 0).

    Q      sum_i mean (Q_i(s_t, a_t) - [r_t + gamma V(s_t+1)])^2            (V's target detached)
    V      expectile regression toward min_i targetQ_i(s_t, a_t): mean |tau - 1(u < 0)| u^2,
           u = targetQ - V; tau > 0.5 leans V toward the better actions (Kostrikov et al. 2021)
    CQL    sum_i cross-entropy of Q_i(s_t, .) as logits against a_t: lowers the Q of tokens the
           data never took (conservative Q-learning, Kumar et al. 2020)
    AWAC   the LM's cross-entropy on a_t, weighted by exp(awac_beta (targetQ - V)); trlX's default
           awac_beta = 0 makes it plain behaviour cloning
    total  Q + V + cql_scale CQL + awac_scale AWAC

Decoding (Snell et al. 2022, eq. 5): sample from softmax([log pi(a|s) + beta (min_i targetQ_i(s, a)
- V(s))] restricted to its top-k, / temperature). beta = 0 is the behaviour-cloned LM itself. The
log-probs that KL to SFT is measured with come from the same distribution (`ILQLPolicy`).

Rewards: from a `LabelStore`, every chosen or thumbs-up response gets +1 and every rejected or
thumbs-down one -1, as trlX's HH-RLHF example did with HH's pairs; rows may carry a `reward` column
instead, or a reward (callable or reward model) scores them. Rewards are standardised to mean 0,
std 1, as trlX did.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..labeling.exports import kto_rows
from ..labeling.records import COMPARISON_COLUMNS, REPLIES, as_rows
from ..labeling.store import LabelStore
from .live import LivePlot
from .models import (
    Policy,
    cache_keyword,
    chat_prompt,
    disable_dropout,
    left_padded_positions,
    load_policy,
    precision_for,
    transcript_ids,
)
from .reward import checked_scores
from .reward_functions import as_reward

__all__ = ["HEADS_WEIGHTS", "ILQLConfig", "ILQLResult", "q_loss", "expectile_loss", "cql_loss", "awac_loss",
           "decoding_logits", "polyak_update", "ILQLHeads", "ILQLPolicy", "value_accuracy", "ilql_rows",
           "standardised", "tokenized", "collate", "ILQLModule", "train_ilql", "load_ilql"]

HEADS_WEIGHTS = "ilql_heads.safetensors"  # next to the adapter: a directory holding it is an ILQL policy
SETTINGS = "ilql.json"


@dataclass
class ILQLConfig:
    """Settings of one ILQL run. trlX's defaults were tau 0.7, gamma 0.99, CQL 0.1, AWAC 1, Polyak
    0.001 every 5 steps and decode beta 1 for runs of thousands of steps; a lab run is a few hundred,
    so the targets follow faster here."""

    output_dir: str = "runs/ilql"  # the adapter, the heads (safetensors) and metrics
    steps: int = 200  # optimizer steps
    batch_size: int = 16  # responses per step
    learning_rate: float = 5e-4  # AdamW rate of the LoRA adapter and the heads
    max_length: int = 256  # tokens per prompt + response; longer transcripts lose the prompt's start
    max_grad_norm: float = 1.0  # gradient clipping
    # -- the ILQL objective
    tau: float = 0.7  # expectile of V: 0.5 is the mean of Q, 1 its maximum
    gamma: float = 0.99  # discount per token
    cql_scale: float = 0.1  # weight of the CQL term
    awac_scale: float = 1.0  # weight of the behaviour-cloning (AWAC) term
    awac_beta: float = 0.0  # AWAC's advantage weighting exp(awac_beta * A); 0: plain behaviour cloning
    polyak: float = 0.05  # target <- polyak * Q + (1 - polyak) * target
    target_sync_every: int = 1  # steps between target updates
    # -- decoding
    beta: float = 1.0  # weight of the advantage Q - V added to the LM's log-probs
    top_k: int = 20  # tokens kept at each step (0: all)
    # -- bookkeeping
    logging_steps: int = 5  # log (and plot) every this many steps
    seed: int = 0  # seeds the heads' initialisation and the batch order
    report_to: str | list[str] = "none"  # "tensorboard": the logged metrics as event files under output_dir/runs/

    def __post_init__(self):
        if not 0 < self.tau < 1:
            raise ValueError(f"tau is an expectile and must lie in (0, 1), not {self.tau}")
        if not 0 < self.polyak <= 1:
            raise ValueError(f"polyak must lie in (0, 1], not {self.polyak}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 (all tokens) or more, not {self.top_k}")


@dataclass
class ILQLResult:
    metrics: dict  # the last logged losses and values, and 'train/runtime_s'
    output_dir: Path  # adapter + heads; `load_ilql(base, output_dir)` or `stages.load` reads it
    history: list[dict]  # one metrics dict per logged step


# ---------------------------------------------------------------------------------------------
# The losses, on flat tensors of the N response tokens of a batch (tests check them against loops)
# ---------------------------------------------------------------------------------------------

def q_loss(q_taken: list[torch.Tensor], rewards: torch.Tensor, next_values: torch.Tensor, gamma: float) -> torch.Tensor:
    """sum over the Q heads of the mean squared error to r + gamma V(s'); (N,) each, V(s') 0 after the end."""
    target = (rewards + gamma * next_values).detach()
    return sum(((q - target) ** 2).mean() for q in q_taken)


def expectile_loss(target_q: torch.Tensor, values: torch.Tensor, tau: float) -> torch.Tensor:
    """mean |tau - 1(u < 0)| u^2 with u = targetQ - V (targetQ detached): (N,) each."""
    u = target_q.detach() - values
    return (torch.where(u < 0, 1 - tau, tau) * u ** 2).mean()


def cql_loss(q_all: list[torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
    """sum over the Q heads of the cross-entropy of Q(s, .) (N, V) as logits against the taken tokens (N,)."""
    return sum(F.cross_entropy(q.float(), actions) for q in q_all)


def awac_loss(lm_logits: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor, beta: float) -> torch.Tensor:
    """mean of the LM's cross-entropy (N, V) -> (N,) weighted by exp(beta * advantage), the weight detached."""
    weights = torch.exp(beta * advantages.detach())
    return (F.cross_entropy(lm_logits.float(), actions, reduction="none") * weights).mean()


def decoding_logits(lm_logits: torch.Tensor, q: torch.Tensor, v: torch.Tensor, beta: float, top_k: int,
                    scored: torch.Tensor | None = None) -> torch.Tensor:
    """log pi + beta (Q - V), with every token outside the top k at -inf: (..., V) from (..., V), (..., V), (..., 1).

    Sampling draws from softmax(this / T); `ILQLPolicy.response_logprobs` scores with the same logits.
    `scored` (...,) tokens stay in the kept set whatever their rank: a sampled token is in the top k
    anyway, and the EOS that scoring appends to a reply cut at max_new_tokens gets a finite log-prob
    (in a k + 1 token distribution) instead of an infinite KL.
    """
    logits = F.log_softmax(lm_logits.float(), dim=-1) + beta * (q.float() - v.float())
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        outside = logits < kth
        if scored is not None:
            outside.scatter_(-1, scored.unsqueeze(-1), False)
        logits = logits.masked_fill(outside, float("-inf"))
    return logits


def polyak_update(targets: torch.nn.Module, online: torch.nn.Module, rate: float) -> None:
    with torch.no_grad():
        for target, param in zip(targets.parameters(), online.parameters()):
            target.mul_(1 - rate).add_(param, alpha=rate)


# ---------------------------------------------------------------------------------------------
# The heads, and the policy that decodes with them
# ---------------------------------------------------------------------------------------------

def _head(hidden: int, out: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(hidden, 2 * hidden), torch.nn.ReLU(), torch.nn.Linear(2 * hidden, out))


class ILQLHeads(torch.nn.Module):
    """V, twin Q heads and their Polyak-averaged targets, reading the trunk's last hidden state.

    Memory: each Q head holds 2 hidden x vocabulary weights (SmolLM2-135M: 57M; a 150k vocabulary at
    hidden 896: 272M), four of them with the targets, as in trlX.
    """

    def __init__(self, hidden: int, vocab: int):
        super().__init__()
        self.v = _head(hidden, 1)
        self.q = torch.nn.ModuleList([_head(hidden, vocab), _head(hidden, vocab)])
        self.target_q = copy.deepcopy(self.q).requires_grad_(False)

    def forward(self, hidden: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Q_1, Q_2 (..., V), min of the targets (..., V) and V (..., 1) at each hidden state (..., H)."""
        hidden = hidden.to(self.v[0].weight.dtype)
        target = torch.minimum(*(head(hidden) for head in self.target_q))
        return [head(hidden) for head in self.q], target, self.v(hidden)


@dataclass
class ILQLPolicy(Policy):
    """A policy that decodes with ILQL's heads: `generate` and `response_logprobs` both use
    `decoding_logits`, so KL to SFT is measured on the distribution that was sampled.

    Args (beyond `Policy`'s):
        heads: the trained ILQLHeads.
        beta: weight of the advantage; 0 decodes with the behaviour-cloned LM alone.
        top_k: tokens kept at each step (0: all).
    """

    heads: ILQLHeads | None = None
    beta: float = 1.0
    top_k: int = 20

    def __post_init__(self):
        self._cache_name = cache_keyword(self.model)

    def trunk(self, cache=None, **inputs) -> tuple[torch.Tensor, torch.Tensor, object]:
        """The LM's logits and last hidden state at the last `logits_to_keep` positions, and the KV cache."""
        keep = inputs.pop("logits_to_keep")
        out = self.model(**inputs, **{self._cache_name: cache}, logits_to_keep=keep, output_hidden_states=True)
        return out.logits, out.hidden_states[-1][:, -keep:], getattr(out, self._cache_name)

    def next_token_logits(self, lm_logits: torch.Tensor, hidden: torch.Tensor,
                          scored: torch.Tensor | None = None) -> torch.Tensor:
        _, target_q, v = self.heads(hidden)
        return decoding_logits(lm_logits, target_q, v, self.beta, self.top_k, scored)

    @torch.no_grad()
    def sample_tokens(self, inputs: dict, max_new_tokens: int, temperature: float, do_sample: bool) -> torch.Tensor:
        """Token by token with the KV cache, from softmax(decoding_logits / T): (B, Q + T_new)."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        finished = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
        step_ids, cache, out = ids, None, [ids]
        for _ in range(max_new_tokens):
            positions = left_padded_positions(mask)[:, -step_ids.shape[1]:]
            lm_logits, hidden, cache = self.trunk(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                                                  cache=cache, use_cache=True, logits_to_keep=1)
            logits = self.next_token_logits(lm_logits[:, -1], hidden[:, -1])  # (B, V)
            token = (torch.multinomial(F.softmax(logits / temperature, dim=-1), 1).squeeze(1) if do_sample
                     else logits.argmax(-1))
            token = torch.where(finished, pad, token)
            out.append(token[:, None])
            finished |= token == eos
            if finished.all():
                break
            step_ids, mask = token[:, None], torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        return torch.cat(out, dim=1)

    def response_logits(self, batch: dict, keep: int) -> torch.Tensor:
        lm_logits, hidden, _ = self.trunk(**batch, position_ids=left_padded_positions(batch["attention_mask"]),
                                          use_cache=False, logits_to_keep=keep + 1)
        return self.next_token_logits(lm_logits[:, :-1], hidden[:, :-1], scored=batch["input_ids"][:, -keep:])

    @torch.no_grad()
    def response_values(self, prompts: list[str], responses: list[str], batch_size: int = 16,
                        max_length: int = 256) -> torch.Tensor:
        """What the heads expect each whole response to earn: min target Q of its last token (EOS), the
        action the reward was given for: (N,), in standardised reward units. Transcripts longer than
        `max_length` tokens lose the prompt's start, as in training."""
        values = []
        for start in range(0, len(prompts), batch_size):
            ids = [transcript_ids(self.tokenizer, p, r)[-max_length:]
                   for p, r in zip(prompts[start: start + batch_size], responses[start: start + batch_size])]
            batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding_side="left").to(self.device)
            _, hidden, _ = self.trunk(**batch, position_ids=left_padded_positions(batch["attention_mask"]),
                                      use_cache=False, logits_to_keep=2)
            _, target_q, _ = self.heads(hidden[:, 0])  # the state that takes EOS: (b, V)
            values.append(target_q[:, self.tokenizer.eos_token_id].float().cpu())
        return torch.cat(values)


def value_accuracy(policy: ILQLPolicy, pairs: list[dict], max_length: int = 256) -> float:
    """Share of prompt / chosen / rejected pairs on which the heads expect more of chosen: how well
    ILQL's Q-values tell them apart where no gold annotator exists (HH-RLHF)."""
    prompts = [p["prompt"] for p in pairs]
    chosen = policy.response_values(prompts, [p["chosen"] for p in pairs], max_length=max_length)
    rejected = policy.response_values(prompts, [p["rejected"] for p in pairs], max_length=max_length)
    return (chosen > rejected).float().mean().item()


# ---------------------------------------------------------------------------------------------
# Data: (prompt, response, reward) rows, and their tokens
# ---------------------------------------------------------------------------------------------

def ilql_rows(data, reward=None, columns: dict | None = None) -> list[dict]:
    """prompt / response / reward rows from a LabelStore, pairs, rated rows or rows and a reward.

    - a `LabelStore`: +1 for every chosen and thumbs-up response, -1 for every rejected and thumbs-down one
    - rows with prompt / chosen / rejected: +1 chosen, -1 rejected (trlX's HH-RLHF example)
    - rows with prompt / response / reward
    - rows with prompt / response, and `reward`: anything `rlhflab.trainers.reward_functions.as_reward` takes
    """
    if isinstance(data, LabelStore):
        rows = kto_rows(data)
        if not rows:
            raise ValueError("the label store holds no ratings or decided pairs yet; label some items first")
        return [{"prompt": r["prompt"], "response": r["completion"], "reward": 1.0 if r["label"] else -1.0}
                for r in rows]
    columns = dict(columns or {})
    if as_rows(data, ["prompt"], columns, what="ILQL data", optional=["chosen", "rejected"])[0]["chosen"] is not None:
        pairs = as_rows(data, COMPARISON_COLUMNS, columns, what="ILQL data", allow_empty=REPLIES)
        return [{"prompt": r["prompt"], "response": r[side], "reward": value}
                for r in pairs for side, value in (("chosen", 1.0), ("rejected", -1.0))]
    reward_column = columns.pop("reward", "reward")
    rows = as_rows(data, ["prompt", "response"], columns, what="ILQL data", allow_empty=REPLIES,
                   optional=[reward_column])
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    if reward is not None:
        values = checked_scores(as_reward(reward).score(prompts, responses), len(responses), reward).tolist()
    elif all(isinstance(r[reward_column], (int, float)) and math.isfinite(r[reward_column]) for r in rows):
        values = [float(r[reward_column]) for r in rows]
    else:
        raise ValueError(f"ILQL data needs a finite number in column {reward_column!r} of every row (or "
                         "prompt / chosen / rejected, or reward=a callable f(prompts, responses)); pass "
                         "columns={'reward': ...} to name the column that holds it")
    return [{"prompt": p, "response": r, "reward": v} for p, r, v in zip(prompts, responses, values)]


def standardised(rewards: list[float]) -> list[float]:
    """(r - mean) / std, as trlX did; unchanged in spread when every reward is the same."""
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / max(len(rewards) - 1, 1))
    return [(r - mean) / std if std > 0 else r - mean for r in rewards]


def tokenized(tokenizer, rows: list[dict], max_length: int) -> list[dict]:
    """Each row's transcript ids (ending in EOS) and where its response starts."""
    out = []
    for row in rows:
        ids = transcript_ids(tokenizer, row["prompt"], row["response"])
        start = len(tokenizer(chat_prompt(tokenizer, row["prompt"]), add_special_tokens=False)["input_ids"])
        cut = max(0, len(ids) - max_length)  # keep the response; the prompt loses its start
        out.append({"ids": ids[cut:], "start": max(start - cut, 1), "reward": row["reward"]})
    return out


def collate(examples: list[dict], pad_id: int) -> dict:
    """Right-padded ids, and per position t < T-1 whether token t+1 is a response token (an action),
    the last action of its row, and its reward (on the last action only)."""
    width = max(len(e["ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id)
    attention = torch.zeros(len(examples), width, dtype=torch.long)
    actions = torch.zeros(len(examples), width - 1, dtype=torch.bool)
    terminal = torch.zeros(len(examples), width - 1)
    rewards = torch.zeros(len(examples), width - 1)
    for row, e in enumerate(examples):
        n = len(e["ids"])
        ids[row, :n], attention[row, :n] = torch.tensor(e["ids"]), 1
        actions[row, e["start"] - 1: n - 1] = True  # state t takes the action token t + 1
        terminal[row, n - 2], rewards[row, n - 2] = 1.0, e["reward"]
    return {"input_ids": ids, "attention_mask": attention, "actions": actions, "terminal": terminal, "rewards": rewards}


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

class ILQLModule(torch.nn.Module):
    """The LM trunk with the heads, computing every loss term of a batch."""

    def __init__(self, model, heads: ILQLHeads):
        super().__init__()
        self.model, self.heads = model, heads

    def forward(self, batch: dict, config: ILQLConfig) -> tuple[torch.Tensor, dict]:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                         output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states[-1]  # (B, T, H)
        actions = batch["actions"]  # (B, T-1): state t takes token t+1
        states, next_states = hidden[:, :-1][actions], hidden[:, 1:][actions]  # (N, H)
        taken = batch["input_ids"][:, 1:][actions]  # (N,)
        terminal, rewards = batch["terminal"][actions], batch["rewards"][actions]  # (N,)
        lm_head = self.model.get_output_embeddings()
        lm_logits = lm_head(states.to(lm_head.weight.dtype))  # the LM head on the N states only: (N, V)
        q_all, target_q_all, v = self.heads(states)  # [(N, V)] * 2, (N, V), (N, 1)
        v = v.squeeze(-1)
        next_v = self.heads.v(next_states.to(v.dtype)).squeeze(-1) * (1 - terminal)
        q_taken = [q.gather(-1, taken[:, None]).squeeze(-1) for q in q_all]
        target_q = target_q_all.gather(-1, taken[:, None]).squeeze(-1)
        terms = {"loss/q": q_loss(q_taken, rewards, next_v, config.gamma),
                 "loss/v": expectile_loss(target_q, v, config.tau),
                 "loss/cql": cql_loss(q_all, taken),
                 "loss/awac": awac_loss(lm_logits, taken, target_q - v, config.awac_beta)}
        loss = (terms["loss/q"] + terms["loss/v"] + config.cql_scale * terms["loss/cql"]
                + config.awac_scale * terms["loss/awac"])
        with torch.no_grad():
            stats = {"loss/total": loss, **terms, "values/v": v.mean(), "values/q": q_taken[0].mean(),
                     "values/advantage": (target_q - v).mean(),
                     "values/terminal_q": q_taken[0][terminal.bool()].mean()}
        return loss, {k: t.item() for k, t in stats.items()}


def train_ilql(policy: Policy, data, config: ILQLConfig | None = None, *, reward=None, columns: dict | None = None,
               live: LivePlot | None = None) -> ILQLResult:
    """Train ILQL heads and the policy's LoRA adapter on logged data, save them, and return the metrics.

    Args:
        policy: from `load_policy(base, lora=True, adapter=sft_dir)`: the adapter starts from SFT.
        data: a `LabelStore`, or a DataFrame / Dataset / list of dicts (see `ilql_rows`).
        reward: scores prompt / response rows that carry no reward: a callable f(prompts, responses)
            -> list of floats, or a reward model.
        columns: maps column names to others, e.g. {'response': 'completion'}.
        live: a LivePlot for the losses and values; by default one writing to `output_dir`.

    Examples:
        >>> policy = load_policy("tiny", lora=True, adapter="runs/sft")  # doctest: +SKIP
        >>> result = train_ilql(policy, store, ILQLConfig(steps=100))  # doctest: +SKIP
        >>> load_ilql("tiny", result.output_dir).generate(["What color is the fox?"])  # doctest: +SKIP
    """
    config = config or ILQLConfig()
    if not policy.is_lora:
        raise ValueError("ILQL trains a LoRA adapter under its heads (on a 4-bit base too): "
                         "load_policy(..., lora=True, adapter=sft_dir)")
    rows = ilql_rows(data, reward, columns)
    rewards = standardised([r["reward"] for r in rows])
    examples = tokenized(policy.tokenizer, [{**r, "reward": s} for r, s in zip(rows, rewards)], config.max_length)
    output_dir = Path(config.output_dir)
    live = live or LivePlot(output_dir, title="ILQL", layout="ilql")
    live.track(config.report_to)
    accelerator = Accelerator(cpu=policy.device.type == "cpu",
                              mixed_precision=precision_for(policy.device).mixed_precision)
    disable_dropout(policy.model)
    torch.manual_seed(config.seed)
    hidden = policy.model.config.get_text_config().hidden_size
    heads = ILQLHeads(hidden, policy.model.get_output_embeddings().weight.shape[0])
    # fp32 weights on every device, as master weights: a Polyak step of the targets is a small share of a small
    # difference, below half a bf16 ulp, and autocast still computes the heads in the device's precision
    heads.to(device=policy.device, dtype=torch.float32)
    module = ILQLModule(policy.model, heads)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=config.learning_rate)
    module, optimizer = accelerator.prepare(module, optimizer)
    rng, order, history, started = random.Random(config.seed), [], [], time.time()
    policy.model.train()
    for step in tqdm(range(1, config.steps + 1), desc="ILQL"):
        if len(order) < config.batch_size:
            more = list(range(len(examples)))
            rng.shuffle(more)
            order += more
        batch = collate([examples[i] for i in order[:config.batch_size]], policy.tokenizer.pad_token_id)
        order = order[config.batch_size:]
        loss, stats = module({k: v.to(accelerator.device) for k, v in batch.items()}, config)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"ILQL loss became {loss.item()} at step {step}; lower learning_rate, or check "
                                     "the rewards for inf / nan")
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(module.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        if step % config.target_sync_every == 0:
            polyak_update(heads.target_q, heads.q, config.polyak)
        if step % config.logging_steps == 0 or step == config.steps:
            history.append({"step": step, **stats})
            live.log(step, stats)
    live.close()
    policy.model.eval()
    save_ilql(policy, heads, config, output_dir)
    return ILQLResult({**history[-1], "train/runtime_s": time.time() - started}, output_dir, history)


def save_ilql(policy: Policy, heads: ILQLHeads, config: ILQLConfig, output_dir: Path) -> None:
    """The adapter (peft format), the heads (safetensors) and the decoding settings, in one directory."""
    output_dir.mkdir(parents=True, exist_ok=True)
    policy.model.save_pretrained(output_dir)
    policy.tokenizer.save_pretrained(output_dir)
    save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, output_dir / HEADS_WEIGHTS)
    (output_dir / SETTINGS).write_text(json.dumps(asdict(config), indent=2) + "\n")


def load_ilql(base: str, directory: str | Path, quantization: str | None = None, beta: float | None = None,
              top_k: int | None = None) -> ILQLPolicy:
    """The ILQL policy saved in `directory` on `base`: LoRA adapter and heads; beta / top_k override the saved ones."""
    directory = Path(directory)
    if not (directory / HEADS_WEIGHTS).exists():
        raise FileNotFoundError(f"{directory} holds no {HEADS_WEIGHTS}; train_ilql(..., ILQLConfig(output_dir=...)) "
                                "writes one")
    policy = load_policy(base, adapter=str(directory), quantization=quantization)
    settings = json.loads((directory / SETTINGS).read_text())
    weights = load_file(directory / HEADS_WEIGHTS)
    heads = ILQLHeads(weights["v.0.weight"].shape[1], weights["q.0.2.weight"].shape[0])
    heads.load_state_dict(weights)
    heads.to(device=policy.device, dtype=precision_for(policy.device).adapter_weights).eval()
    return ILQLPolicy(policy.model, policy.tokenizer, f"ILQL({policy.name})", heads=heads,
                      beta=settings["beta"] if beta is None else beta,
                      top_k=settings["top_k"] if top_k is None else top_k)
