"""The embedded default: a seeded world, its gold annotator and a shipped tiny base model. It labels
through `rlhflab.labeling` as people do, and imports nothing of `rlhflab.trainers` or `rlhflab.lab`."""

from .gold import GoldAnnotator, Verdict
from .world import AXES, Candidate, Question, TinyWorld

__all__ = ["AXES", "Candidate", "GoldAnnotator", "Question", "TinyWorld", "Verdict"]
