"""The tiny world as a task: its procedural prompts and demonstrations, judged by its gold annotator.

It answers what every task answers (`rlhflab.lab.task`), from the world and its truth: prompts come from
the world's train and held-out topics, demonstrations are the world's good answers, a reward model is
tested on gold-labelled pairs of the world's own candidates, and the gold annotator judges, labels and
scores. Its metrics are named 'gold/...'.
"""

from __future__ import annotations

from .annotate import gold_ratings, label_with_gold
from .gold import GoldAnnotator
from .world import TinyWorld

__all__ = ["WorldTask"]


class WorldTask:
    """The tiny world and its gold annotator, as the stages and the loop take a task.

    Args:
        world: a `TinyWorld` (prompts and demonstrations); a new one when None.
        gold: its `GoldAnnotator`, which judges, labels what people leave, and scores every answer.

    Examples:
        >>> task = WorldTask(TinyWorld(), GoldAnnotator(noise=0.1))
        >>> task.judge_name, len(task.draw("heldout", 3, seed=0))
        ('gold', 3)
    """

    judge_name = "gold"

    def __init__(self, world: TinyWorld | None = None, gold: GoldAnnotator | None = None):
        self.world = world or TinyWorld()
        self.gold = gold or GoldAnnotator(self.world)

    def draw(self, split: str, n: int, seed: int) -> list[str]:
        return [q.text for q in self.world.questions(split, n, seed=seed)]

    def sft_rows(self, n: int, seed: int) -> list[dict]:
        return self.world.demonstrations("train", n, seed=seed)

    def judge(self, prompts: list[str], first: list[str], second: list[str]) -> list[float]:
        """Gold's verdicts as a task's judge gives them: 0 (first is better), 1 (second) or 0.5 (a tie)."""
        return [1.0 - outcome for outcome in self.outcomes(prompts, first, second)]

    def outcomes(self, prompts: list[str], first: list[str], second: list[str]) -> list[float]:
        return self.gold.outcomes(prompts, first, second)

    def preferences(self, prompts: list[str], first: list[str], second: list[str]) -> list[dict]:
        return self.gold.preferences(prompts, first, second)

    def reward_pairs(self, n: int, seed: int) -> list[dict]:
        """Gold-labelled pairs of two random candidates of the world, on held-out topics."""
        return self.gold.preferences(*self.world.candidate_pairs("heldout", n, seed=seed))

    def label(self, store, annotator: str = "gold", seed: int = 0) -> int:
        return len(label_with_gold(store, self.gold, annotator=annotator, seed=seed))

    def ratings(self, policy, n: int, seed: int) -> list[dict]:
        """Thumbs up / down rows of `policy`'s own samples on train prompts, rated by gold (KTO's data)."""
        return gold_ratings(self.world, self.gold, policy, "train", n, seed=seed)
