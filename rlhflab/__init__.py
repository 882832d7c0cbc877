"""rlhflab: the whole RLHF loop in notebooks, scored against the tiny world's known truth.

Importing it keeps two known-harmless library messages out of notebooks, where red text reads as a
failure. Each is matched by its source and the start of its text, so every other warning still shows:

- bitsandbytes, on CPUs with AVX512-BF16, logs at import that it cannot load a faster 4-bit CPU kernel
  from the `kernels` package, and then uses its own; nothing here needs the faster one.
- peft reads the model's `is_gradient_checkpointing` when it wraps it in an adapter, and TRL's DPO and KTO
  trainers call `gradient_checkpointing_disable` / `_enable` around their reference passes; transformers 5
  deprecates these names (FutureWarning). The calls are the libraries' own.
"""

import logging
import warnings

BITSANDBYTES_KERNELS_NOTICE = ("bitsandbytes.backends.cpu.ops",
                               "Failed to load CPU gemm_4bit_forward from kernels-community")
CHECKPOINTING_NAME_WARNING = r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated"

# installed before `.models` imports bitsandbytes, which logs its notice at import
logging.getLogger(BITSANDBYTES_KERNELS_NOTICE[0]).addFilter(
    lambda record: not record.getMessage().startswith(BITSANDBYTES_KERNELS_NOTICE[1]))
warnings.filterwarnings("ignore", message=CHECKPOINTING_NAME_WARNING, category=FutureWarning,
                        module="transformers.modeling_utils")

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
