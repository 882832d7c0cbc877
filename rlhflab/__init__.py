"""rlhflab: the whole RLHF loop in notebooks, scored against the tiny world's known truth."""

from .models import Policy, load_policy
from .tiny import GoldAnnotator, TinyWorld

__all__ = ["GoldAnnotator", "Policy", "TinyWorld", "load_policy"]
__version__ = "0.1.0"
from .store import LabelStore, StoreConfig  # noqa: E402  (labeling: the durable label store)
from .labeling import PairwiseLabeler, RankingLabeler, label_with_gold  # noqa: E402
__all__ += ["LabelStore", "PairwiseLabeler", "RankingLabeler", "StoreConfig", "label_with_gold"]
