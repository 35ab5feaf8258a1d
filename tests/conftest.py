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
