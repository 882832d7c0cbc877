"""rlhflab: the whole RLHF loop in notebooks, scored against the tiny world's known truth.

Importing it keeps two known-harmless library messages out of notebooks, where red text reads as a
failure. Each is matched by its source and the start of its text, so every other warning still shows:

- bitsandbytes, on CPUs with AVX512-BF16, asks the `kernels` package at import for a faster 4-bit CPU
  kernel from the hub, and uses its own when that fails. With the hub offline, `kernels` (0.19, which
  transformers 5.25 requires) first logs that it skips the publisher check of that one repository, then
  bitsandbytes logs that the load failed. Nothing here needs the faster kernel, and neither message names
  anything the user can or should do.
- peft reads the model's `is_gradient_checkpointing` when it wraps it in an adapter, and TRL's DPO and KTO
  trainers call `gradient_checkpointing_disable` / `_enable` around their reference passes; transformers 5
  deprecates these names (FutureWarning). The calls are the libraries' own.
"""

import logging
import warnings

BITSANDBYTES_KERNEL_NOTICES = (  # (logger, start of the message)
    ("kernels._internals.hf_hub",
     "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because"),
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
)
CHECKPOINTING_NAME_WARNING = r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated"

# installed before `.trainers.models` imports bitsandbytes, which logs both notices at import
for _logger, _start in BITSANDBYTES_KERNEL_NOTICES:
    logging.getLogger(_logger).addFilter(lambda record, start=_start: not record.getMessage().startswith(start))
del _logger, _start
warnings.filterwarnings("ignore", message=CHECKPOINTING_NAME_WARNING, category=FutureWarning,
                        module="transformers.modeling_utils")

from .lab.task import Task
from .labeling.store import LabelStore, StoreConfig
from .tiny import GoldAnnotator, TinyWorld
from .tiny.annotate import label_with_gold
from .tiny.task import WorldTask
from .trainers.models import Policy, load_policy

__all__ = ["GoldAnnotator", "LabelStore", "PairwiseLabeler", "Policy", "RankingLabeler", "StoreConfig", "Task",
           "TinyWorld", "WorldTask", "label_with_gold", "load_policy"]
__version__ = "0.1.0"
WIDGETS = ("PairwiseLabeler", "RankingLabeler")


def __getattr__(name: str):
    """The widgets load anywidget and their front end on first use only, so training code never does."""
    if name in WIDGETS:
        from .labeling import widget

        return getattr(widget, name)
    raise AttributeError(f"module 'rlhflab' has no attribute {name!r}")


def __dir__() -> list[str]:
    """Tab completion and `dir(rlhflab)` list the lazily loaded widgets too."""
    return sorted(set(globals()) | set(WIDGETS))
