"""Item tokens (LLaVA-style projectors over item features) and the item head, on tiny models and synthetic data:
slots land exactly at items, gradients reach LoRA + projectors + head only, the item head is order-free, cached
features equal fresh ones, mismatched data is refused, and a killed run resumes to the same adapter."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from training_helpers import Killed, adapter_state, kill_after_save

from mmrec_gen.data.schema import Item
from mmrec_gen.models.item_tokens import table_fingerprint
from mmrec_gen.prompting.item_slots import ITEM_TOKEN
from mmrec_gen.prompting.render import HistoryEntry, PromptBuilder

pytestmark = pytest.mark.minilm  # the text source uses all-MiniLM-L6-v2 from its wheel


def _items(n: int, prefix: str = "i") -> list[Item]:
    return [Item(f"{prefix}{k}", f"Title {k}", {"genres": "Drama"}) for k in range(n)]


# ------------------------------------------------------------------------------------------------ prompt slots
def test_placeholders_land_exactly_at_item_slots(tokenizer):
    tok = copy.deepcopy(tokenizer)
    builder = PromptBuilder(tok, "rec_labels", item_tokens=True)
    history = [HistoryEntry(i, 4.0) for i in _items(5, "h")]
    # A title that holds the placeholder string must not create a slot: it is neutralized like a control token.
    forged = Item("c_forged", f"Evil {ITEM_TOKEN} title {ITEM_TOKEN}")
    candidates = [*_items(3, "c"), forged]
    prompt = builder.rank("u1", history, candidates)
    placeholder = tok.convert_tokens_to_ids(ITEM_TOKEN)
    assert prompt.input_ids.count(placeholder) == len(history) + len(candidates) == 9
    assert prompt.item_slots == ["h0", "h1", "h2", "h3", "h4", "c0", "c1", "c2", "c_forged"]
    # Each slot follows its own line's label: the candidate lines read "A <slot>", "B <slot>", ...
    text_lines = [line for line in prompt.prompt_text.splitlines() if ITEM_TOKEN in line]
    assert text_lines[5:] == [f"A {ITEM_TOKEN}", f"B {ITEM_TOKEN}", f"C {ITEM_TOKEN}", f"D {ITEM_TOKEN}"]
    # The forged title is not printed by this template; in a template that prints titles it stays text.
    listwise = PromptBuilder(tok, "rank_listwise", item_tokens=True).rank("u1", history, candidates)
    assert listwise.input_ids.count(placeholder) == 0 and listwise.item_slots == []
    assert "Evil" in listwise.prompt_text


def test_without_item_tokens_the_rec_template_has_no_slots(tokenizer):
    prompt = PromptBuilder(tokenizer, "rec_items").rank("u1", [HistoryEntry(i) for i in _items(3)], [])
    assert prompt.item_slots == [] and ITEM_TOKEN not in prompt.prompt_text


def test_history_truncation_keeps_slots_and_ids_aligned(tokenizer):
    tok = copy.deepcopy(tokenizer)
    builder = PromptBuilder(tok, "rec_items", item_tokens=True, max_model_len=120, max_new_tokens=1, max_history=50)
    prompt = builder.rank("u1", [HistoryEntry(i) for i in _items(40)], [])
    assert prompt.truncated and 0 < prompt.n_history_used < 40
    assert prompt.item_slots == [f"i{k}" for k in range(40 - prompt.n_history_used, 40)]
    assert prompt.input_ids.count(tok.convert_tokens_to_ids(ITEM_TOKEN)) == prompt.n_history_used


# ------------------------------------------------------------------------------------------------ the module
def test_fingerprints_follow_values_and_shape():
    a = np.ones((3, 2), np.float32)
    assert table_fingerprint(a) == table_fingerprint(a.copy())
    assert table_fingerprint(a) != table_fingerprint(a * 2)
    assert table_fingerprint(a).startswith("3x2:") and table_fingerprint(np.ones((2, 3))).startswith("2x3:")


# ------------------------------------------------------------------------------------------------ training
def _train_cfg(synth_dir, out, **overrides):
    from mmrec_gen.train.config import SFTTrainConfig

    values = dict(
        data=str(synth_dir), output_dir=str(out), model="tiny-llama", dtype="float32", item_tokens="cf,text",
        head="items", max_history=8, windows_per_user=3, max_steps=4, per_device_train_batch_size=4,
        gradient_accumulation_steps=1, learning_rate=1e-2, save_steps=2, logging_steps=1, progress=False,
        lora_dropout=0.1,
    )  # fmt: skip
    values.update(overrides)
    return SFTTrainConfig(**values)


def test_one_step_moves_lora_projectors_and_head_but_not_the_base(synth_dir, tmp_path):
    from mmrec_gen.train.item_data import ItemRecCollator, item_head_examples, training_rows
    from mmrec_gen.train.item_rec_trainer import lora_item_model, new_item_model, prepare_run

    cfg = _train_cfg(synth_dir, tmp_path / "o")
    (tmp_path / "o").mkdir()
    run = prepare_run(cfg, "sft")
    examples, _ = item_head_examples(cfg, run.ds, run.split_result, run.builder, run.index)
    # Every slot predicts the next item of its window, and the answer position the window's last item.
    first = examples[0]
    assert len(first.targets) == first.prompt.n_history_used + 1
    model = lora_item_model(cfg, new_item_model(cfg, run))
    batch = ItemRecCollator(run.loaded.tokenizer.pad_token_id, run.builder.item_token_id)(
        training_rows(examples[:4], "items", run.index)
    )
    assert int((batch["item_labels"] != -100).sum()) == sum(len(e.targets) for e in examples[:4])
    model(**batch).loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("lora_B" in n for n in trained)
    assert any("item_tokens.modules_to_save.default.projectors.cf" in n for n in trained)
    assert any("item_tokens.modules_to_save.default.projectors.text" in n for n in trained)
    assert {n for n in trained if n.endswith(("head.weight", "head.bias")) and "item_tokens" in n}
    base = [n for n, p in model.named_parameters() if "lora_" not in n and "modules_to_save" not in n]
    assert base and all(not dict(model.named_parameters())[n].requires_grad for n in base)


def test_resume_after_a_kill_gives_the_same_adapter(synth_dir, tmp_path):
    from mmrec_gen.train.item_rec_trainer import run_item_sft as run_sft

    summary = run_sft(_train_cfg(synth_dir, tmp_path / "whole"))
    assert summary["steps"] == 4 and summary["examples"] > 40
    with pytest.raises(Killed):
        run_sft(_train_cfg(synth_dir, tmp_path / "killed"), callbacks=[kill_after_save(2)])
    assert (tmp_path / "killed" / "checkpoint-2").is_dir()
    assert not (tmp_path / "killed" / "adapter_model.safetensors").exists()
    with pytest.raises(ValueError, match="learning_rate"):
        run_sft(_train_cfg(synth_dir, tmp_path / "killed", learning_rate=1e-3))
    resumed = run_sft(_train_cfg(synth_dir, tmp_path / "killed"))
    assert resumed["resumed_from"].endswith("checkpoint-2")
    whole, again = adapter_state(tmp_path / "whole"), adapter_state(tmp_path / "killed")
    assert whole.keys() == again.keys() and any(k.startswith("item_tokens.projectors.") for k in whole)
    assert {"item_tokens.table_cf", "item_tokens.table_text"} <= whole.keys()  # the feature tables travel along
    for key in whole:
        torch.testing.assert_close(again[key], whole[key], atol=1e-6, rtol=0)
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert config["model_type"] == "mmrec_item_rec" and config["head"] == "items"
    assert list(config["source_dims"]) == ["cf", "text"] and config["recipe"]["template"] == "rec_items"


# ------------------------------------------------------------------------------------------------ features
def test_cached_features_equal_fresh_ones(synth_dir, tmp_path):
    from mmrec_gen.data.loaders import load_dataset
    from mmrec_gen.data.split import split_dataset
    from mmrec_gen.recsys.item_features import build_item_features

    ds = load_dataset(str(synth_dir))
    split_result = split_dataset(ds)
    first = build_item_features(ds, split_result, ["cf", "text"], split="test", seed=0, cache_dir=tmp_path / "a")
    cached = build_item_features(ds, split_result, ["cf", "text"], split="test", seed=0, cache_dir=tmp_path / "a")
    fresh = build_item_features(ds, split_result, ["cf", "text"], split="test", seed=0, cache_dir=tmp_path / "b")
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "a").iterdir()) == ["minilm", "sasrec"]
    for source in ("cf", "text"):
        np.testing.assert_array_equal(cached.tables[source], first.tables[source])
        np.testing.assert_allclose(fresh.tables[source], first.tables[source], atol=1e-5)
    assert first.tables["cf"].shape == (len(ds.items), 64) and first.tables["text"].shape == (len(ds.items), 384)
    # Another split fits SASRec on another training view: another table.
    valid = build_item_features(ds, split_result, ["cf"], split="valid", seed=0, cache_dir=tmp_path / "a")
    assert not np.allclose(valid.tables["cf"], first.tables["cf"])


# ------------------------------------------------------------------------------------------------ ranking
@pytest.fixture(scope="module")
def item_adapter(synth_dir, tmp_path_factory):
    from mmrec_gen.train.item_rec_trainer import run_item_sft as run_sft

    out = tmp_path_factory.mktemp("item_adapter")
    run_sft(_train_cfg(synth_dir, out, max_steps=2))
    return out


def _rank(synth_dir, adapter, out, **overrides):
    from mmrec_gen.rank.pipeline import run_rank
    from mmrec_gen.rank.rank_config import RankConfig

    values = dict(data=str(synth_dir), out=str(out), model="tiny-llama", adapter=str(adapter), progress=False)
    values.update(overrides)
    return run_rank(RankConfig(**values))


def test_rank_reads_everything_from_the_adapter(synth_dir, item_adapter, tmp_path):
    rows = _rank(synth_dir, item_adapter, tmp_path / "r.jsonl", max_users=6)
    assert len(rows) == 6 and all(r["valid"] and r["error"] is None for r in rows)
    for r in rows:
        assert sorted(r["ranking"]) == sorted(r["candidates"]) and len(r["scores"]) == len(r["candidates"])
        assert r["ranking"][0] == r["candidates"][int(np.argmax(r["scores"]))]
        assert r["meta"]["template"] == "rec_items" and r["meta"]["head"] == "items"


def test_item_head_scores_do_not_depend_on_candidate_order(synth_dir, item_adapter, tmp_path):
    rows = _rank(synth_dir, item_adapter, tmp_path / "a.jsonl", max_users=5)
    # Rank the same users with every candidate list reversed (a candidate file written the library's way).
    from mmrec_gen.data.candidates import write_candidate_file
    from mmrec_gen.data.schema import CandidateRow

    reversed_file = write_candidate_file(
        [CandidateRow(r["user_id"], tuple(r["candidates"][::-1]), r["target"]) for r in rows],
        dataset=rows[0]["meta"]["dataset"], split="test", seed=0, num_candidates=20, out_dir=tmp_path,
    )  # fmt: skip
    reversed_rows = _rank(synth_dir, item_adapter, tmp_path / "b.jsonl", candidates=reversed_file.path)
    for a, b in zip(rows, reversed_rows, strict=True):
        assert a["candidates"] == b["candidates"][::-1]
        assert np.allclose(a["scores"], b["scores"][::-1], atol=1e-5)
        assert a["ranking"] == b["ranking"]


def test_an_adapter_is_refused_on_another_catalogue_or_split(synth_dir, item_adapter, tmp_path, monkeypatch):
    from mmrec_gen.data.synthetic import generate_synthetic

    other = generate_synthetic(tmp_path / "other", num_users=40, num_items=60, seed=4, min_len=8, max_len=16)

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the catalogue was checked")

    monkeypatch.setattr("mmrec_gen.models.registry.load_model", refuse)
    with pytest.raises(ValueError, match="trained on a catalogue of 80 items"):
        _rank(other, item_adapter, tmp_path / "x.jsonl", max_users=2)
    with pytest.raises(ValueError, match="--split test"):
        _rank(synth_dir, item_adapter, tmp_path / "y.jsonl", split="valid", max_users=2)


def test_label_head_with_item_tokens_trains_and_ranks_with_permutations(synth_dir, tmp_path):
    from mmrec_gen.train.item_rec_trainer import run_item_sft

    out = tmp_path / "labels"
    summary = run_item_sft(_train_cfg(synth_dir, out, head="labels", item_tokens="cf", num_candidates=5, max_steps=2))
    assert summary["path"] == "item-tokens/labels" and summary["steps"] == 2
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["template"] == "rec_labels" and list(config["source_dims"]) == ["cf"]
    rows = _rank(synth_dir, out, tmp_path / "l.jsonl", max_users=4, num_candidates=5)
    assert all(r["valid"] and sorted(r["ranking"]) == sorted(r["candidates"]) for r in rows)
    assert rows[0]["meta"]["head"] == "labels" and rows[0]["meta"]["mode"] == "score"
    permuted = _rank(synth_dir, out, tmp_path / "p.jsonl", max_users=4, num_candidates=5, permutations=3)
    assert permuted[0]["meta"]["permutations"] == 3
    assert [r["scores"] for r in permuted] != [r["scores"] for r in rows]
