"""Best-of-n rejection sampling: sample n responses, keep the one the reward model likes best.

The alternative to RL when the policy's weights cannot change (Nakano et al. 2021, WebGPT;
Stiennon et al. 2020). Its KL to the sampling policy is known in closed form,

    KL(best-of-n || policy) = log n - (n - 1) / n            (Stiennon et al. 2020; Gao et al. 2022)

(an upper bound, tight when no two samples are equal; Beirami et al. 2024), so best-of-n can sit
in the same table as PPO and DPO, whose KL is measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from .models import Policy
from .reward import checked_scores
from .reward_functions import as_reward

__all__ = ["BestOfN", "kl_of_best_of_n", "sample_best_of_n", "best_of_n_curve"]


@dataclass
class BestOfN:
    """The samples of one best-of-n draw, grouped by prompt."""

    prompts: list[str]  # P prompts
    samples: list[list[str]]  # P lists of n responses, in sampling order
    scores: torch.Tensor  # (P, n) reward of every sample

    def best(self, n: int | None = None) -> list[str]:
        """The highest-scored of the first `n` samples of each prompt (all of them when None)."""
        n = n or self.scores.shape[1]
        if not 1 <= n <= self.scores.shape[1]:
            raise ValueError(f"n must be between 1 and the {self.scores.shape[1]} samples drawn, not {n}")
        picks = self.scores[:, :n].argmax(dim=1)  # (P,)
        return [row[i] for row, i in zip(self.samples, picks.tolist())]

    def best_scores(self, n: int | None = None) -> torch.Tensor:
        n = n or self.scores.shape[1]
        return self.scores[:, :n].max(dim=1).values  # (P,)


def kl_of_best_of_n(n: int) -> float:
    """Nats between best-of-n and the sampling policy (the closed form in the module docstring)."""
    return math.log(n) - (n - 1) / n


def sample_best_of_n(policy: Policy, reward, prompts: list[str], n: int, *, max_new_tokens: int = 48,
                     temperature: float = 1.0, seed: int = 0, batch_size: int = 64) -> BestOfN:
    """Draw `n` samples per prompt and score them all.

    Args:
        policy: the policy to sample from (its weights are not changed).
        reward: a `RewardModel`, `SharedReward`, the gold annotator, a function f(prompts, responses)
            -> list[float], or a `WeightedReward` (`rlhflab.trainers.reward_functions`).
        n: samples per prompt; `BestOfN.best(k)` then gives best-of-k for every k <= n from one draw.

    Examples:
        >>> draw = sample_best_of_n(policy, reward_model, prompts, n=16)  # doctest: +SKIP
        >>> replies = draw.best(4)  # best-of-4 from the first 4 samples  # doctest: +SKIP
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1 samples per prompt, not {n}")
    if not prompts:
        raise ValueError("best-of-n needs at least one prompt")
    repeated = [p for p in prompts for _ in range(n)]  # prompt-major: row i * n + j is sample j of prompt i
    responses = policy.generate(repeated, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                batch_size=batch_size)
    reward = as_reward(reward)
    scores = checked_scores(reward.score(repeated, responses), len(responses), reward)
    scores = scores.view(len(prompts), n)  # (P, n)
    return BestOfN(list(prompts), [responses[i * n:(i + 1) * n] for i in range(len(prompts))], scores)


def best_of_n_curve(draw: BestOfN, gold, baseline: list[str], ns: list[int] | None = None) -> pd.DataFrame:
    """Gold win-rate against `baseline`, KL to the sampling policy, and mean gold and proxy scores, per n,
    in `rlhflab.lab.stages.METRICS`' names (the sampling policy and the baseline are SFT there).

    Args:
        draw: from `sample_best_of_n` with at least max(ns) samples per prompt.
        gold: a `GoldAnnotator` (the tiny world's truth), or anything with `score` and `win_rate`.
        baseline: one response per prompt to win against: a fresh sample of the sampling policy.
        ns: the n to report; powers of two up to the samples drawn by default.
    """
    most = draw.scores.shape[1]
    ns = ns or [2 ** k for k in range(int(math.log2(most)) + 1)]
    rows = []
    for n in ns:
        picked = draw.best(n)
        rows.append({"n": n, "gold/win_rate_vs_sft": gold.win_rate(draw.prompts, picked, baseline),
                     "kl/to_sft": kl_of_best_of_n(n), "gold/mean": gold.mean_score(draw.prompts, picked),
                     "reward/mean": draw.best_scores(n).mean().item()})
    return pd.DataFrame(rows)
