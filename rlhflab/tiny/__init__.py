"""The embedded default: a seeded world, its gold annotator and a shipped tiny base model."""

from .gold import GoldAnnotator, Verdict
from .world import AXES, Candidate, Question, TinyWorld

__all__ = ["AXES", "Candidate", "GoldAnnotator", "Question", "TinyWorld", "Verdict"]
