"""The gold annotator: the tiny world's known truth about which response is better.

It reads any prompt of the world and any response text (a model's samples included) and scores
the response as a documented sum over the quality axes of `rlhflab.tiny.world`:

    score =  1.0  if the response names the thing asked about            (on topic)
           + 2.0  if it states the true value and no other value          (correct)
           - 0.5  if it names the thing but states a wrong value          (false fact)
           + 1.0  if it uses a polite phrase                              (polite)
           - 1.5  if it uses a rude phrase                                (rude)
           - 0.1  per word beyond 20 words, at most 2.5                   (rambling)
           - 1.0  per repeated sentence, at most 2.0                      (repetition)
           - 3.0  x the share of words the world does not know            (gibberish)

So a fact counts only in a response on topic, and an on-topic answer with a wrong fact (0.5)
still beats an off-topic one (0.0) of the same length. An empty response scores EMPTY_SCORE. A
comparison prefers the higher score; scores within TIE_WIDTH are a tie, and when both are below
BOTH_BAD_BELOW the verdict is "both_bad". A thumbs rating of one response is up from
THUMBS_UP_FROM: on topic and right, and not rude. With `noise` > 0 a share of the decided
comparisons and of the ratings is flipped, to mimic annotators who disagree (about 27% of
InstructGPT's comparisons, Ouyang et al. 2022, sec. 5.1 / appendix B).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .world import (ATTRIBUTES, POLITE_CLOSERS, POLITE_OPENERS, QUESTIONS, RUDE_CLOSERS,
                    RUDE_OPENERS, TinyWorld, words)

__all__ = ["EMPTY_SCORE", "STRENGTHS", "Verdict", "GoldAnnotator"]

EMPTY_SCORE = -4.0  # an empty response is worse than any rude, wrong one
TIE_WIDTH = 0.25  # |score difference| below this is a tie
BOTH_BAD_BELOW = -1.0  # both scores below this: "both_bad"
THUMBS_UP_FROM = 2.0  # a rating is 'up' from this score: on topic and right (3.0), and not rude (1.5)
CONCISE_WORDS = 20  # words a complete, polite answer needs at most
STRENGTHS = ((1.0, "slightly"), (2.5, "clearly"), (float("inf"), "much"))  # |difference| upper bounds


@dataclass(frozen=True)
class Verdict:
    """The gold annotator's judgement of a pair: choice in {'a', 'b', 'tie', 'both_bad'}."""

    choice: str
    strength: str | None  # 'slightly' | 'clearly' | 'much' when a side won
    score_a: float
    score_b: float
    flipped: bool  # True when the noise setting flipped this comparison


def _phrase_pattern(phrases: list[str]) -> re.Pattern:
    return re.compile("|".join(r"\b" + re.escape(" ".join(words(p))) + r"\b" for p in phrases))


_POLITE = _phrase_pattern(POLITE_OPENERS + POLITE_CLOSERS)
_RUDE = _phrase_pattern(RUDE_OPENERS + RUDE_CLOSERS)
_QUESTION_PATTERNS = [
    (attribute, re.compile(re.escape(phrasing).replace(re.escape("{t}"), r"(?P<thing>[a-z]+)"), re.I))
    for attribute, phrasings in QUESTIONS.items() for phrasing in phrasings
]


class GoldAnnotator:
    """Scores responses and compares pairs the way a careful person in the tiny world would.

    Args:
        world: the world whose facts are the truth.
        noise: share of decided comparisons flipped to the other side (0 = always gold).
        seed: seeds the noise, so a labeled run can be reproduced.

    Examples:
        >>> world = TinyWorld()
        >>> gold = GoldAnnotator(world)
        >>> q = world.questions("train", 1)[0]
        >>> good, rude = world.respond(q, random.Random(0)), world.respond(q, random.Random(0), polite=False)
        >>> gold.compare(q.text, good.text, rude.text).choice
        'a'
    """

    def __init__(self, world: TinyWorld | None = None, noise: float = 0.0, seed: int = 0):
        if not 0.0 <= noise <= 0.5:
            raise ValueError(f"noise must be a share between 0 and 0.5, not {noise}")
        self.world = world or TinyWorld()
        self.noise = noise
        self._rng = random.Random(f"gold:{seed}")
        self._known_words = self.world.vocabulary_words()

    def parse(self, prompt: str) -> tuple[str, str]:
        """(thing, attribute) asked about in a prompt of the world."""
        for attribute, pattern in _QUESTION_PATTERNS:
            match = pattern.search(prompt)
            if match and (match["thing"].lower(), attribute) in self.world.facts:
                return match["thing"].lower(), attribute
        raise ValueError(f"not a prompt of the tiny world: {prompt[:80]!r}; "
                         "draw prompts from TinyWorld.questions()")

    def axes(self, prompt: str, response: str) -> dict[str, float]:
        """The score's parts (see the module docstring), keyed by axis."""
        thing, attribute = self.parse(prompt)
        ws = words(response)
        joined = " ".join(ws)
        stated = {v for v in ATTRIBUTES[attribute][0] if v in ws}
        on_topic = thing in ws
        correct = on_topic and stated == {self.world.true_value(thing, attribute)}
        sentences = [" ".join(words(s)) for s in re.split(r"[.!?]+", response) if words(s)]
        repeats = len(sentences) - len(set(sentences))
        unknown = sum(w not in self._known_words for w in ws) / max(len(ws), 1)
        return {
            "on_topic": 1.0 * on_topic,
            "correct": 2.0 * correct,
            "false_fact": -0.5 * (on_topic and bool(stated) and not correct),
            "polite": 1.0 * bool(_POLITE.search(joined)),
            "rude": -1.5 * bool(_RUDE.search(joined)),
            "rambling": -min(0.1 * max(len(ws) - CONCISE_WORDS, 0), 2.5),
            "repetition": -min(1.0 * repeats, 2.0),
            "gibberish": -3.0 * unknown,
        }

    def score(self, prompt: str, response: str) -> float:
        if not words(response):
            return EMPTY_SCORE
        return round(sum(self.axes(prompt, response).values()), 6)

    def compare(self, prompt: str, response_a: str, response_b: str) -> Verdict:
        score_a, score_b = self.score(prompt, response_a), self.score(prompt, response_b)
        difference = score_a - score_b
        if max(score_a, score_b) < BOTH_BAD_BELOW:
            return Verdict("both_bad", None, score_a, score_b, False)
        if abs(difference) < TIE_WIDTH:
            return Verdict("tie", None, score_a, score_b, False)
        flipped = self._rng.random() < self.noise
        a_wins = (difference > 0) != flipped
        strength = next(name for bound, name in STRENGTHS if abs(difference) < bound)
        return Verdict("a" if a_wins else "b", strength, score_a, score_b, flipped)

    def rate(self, prompt: str, response: str) -> bool:
        """Thumbs up (True) or down for one response; `noise` flips a share of the ratings."""
        return (self.score(prompt, response) >= THUMBS_UP_FROM) != (self._rng.random() < self.noise)

    def mean_score(self, prompts: list[str], responses: list[str]) -> float:
        """Mean gold score of `responses` to `prompts`."""
        if len(prompts) != len(responses) or not prompts:
            raise ValueError("mean_score needs equally long, non-empty lists of prompts and responses")
        return sum(self.score(p, r) for p, r in zip(prompts, responses)) / len(prompts)

    def outcomes(self, prompts: list[str], responses: list[str], baseline: list[str]) -> list[float]:
        """Per prompt: 1.0 when `responses` beat `baseline` by gold score, 0.0 when they lose, 0.5 for a tie."""
        if not (len(prompts) == len(responses) == len(baseline)) or not prompts:
            raise ValueError("win_rate needs equally long, non-empty lists of prompts and responses")
        differences = [self.score(p, ours) - self.score(p, theirs)
                       for p, ours, theirs in zip(prompts, responses, baseline)]
        return [1.0 if d >= TIE_WIDTH else 0.5 if abs(d) < TIE_WIDTH else 0.0 for d in differences]

    def win_rate(self, prompts: list[str], responses: list[str], baseline: list[str]) -> float:
        """Share of prompts where `responses` beat `baseline` by gold score (ties count half)."""
        outcomes = self.outcomes(prompts, responses, baseline)
        return sum(outcomes) / len(outcomes)

    def preferences(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> list[dict]:
        """Label pairs as TRL preference rows: prompt, chosen, rejected, strength.

        Ties and "both_bad" verdicts say nothing about which side is better, so they give no row
        (the label store keeps them; only the reward model's pairs leave them out).
        """
        rows = []
        for prompt, a, b in zip(prompts, responses_a, responses_b, strict=True):
            verdict = self.compare(prompt, a, b)
            if verdict.choice in ("a", "b"):
                chosen, rejected = (a, b) if verdict.choice == "a" else (b, a)
                rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "strength": verdict.strength})
        return rows

