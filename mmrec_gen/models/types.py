"""Types shared by the model registry and its loaders (kept apart so that neither imports the other for them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class LoadedModel:
    name: str
    model: Any  # a transformers PreTrainedModel
    tokenizer: Any  # a transformers tokenizer with a chat template
    dtype: str
    num_parameters: int
    path: str | None = None  # a folder other backends (vLLM) can load, when there is one
    # A LoRA adapter folder to apply at inference but not merged into `model` (vLLM applies it per request).
    adapter: str | None = None
