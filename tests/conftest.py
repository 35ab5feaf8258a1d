"""Shared fixtures: a small synthetic dataset and tiny / real models loaded once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    from mmrec_gen.data.synthetic import generate_synthetic

    return generate_synthetic(
        tmp_path_factory.mktemp("synth"), num_users=40, num_items=80, seed=3, min_len=8, max_len=16
    )


@pytest.fixture(scope="session")
def tiny_model():
    from mmrec_gen.models.registry import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_model_real_tokenizer():
    from mmrec_gen.models.registry import load_model

    return load_model("tiny-llama-smollm2-tokenizer")


@pytest.fixture(scope="session")
def smollm2():
    from mmrec_gen.models.registry import load_model

    return load_model("smollm2-135m-instruct")


# A ChatML template that also takes content blocks ({"type": "image"} -> <image>), for multimodal prompt tests.
MM_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for block in message['content'] %}{% if block['type'] == 'image' %}<image>{% else %}{{ block['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tokenizer():
    """The tiny ChatML byte-level BPE tokenizer (built locally, no download)."""
    from mmrec_gen.models.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def mm_tokenizer():
    """The tiny tokenizer plus an `<image>` special token and a chat template that takes content blocks."""
    from mmrec_gen.models.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.add_tokens(["<image>"], special_tokens=True)
    tok.chat_template = MM_CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def make_dataset():
    """A factory: make_dataset(rows of (user, item, timestamp, rating), items=None, name="hand") -> Dataset whose
    catalogue is `items` (default: the items of the rows), each titled "Title <id>"."""
    import pandas as pd

    from mmrec_gen.data.schema import Dataset, Item

    def make(rows, items=None, name: str = "hand") -> Dataset:
        frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
        frame = frame.astype({"user_id": object, "item_id": object, "timestamp": "int64", "rating": "float64"})
        ids = sorted(set(frame["item_id"])) if items is None else items
        return Dataset(name, "generic", {i: Item(i, f"Title {i}") for i in ids}, frame)

    return make
