"""The `llm` text encoder: mean-pooled last hidden states of a registered LLM, loaded read-only.

It lives with the LLMs (not in features/) because it loads one through the model registry; the result is an
ordinary `features.text_encoders.TextEncoder`, so it goes through the same embedding cache.
"""

from __future__ import annotations

from typing import Any

from mmrec_gen.features.text_encoders import TextEncoder
from mmrec_gen.models.registry import load_model


def load_llm_encoder(*, llm_model: str = "smollm2-135m-instruct", max_length: int = 256, **_: Any) -> TextEncoder:
    loaded = load_model(llm_model, dtype="float32")
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return TextEncoder(f"llm-{loaded.name}", loaded.model, tokenizer, max_length, hidden_states=True, path=loaded.path)
