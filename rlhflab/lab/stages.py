"""The RLHF stages as functions of a task, each wired here and nowhere else, and the one evaluation.

    sft_stage       LoRA SFT of the base on a small demonstration budget
    sft_baseline    SFT's answers to the held-out prompts: what every evaluation compares against
    reward_stage    a fresh LoRA reward model on comparison rows, normalised on SFT's samples
    ppo_trainer     PPO from an adapter against a reward model, KL to SFT (for runs that want the trainer)
    policy_stage    one policy update by a registered method (`METHODS`): PPO, NLPO, RLOO or GRPO against a
                    reward model, or DPO, KTO or ILQL on the labels themselves
    register_method add a method in one place (`Method`: its update, whether it needs a reward model,
                    its dashboard); the loop, `compare_methods` and the live plots then run it
    evaluate        held-out win-rate against SFT by the task's judge (95% interval), KL to SFT, proxy means,
                    gold means where the task knows the truth, reward agreement with the judge

Every stage takes a task (`rlhflab.lab.task`): a user's prompts, demonstrations and judge, or the tiny world
judged by its gold annotator (`rlhflab.tiny.task.WorldTask`); nothing here knows which.
Data flows one way: records -> store -> comparison rows -> trainers -> evaluation. `RLHFLoop` and
`compare_methods` (`rlhflab.lab.loop`), notebooks 03-05, the benchmarks and the tests' fixtures all run
these functions, at the sizes of one `RLHFConfig`. Every number they report is named in `METRICS`,
the lab's one vocabulary, which docs/metrics.md documents.

SFT gets a deliberately small demonstration budget: with 2,000 demonstrations the tiny model
already answers almost perfectly (gold 3.7 of 4), and RLHF would have nothing left to teach.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ..labeling.candidates import sample_pairs
from ..labeling.metrics import win_rate_interval
from ..trainers.critic_free import CriticFreeConfig, train_critic_free
from ..trainers.dpo import DPOConfig, train_dpo
from ..trainers.ilql import HEADS_WEIGHTS, ILQLConfig, load_ilql, train_ilql
from ..trainers.kto import KTOConfig, train_kto
from ..trainers.live import LAYOUTS, Chart, LivePlot
from ..trainers.models import Policy, load_policy
from ..trainers.nlpo import is_nlpo_checkpoint, load_nlpo
from ..trainers.ppo import PPOConfig, PPOTrainer
from ..trainers.reward import (ADAPTER_WEIGHTS, RewardConfig, RewardModel, SharedReward, evaluate_reward_model,
                               load_reward_model, train_reward_model)
from ..trainers.sft import SFTConfig, train_sft

__all__ = ["Method", "PolicyUpdate", "METHODS", "register_method", "METRICS", "RLHFConfig", "heldout_prompts",
           "ppo_prompts", "load", "sample", "sft_stage", "Baseline", "sft_baseline", "gold_scores",
           "reward_stage", "reward_agreement", "ppo_trainer", "policy_stage", "evaluate"]

METRICS = {  # name -> meaning; the loop, compare_methods, the benchmarks, the notebooks and the report use these.
    # 'gold/' is the judge's name on the tiny world; with a judge of your own it is `Task.judge_name` ('judge/').
    "gold/win_rate_vs_sft": "share of held-out prompts on which gold prefers the policy's answer to SFT's (ties: half)",
    "gold/win_rate_vs_sft_low": "lower end of the win-rate's 95% interval (percentile bootstrap over the prompts)",
    "gold/win_rate_vs_sft_high": "upper end of the win-rate's 95% interval",
    "gold/mean": "mean gold score of the policy's held-out answers (-4 to 4)",
    "gold/sft_mean": "mean gold score of SFT's held-out answers, the baseline",
    "kl/to_sft": "KL divergence of the policy from SFT, in nats per response, on the policy's own held-out samples",
    "reward/mean": "mean proxy (reward-model) score of the policy's held-out answers; 0 is SFT's mean",
    "reward/sft_mean": "mean proxy score of SFT's held-out answers",
    "reward/gold_agreement": "share of held-out (policy, SFT) answer pairs on which the reward model agrees with gold",
    "reward/heldout_pairs_accuracy": "reward-model accuracy on the task's held-out comparisons (the tiny world: gold "
                                     "labels of its candidates)",
    "reward/gold_agreement_sft_samples": "reward-model agreement with gold on held-out pairs of two SFT samples",
    "labels": "labels in the store so far (pairs, ties, 'both bad' and rankings)",
}


@dataclass
class RLHFConfig:
    """Sizes and seeds shared by every stage; `quick()` is what the tests and `make demo --quick` use."""

    out_dir: str = "runs/rlhf"  # sft/, round_<r>/ (reward, policy), labels.db, rounds.jsonl
    base: str = "tiny"  # base model of every role: 'tiny', 'smollm2-135m', a local directory or a hub id
    quantization: str | None = None  # '4bit': every model on one nf4 base
    seed: int = 0  # seeds prompts, sampling and training
    # -- SFT and the reward model
    n_demonstrations: int = 128  # SFT budget, small on purpose (see the module docstring)
    reward_epochs: float = 2.0  # passes over the comparisons
    # -- the policy update
    method: str = "ppo"  # a name in METHODS; DPO, KTO and ILQL learn from the labels without a reward model,
    # so active learning falls back to random picks
    ppo_steps: int = 16  # PPO steps of ppo_batch_size responses (per round in the loop)
    ppo_batch_size: int = 16  # responses per PPO step
    ppo_learning_rate: float = PPOConfig.learning_rate  # PPO's LoRA rate: PPOConfig's one set of defaults
    kl_coef: float = PPOConfig.kl_coef  # initial KL penalty (adaptive toward target_kl)
    target_kl: float = PPOConfig.target_kl  # nats per response the adaptive controller steers to
    dpo_epochs: float = 2.0  # DPO passes over the comparisons
    dpo_beta: float = 0.1  # DPO's implicit KL strength
    kto_epochs: float = 2.0  # KTO passes over its rows (two per decided pair, one per rating)
    kto_beta: float = 0.1  # KTO's implicit KL strength
    ilql_steps: int = 150  # ILQL steps of 16 responses
    ilql_beta: float = 1.0  # ILQL's decoding weight on the advantage Q - V
    nlpo_top_p: float = 0.9  # NLPO: PPO within the top-p nucleus of a masked policy (RL4LMs' 0.9)
    group_size: int = 4  # RLOO / GRPO: responses per prompt, each other's baseline (ppo_steps of ppo_batch_size)
    critic_free_beta: float = 0.05  # RLOO / GRPO: weight of the per-token KL penalty to SFT
    response_length: int = 32  # most tokens per sampled response, everywhere
    # -- evaluation
    n_heldout: int = 48  # held-out prompts of every evaluation
    # -- the iterated loop (rlhflab.lab.loop)
    rounds: int = 3  # label -> reward -> policy rounds
    labels_per_round: int = 300  # pairs sent to annotators per round
    pool_per_label: int = 2  # candidate pairs generated per label spent; active learning picks among them
    random_share: float = 0.25  # share of each round's pairs drawn at random (see rlhflab.labeling.active)
    # -- tracking
    report_to: str = "none"  # every stage's and the rounds' metrics: "tensorboard" writes event files beside them

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r} "
                             "(register_method adds one)")
        if self.rounds < 1 or self.labels_per_round < 1:
            raise ValueError("the loop needs at least 1 round and 1 label per round")

    @property
    def ppo_mini_batch_size(self) -> int:
        """Responses per gradient step of PPO, NLPO, RLOO and GRPO: two minibatches per sampled batch."""
        return self.ppo_batch_size // 2

    @classmethod
    def quick(cls, out_dir: str, **overrides) -> RLHFConfig:
        settings = dict(out_dir=out_dir, rounds=2, n_demonstrations=64, labels_per_round=96, ppo_steps=4,
                        reward_epochs=2.0, n_heldout=24)
        return cls(**{**settings, **overrides})


# ---------------------------------------------------------------------------------------------
# Prompts, loading and sampling, the same way in every stage
# ---------------------------------------------------------------------------------------------

def heldout_prompts(task, config: RLHFConfig) -> list[str]:
    return task.draw("heldout", config.n_heldout, seed=config.seed + 11)


def ppo_prompts(task, config: RLHFConfig) -> list[str]:
    return task.draw("train", 2000, seed=config.seed + 13)


def load(config: RLHFConfig, adapter: str | Path | None = None, trainable: bool = False) -> Policy:
    """The base with `adapter` on it; `trainable` adds (or keeps training) a LoRA adapter. A directory
    that ILQL wrote gives a policy that decodes with its heads (`rlhflab.trainers.ilql.ILQLPolicy`), and an NLPO
    checkpoint one that samples within its masked policy's nucleus (`rlhflab.trainers.nlpo.NucleusPolicy`)."""
    if adapter is not None and (Path(adapter) / HEADS_WEIGHTS).exists() and not trainable:
        return load_ilql(config.base, adapter, quantization=config.quantization)
    if adapter is not None and is_nlpo_checkpoint(adapter) and not trainable:
        return load_nlpo(config.base, adapter, quantization=config.quantization)
    return load_policy(config.base, lora=True if trainable else None, adapter=str(adapter) if adapter else None,
                       quantization=config.quantization)


def sample(policy: Policy, prompts: list[str], config: RLHFConfig, seed: int) -> list[str]:
    return policy.generate(prompts, max_new_tokens=config.response_length, seed=seed)


# ---------------------------------------------------------------------------------------------
# The stages
# ---------------------------------------------------------------------------------------------

def sft_stage(task, config: RLHFConfig, out: str | Path | None = None, live: LivePlot | None = None) -> Path:
    """LoRA SFT of the base on up to `config.n_demonstrations` of the task's; returns the adapter directory
    (default out_dir/sft). A task with no demonstrations gets an untrained adapter: LoRA's B starts at
    zero, so that "SFT" is the base model itself, and every later stage still starts from an adapter.

    A directory that already holds an adapter is reused, so a rerun or a resumed loop starts from it.
    """
    out = Path(out or Path(config.out_dir) / "sft")
    if not (out / ADAPTER_WEIGHTS).exists():
        demonstrations = task.sft_rows(config.n_demonstrations, seed=config.seed)
        torch.manual_seed(config.seed)  # the new adapter's first weights follow the seed, not what ran before
        policy = load(config, trainable=True)
        if demonstrations:
            train_sft(policy, demonstrations, SFTConfig(output_dir=str(out), seed=config.seed, logging_steps=2,
                                                               report_to=config.report_to),
                      live=live)
        else:
            policy.model.save_pretrained(out)
    return out


@dataclass
class Baseline:
    """SFT's answers to the held-out prompts, and their gold scores where the task knows the truth."""

    policy: Policy  # the SFT policy (frozen)
    prompts: list[str]
    responses: list[str]
    gold_scores: list[float] | None  # None: the task has no gold annotator


def sft_baseline(task, config: RLHFConfig, sft_dir: Path) -> Baseline:
    policy = load(config, sft_dir)
    prompts = heldout_prompts(task, config)
    responses = sample(policy, prompts, config, seed=config.seed + 21)
    return Baseline(policy, prompts, responses, gold_scores(task, prompts, responses))


def gold_scores(task, prompts: list[str], responses: list[str]) -> list[float] | None:
    return None if task.gold is None else [task.gold.score(p, r) for p, r in zip(prompts, responses)]


def reward_stage(comparisons, config: RLHFConfig, baseline: Baseline, out: str | Path,
                 live: LivePlot | None = None) -> RewardModel:
    """A fresh LoRA reward model on comparison rows (a store, its `trl_rows`, or any prompt / chosen /
    rejected rows), normalised to mean 0 and std 1 on SFT's held-out samples, and saved to `out`."""
    torch.manual_seed(config.seed)  # the new adapter's and score head's first weights follow the seed
    reward_model = load_reward_model(config.base, lora=True, quantization=config.quantization)
    train_reward_model(reward_model, comparisons, RewardConfig(output_dir=str(out), epochs=config.reward_epochs,
                                                               seed=config.seed, logging_steps=10,
                                                               report_to=config.report_to), live=live)
    reward_model.normalize_on(baseline.prompts, baseline.responses)
    reward_model.save(out)
    return reward_model


def reward_agreement(reward_model, task, config: RLHFConfig, baseline: Baseline) -> tuple[dict, dict]:
    """How often a reward model agrees with held-out verdicts it never saw: the task's held-out comparisons,
    and the judge's verdicts on two SFT samples per prompt (what PPO will first show it), where the task has
    each. Returns the metrics, and `evaluate_reward_model`'s result on both sets together (calibration
    table, raw scores)."""
    task_pairs = task.reward_pairs(config.n_heldout * 2, seed=config.seed + 5)
    sft_pairs = []
    if task.judge is not None:
        sft_pairs = task.preferences(*sample_pairs(baseline.policy, baseline.prompts, seed=config.seed + 7))
    if not task_pairs + sft_pairs:
        raise ValueError("the task has neither held-out comparisons nor a judge, so nothing can test the reward "
                         "model: pass Task(comparisons=...) or Task(judge=...)")
    evaluation = evaluate_reward_model(reward_model, task_pairs + sft_pairs)  # every pair scored once
    agrees = (evaluation["chosen"] > evaluation["rejected"]).float()
    metrics = {}
    if task_pairs:
        metrics["reward/heldout_pairs_accuracy"] = agrees[:len(task_pairs)].mean().item()
    if sft_pairs:
        metrics[f"reward/{task.judge_name}_agreement_sft_samples"] = agrees[len(task_pairs):].mean().item()
    return metrics, evaluation


def ppo_trainer(task, config: RLHFConfig, sft_dir: Path, reward_dir: Path, *, start: Path | None = None,
                out: str | Path | None = None, first_step: int = 0, seed: int | None = None,
                separate_reward: bool = False, ppo_fields: dict | None = None,
                live: LivePlot | None = None) -> PPOTrainer:
    """A PPO trainer from the `start` adapter (default SFT), with the SFT adapter as the KL reference.

    By default the reward model is a third adapter on the same base (`SharedReward`); with
    `separate_reward` it is its own model. `first_step` continues a step count (the loop's rounds
    draw one curve), and `ppo_fields` sets further PPOConfig fields, e.g. {'value_model': 'adapter'}
    (the value adapter then starts from the reward model).
    """
    policy = load(config, start or sft_dir, trainable=True)
    reward = (load_reward_model(str(reward_dir), quantization=config.quantization) if separate_reward
              else SharedReward(policy, reward_dir))
    ppo_config = PPOConfig(output_dir=str(out or Path(config.out_dir) / "ppo"), steps=first_step + config.ppo_steps,
                           batch_size=config.ppo_batch_size, mini_batch_size=config.ppo_mini_batch_size,
                           learning_rate=config.ppo_learning_rate, kl_coef=config.kl_coef,
                           target_kl=config.target_kl, kl_horizon=50 * config.ppo_batch_size,
                           response_length=config.response_length, seed=config.seed if seed is None else seed,
                           report_to=config.report_to, **(ppo_fields or {}))
    trainer = PPOTrainer(policy, ppo_prompts(task, config), reward, ppo_config, gold=task.gold, live=live,
                         reference_adapter=sft_dir, value_from=reward_dir)
    trainer.step = first_step
    return trainer


# ---------------------------------------------------------------------------------------------
# The policy updates: each method registered once, with what the loop and the dashboards need to know
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyUpdate:
    """What a method's update is given. It trains from the `start` adapter into `out` and returns the new
    policy's directory and the PPO step count reached (`first_step` for methods that count none)."""

    task: object
    config: RLHFConfig
    sft_dir: Path  # the SFT adapter: PPO's and NLPO's KL reference
    start: Path  # the adapter this update starts from (SFT, or the previous round's policy)
    out: Path  # this method's own directory
    reward_dir: Path | None  # the reward model, for a method with `reward_model=True`
    comparisons: object  # the labels (a LabelStore, or rows), for the methods that learn from them directly
    seed: int
    first_step: int
    live: LivePlot | None


@dataclass(frozen=True)
class Method:
    """A policy update the lab can run: `policy_stage`, the loop, `compare_methods` and the dashboards read
    everything they need to know of a method from here.

    Args:
        name: what `RLHFConfig(method=...)` and `policy_stage` take.
        update: PolicyUpdate -> (policy directory, PPO step reached).
        reward_model: it trains against a reward model, so the loop fits one each round first.
        layout: the key of `rlhflab.trainers.live.LAYOUTS` its live dashboard draws (default: its name).
        charts: a dashboard of its own, registered as `LAYOUTS[name]`.
    """

    name: str
    update: Callable[[PolicyUpdate], tuple[Path, int]]
    reward_model: bool = False
    layout: str = ""
    charts: tuple[Chart, ...] = ()

    @property
    def dashboard(self) -> str:
        return self.layout or self.name


METHODS: dict[str, Method] = {}  # name -> Method, in the order registered


def register_method(method: Method) -> Method:
    """Add a policy update to the lab, in one place: after this, `RLHFConfig(method=method.name)`, the loop
    and `compare_methods` run it, and its live plot draws `method.charts` (or the layout it names)."""
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is registered already")
    if method.charts:
        if method.name in LAYOUTS:
            raise ValueError(f"a dashboard named {method.name!r} exists already: give layout= instead of charts=")
        LAYOUTS[method.name] = method.charts
    elif method.dashboard not in LAYOUTS:
        raise ValueError(f"{method.name}: no dashboard {method.dashboard!r}; give charts= or one of "
                         f"{', '.join(LAYOUTS)} as layout=")
    METHODS[method.name] = method
    return method


def policy_stage(method: str, task, config: RLHFConfig, *, sft_dir: Path, start: Path, out: Path,
                 reward_dir: Path | None = None, comparisons=None, seed: int | None = None, first_step: int = 0,
                 live: LivePlot | None = None) -> tuple[Path, int]:
    """One policy update by a registered method from the `start` adapter: against the reward model at
    `reward_dir` (PPO, NLPO, RLOO, GRPO), or on `comparisons`, a store or rows (DPO, KTO, ILQL). The KL
    reference is SFT for PPO and NLPO, `start` for the others. Returns the new policy's directory and the
    PPO step reached."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r} (register_method adds one)")
    if METHODS[method].reward_model and reward_dir is None:
        raise ValueError(f"{method.upper()} needs a reward model: pass reward_dir (from reward_stage)")
    return METHODS[method].update(PolicyUpdate(
        task, config, Path(sft_dir), Path(start), Path(out) / method, None if reward_dir is None else Path(reward_dir),
        comparisons, config.seed if seed is None else seed, first_step, live))


def _ppo(update: PolicyUpdate, nlpo: bool = False) -> tuple[Path, int]:
    c = update.config
    result = ppo_trainer(update.task, c, update.sft_dir, update.reward_dir, start=update.start, out=update.out,
                         first_step=update.first_step, seed=update.seed, live=update.live,
                         ppo_fields={"nlpo_top_p": c.nlpo_top_p} if nlpo else None).train()
    return result.output_dir / "checkpoint", result.step


def _critic_free(update: PolicyUpdate, method: str) -> tuple[Path, int]:
    c = update.config
    reward = load_reward_model(str(update.reward_dir), quantization=c.quantization)
    train_critic_free(load(c, update.start, trainable=True), ppo_prompts(update.task, c), reward, CriticFreeConfig(
        method=method, output_dir=str(update.out), max_steps=c.ppo_steps, batch_size=c.ppo_batch_size,
        mini_batch_size=c.ppo_mini_batch_size, num_generations=c.group_size, learning_rate=c.ppo_learning_rate,
        beta=c.critic_free_beta, max_completion_length=c.response_length, seed=update.seed, report_to=c.report_to),
        live=update.live)
    return update.out, update.first_step


def _from_labels(train, settings) -> Callable[[PolicyUpdate], tuple[Path, int]]:
    """An update that learns from the labels themselves (DPO, KTO, ILQL): `train(policy, comparisons, config,
    live=...)` with the stage config `settings(update)` builds."""
    def update_policy(update: PolicyUpdate) -> tuple[Path, int]:
        train(load(update.config, update.start, trainable=True), update.comparisons, settings(update),
              live=update.live)
        return update.out, update.first_step
    return update_policy


_dpo = _from_labels(train_dpo, lambda u: DPOConfig(
    output_dir=str(u.out), epochs=u.config.dpo_epochs, beta=u.config.dpo_beta, seed=u.seed, logging_steps=2,
    report_to=u.config.report_to))
_kto = _from_labels(train_kto, lambda u: KTOConfig(
    output_dir=str(u.out), epochs=u.config.kto_epochs, beta=u.config.kto_beta, seed=u.seed, logging_steps=2,
    report_to=u.config.report_to))
_ilql = _from_labels(train_ilql, lambda u: ILQLConfig(
    output_dir=str(u.out), steps=u.config.ilql_steps, beta=u.config.ilql_beta, seed=u.seed,
    report_to=u.config.report_to))


register_method(Method("ppo", _ppo, reward_model=True))
register_method(Method("dpo", _dpo))
register_method(Method("kto", _kto))
register_method(Method("ilql", _ilql))
register_method(Method("nlpo", lambda update: _ppo(update, nlpo=True), reward_model=True, layout="ppo"))
register_method(Method("rloo", lambda update: _critic_free(update, "rloo"), reward_model=True, layout="critic_free"))
register_method(Method("grpo", lambda update: _critic_free(update, "grpo"), reward_model=True, layout="critic_free"))


# ---------------------------------------------------------------------------------------------
# The one evaluation
# ---------------------------------------------------------------------------------------------

def evaluate(policy: Policy, baseline: Baseline, task, config: RLHFConfig, reward=None,
             name: str = "policy") -> tuple[dict, pd.DataFrame]:
    """`policy` against SFT on the held-out prompts, in METRICS' names, and a table of samples.

    The task's judge compares each of the policy's answers with SFT's: the win-rate counts ties as half, with
    a 95% bootstrap interval over the prompts. KL(policy || SFT) is k1 on the policy's own samples: the
    mean over them of log pi(y|x) - log sft(y|x), on the token ids sampled (a reply cut off at
    `response_length` is scored without an EOS it never had). A task with a gold annotator adds gold means. `reward` (a
    RewardModel, SharedReward or anything with `score`) adds the proxy means (always named 'reward/', a
    proxy) and the reward model's agreement with the judge on (policy, SFT) answer pairs.
    """
    prompts, judge = baseline.prompts, task.judge_name
    responses, reply_ids = policy.sample(prompts, max_new_tokens=config.response_length, seed=config.seed + 41)
    kl = policy.reply_logprobs(prompts, reply_ids) - baseline.policy.reply_logprobs(prompts, reply_ids)  # (N,)
    metrics = {}
    if task.judge is not None:
        rate, low, high = win_rate_interval(task.outcomes(prompts, responses, baseline.responses), seed=config.seed)
        metrics = {f"{judge}/win_rate_vs_sft": rate, f"{judge}/win_rate_vs_sft_low": low,
                   f"{judge}/win_rate_vs_sft_high": high}
    scores = gold_scores(task, prompts, responses)
    if scores is not None:
        metrics.update({"gold/mean": statistics.fmean(scores), "gold/sft_mean": statistics.fmean(baseline.gold_scores)})
    metrics["kl/to_sft"] = kl.mean().item()
    if reward is not None:
        metrics["reward/mean"] = reward.score(prompts, responses).mean().item()
        metrics["reward/sft_mean"] = reward.score(prompts, baseline.responses).mean().item()
        pairs = task.preferences(prompts, responses, baseline.responses) if task.judge is not None else []
        if pairs:  # a judge calls some pairs ties; with none decided there is nothing to agree on
            metrics[f"reward/{judge}_agreement"] = evaluate_reward_model(reward, pairs)["metrics"]["eval/accuracy"]
    samples = pd.DataFrame({"prompt": prompts, "SFT": baseline.responses, name: responses})
    if scores is not None:
        samples.insert(2, "SFT gold", baseline.gold_scores)
        samples[f"{name} gold"] = scores
    return metrics, samples
