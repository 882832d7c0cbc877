"""rlhflab: the whole RLHF loop in notebooks, scored against the tiny world's known truth."""

from .models import Policy, load_policy
from .store import LabelStore, StoreConfig
from .tiny import GoldAnnotator, TinyWorld
from .tiny.annotate import label_with_gold

__all__ = ["GoldAnnotator", "LabelStore", "PairwiseLabeler", "Policy", "RankingLabeler", "StoreConfig", "TinyWorld",
           "label_with_gold", "load_policy"]
__version__ = "0.1.0"
WIDGETS = ("PairwiseLabeler", "RankingLabeler")


def __getattr__(name: str):
    """The widgets load anywidget and their front end on first use only, so training code never does."""
    if name in WIDGETS:
        from . import labeling

        return getattr(labeling, name)
    raise AttributeError(f"module 'rlhflab' has no attribute {name!r}")
