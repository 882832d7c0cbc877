"""The tiny base model's files and chat template, without torch: what loaders need to find it."""

from __future__ import annotations

from pathlib import Path

from .world import ASSISTANT_TAG, END_TAG, USER_TAG

__all__ = ["MODEL_DIR", "PAD_TAG", "CHAT_TEMPLATE"]

MODEL_DIR = Path(__file__).parent / "model"  # shipped safetensors, tokenizer and chat template
PAD_TAG = "<|pad|>"

# A Llama/Qwen-style template with the world's role tags: `<|user|>\n...\n<|assistant|>\n...<|end|>`.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}" + USER_TAG + "\n{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT_TAG + "\n{{ message['content'] }}" + END_TAG + "\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT_TAG + "\n{% endif %}"
)
