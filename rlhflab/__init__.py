"""rlhflab: the whole RLHF loop in notebooks, scored against the tiny world's known truth."""

from .models import Policy, load_policy
from .tiny import GoldAnnotator, TinyWorld

__all__ = ["GoldAnnotator", "Policy", "TinyWorld", "load_policy"]
__version__ = "0.1.0"
