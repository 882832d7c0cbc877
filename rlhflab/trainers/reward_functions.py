"""Programmatic rewards: plain functions, task metrics and weighted sums, wherever a reward model goes.

A reward, to PPO, best-of-n and ILQL, is anything with `score(prompts, responses) -> Tensor`: a
reward model, `GoldReward`, or what `as_reward` makes of a function `f(prompts, responses) ->
list[float]` (the shape of TRL's reward functions). RL4LMs computed rewards from task metrics the
same way (Ramamurthy et al. 2023); the metric rewards here run offline:

- `length_reward`: closeness to a target length in words;
- `regex_reward`: 1 when a pattern occurs in the response, else 0;
- `chrf_reward`: chrF (Popović 2015, computed by sacrebleu) against a reference answer per prompt.

`WeightedReward` adds them up with weights, for example a reward model plus a length penalty.
Every score passes `checked_scores`, so a function that returns None, the wrong number of scores or
a NaN is named in the error before anything trains on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from .reward import GoldReward, checked_scores

__all__ = ["FunctionReward", "as_reward", "WeightedReward", "length_reward", "regex_reward", "chrf_reward"]


class FunctionReward:
    """A function f(prompts, responses) -> one number per response, as a reward named after it."""

    def __init__(self, function: Callable, name: str | None = None):
        self.function = function
        self.__name__ = name or getattr(function, "__name__", type(function).__name__)

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return checked_scores(self.function(list(prompts), list(responses)), len(responses), self)

    def __repr__(self) -> str:
        return f"FunctionReward({self.__name__})"


def as_reward(reward):
    """Anything a trainer accepts as a reward, as an object with `score(prompts, responses)`.

    A reward model (or any object with `score`) is returned as it is; the gold annotator becomes a
    `GoldReward`; a callable becomes a `FunctionReward`.
    """
    from ..tiny import GoldAnnotator

    if isinstance(reward, GoldAnnotator):  # its own `score` takes one prompt and one response
        return GoldReward(reward)
    if hasattr(reward, "score"):
        return reward
    if callable(reward):
        return FunctionReward(reward)
    raise TypeError(f"a reward must be a reward model, the gold annotator, or a function f(prompts, responses) -> "
                    f"list[float]; got {type(reward).__name__}")


class WeightedReward:
    """sum_i w_i * r_i(prompts, responses), over reward models, functions and the gold annotator.

    >>> reward = WeightedReward((1.0, reward_model), (0.1, length_reward(target=12)))  # doctest: +SKIP
    """

    def __init__(self, *terms: tuple[float, object]):
        if not terms:
            raise ValueError("WeightedReward needs at least one (weight, reward) term")
        for term in terms:
            if not (isinstance(term, tuple) and len(term) == 2 and isinstance(term[0], (int, float))):
                raise TypeError(f"each term of WeightedReward is a (weight, reward) pair, not {term!r}")
        self.terms = [(float(weight), as_reward(reward)) for weight, reward in terms]
        self.__name__ = " + ".join(f"{w:g}*{getattr(r, '__name__', type(r).__name__)}" for w, r in self.terms)

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return sum(weight * checked_scores(reward.score(prompts, responses), len(responses), reward)
                   for weight, reward in self.terms)


def length_reward(target: int) -> FunctionReward:
    """-|words - target| / target: 0 at the target length, -1 at twice it or at nothing."""
    if target < 1:
        raise ValueError(f"length_reward needs a target of at least 1 word, not {target}")

    def length(prompts, responses):
        return [-abs(len(r.split()) - target) / target for r in responses]

    return FunctionReward(length, f"length_reward(target={target})")


def regex_reward(pattern: str, flags: int = re.IGNORECASE) -> FunctionReward:
    """1.0 when `pattern` occurs in the response (re.search), else 0.0."""
    compiled = re.compile(pattern, flags)

    def matches(prompts, responses):
        return [float(compiled.search(r) is not None) for r in responses]

    return FunctionReward(matches, f"regex_reward({pattern!r})")


def chrf_reward(references: Mapping[str, str] | Callable[[str], str]) -> FunctionReward:
    """chrF of the response against the prompt's reference answer, from 0 (nothing shared) to 1.

    `references` maps each prompt to its reference (a dict, or a function of the prompt); a prompt
    without one is an error that names it, rather than a silent zero.
    """
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    reference_of = references if callable(references) else references.__getitem__

    def chrf(prompts, responses):
        scores = []
        for prompt, response in zip(prompts, responses):
            try:
                reference = reference_of(prompt)
            except KeyError:
                raise KeyError(f"chrf_reward has no reference answer for the prompt {prompt[:80]!r}; add it to the "
                               "references") from None
            scores.append(metric.sentence_score(response, [reference]).score / 100)
        return scores

    return FunctionReward(chrf, "chrf_reward")
