"""Model registry: explicit names, clear errors, and the tiny models' tokenizer contract."""

from __future__ import annotations

import pytest

from mmrec_gen.models import registry
from mmrec_gen.models.loading import resolve_dtype


def test_registered_names():
    assert {"smollm2-135m-instruct", "tiny-llama", "tiny-llama-smollm2-tokenizer"} <= set(registry.registered_models())


def test_duplicate_name_raises():
    with pytest.raises(ValueError, match="already registered"):
        registry.register_model("tiny-llama", "x:y", "dup")


def test_unknown_bare_name_is_a_clear_error():
    with pytest.raises(ValueError, match="not a registered name"):
        registry.load_model("no-such-model")


def test_dtype_names_are_checked():
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("fp8")


def test_tiny_llama_is_deterministic_and_left_padded(tiny_model):
    again = registry.load_model("tiny-llama")
    first = next(iter(tiny_model.model.state_dict().values()))
    assert (first == next(iter(again.model.state_dict().values()))).all()
    assert tiny_model.tokenizer.padding_side == "left" and tiny_model.tokenizer.chat_template
