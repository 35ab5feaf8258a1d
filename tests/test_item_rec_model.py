"""The item-token recommender as a transformers model (models/item_rec.py), on a tiny Llama: the splice, the Auto
classes, save_pretrained -> from_pretrained, the feature-table and finiteness checks, and merge -> rank --model."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

N_ITEMS = 6


def _model(tiny_model, **fields):
    from mmrec_gen.models.item_rec import ItemRecForRanking, item_rec_config

    rng = np.random.default_rng(0)
    tables = {
        "cf": rng.normal(size=(N_ITEMS, 5)).astype("float32"),
        "text": rng.normal(size=(N_ITEMS, 7)).astype("float32"),
    }
    lm = copy.deepcopy(tiny_model.model)
    config = item_rec_config(lm, item_ids=[f"i{k}" for k in range(N_ITEMS)], tables=tables, num_layers=1,
                             item_token_id=3, base_model="tiny-llama", **fields)  # fmt: skip
    return ItemRecForRanking.from_language_model(lm, config, tables=tables).eval(), tables


IDS = torch.tensor([[5, 3, 6, 3, 7], [0, 5, 3, 8, 9]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
POS = (MASK.cumsum(-1) - 1).clamp(min=0)
SLOTS = torch.tensor([[0, 4], [2, -1]])


def test_the_splice_puts_each_items_token_at_its_placeholder_only(tiny_model):
    model, _ = _model(tiny_model)
    embeds = model.embed_prompts(IDS, SLOTS)
    reps = model.item_tokens.item_reps(torch.tensor([0, 4, 2]))
    torch.testing.assert_close(embeds[0, 1], reps[0])
    torch.testing.assert_close(embeds[0, 3], reps[1])
    torch.testing.assert_close(embeds[1, 2], reps[2])
    plain = model.get_input_embeddings()(IDS)
    torch.testing.assert_close(embeds[0, [0, 2, 4]], plain[0, [0, 2, 4]])
    torch.testing.assert_close(embeds[1, [0, 1, 3, 4]], plain[1, [0, 1, 3, 4]])


def test_the_splice_refuses_a_slot_item_count_mismatch(tiny_model):
    model, _ = _model(tiny_model)
    with pytest.raises(ValueError, match="prompt row 0: 2 item placeholders for 1 item slots"):
        model(input_ids=IDS, attention_mask=MASK, item_indices=torch.tensor([[0, -1], [2, -1]]))
    with pytest.raises(ValueError, match="outside the catalogue of 6"):
        model(input_ids=IDS, attention_mask=MASK, item_indices=torch.tensor([[0, 9], [2, -1]]))


def test_candidate_scores_are_the_catalogue_scores_of_those_items(tiny_model):
    model, _ = _model(tiny_model)
    with torch.no_grad():
        every = model(input_ids=IDS, attention_mask=MASK, position_ids=POS, item_indices=SLOTS).item_scores
        some = model(input_ids=IDS, attention_mask=MASK, position_ids=POS, item_indices=SLOTS,
                     candidate_indices=torch.tensor([[1, 2], [5, 0]])).item_scores  # fmt: skip
    assert every.shape == (2, N_ITEMS)
    torch.testing.assert_close(some, torch.stack([every[0, [1, 2]], every[1, [5, 0]]]))


def test_save_pretrained_then_auto_classes_give_identical_scores(tiny_model, tmp_path):
    from transformers import AutoConfig, AutoModel

    import mmrec_gen  # noqa: F401 - registers the model type with the Auto classes

    model, _ = _model(tiny_model)
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config).__name__ == "ItemRecConfig" and config.text_config.num_hidden_layers == 1
    assert config.item_ids == [f"i{k}" for k in range(N_ITEMS)] and config.sources == ["cf", "text"]
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == "ItemRecForRanking"
    inputs = dict(input_ids=IDS, attention_mask=MASK, position_ids=POS, item_indices=SLOTS)
    with torch.no_grad():
        # Identical weights; the tolerance only covers the thread count of the matmuls (full-suite runs differ).
        torch.testing.assert_close(loaded(**inputs).item_scores, model(**inputs).item_scores, rtol=0, atol=1e-6)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
    loaded.check_tables()  # the feature tables are saved weights: nothing to refit


def test_other_feature_tables_are_refused(tiny_model, tmp_path):
    model, tables = _model(tiny_model)
    model.item_tokens.set_tables({**tables, "cf": tables["cf"] * 2})
    with pytest.raises(ValueError, match=r"feature tables \(cf\) are not the ones it was trained on"):
        model.check_tables()
    model.item_tokens.set_tables(tables)
    model.check_tables()


def test_a_hand_edited_config_names_the_field(tiny_model, tmp_path):
    from mmrec_gen.models.item_rec_io import read_item_rec_config

    model, _ = _model(tiny_model)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for field, value, message in (("head", "foo", "head: one of labels, items"),
                                  ("source_dims", {"cf": 5, "sound": 3}, "source_dims: sources must be among"),
                                  ("item_token_id", "3", "item_token_id: a token id"),
                                  ("recipe", {"max_history": "8"}, "recipe.max_history: an integer >= 1"),
                                  ("recipe", {"max_history": [10]}, "recipe.max_history: an integer >= 1"),
                                  ("recipe", {"max_text_chars": -1}, "recipe.max_text_chars: an integer >= 1"),
                                  ("recipe", {"split": "train"}, "recipe.split: valid or test")):  # fmt: skip
        (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))
        with pytest.raises(ValueError, match=message) as err:
            read_item_rec_config(tmp_path)
        assert str(tmp_path / "config.json") in str(err.value)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list"):
        read_item_rec_config(tmp_path)


def test_non_finite_weights_are_refused_when_the_model_opens(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    from mmrec_gen.models.item_rec_io import load_item_rec

    model, _ = _model(tiny_model)
    model.save_pretrained(tmp_path)
    tiny_model.tokenizer.save_pretrained(tmp_path)
    load_item_rec(tmp_path, dtype="float32")
    state = load_file(str(tmp_path / "model.safetensors"))
    state["item_tokens.head.weight"][0, 0] = float("nan")
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="hold NaN or infinite values .first: item_tokens.head.weight"):
        load_item_rec(tmp_path, dtype="float32")


@pytest.mark.minilm
def test_merge_writes_one_folder_that_ranks_as_the_adapter_does(synth_dir, tmp_path):
    from mmrec_gen.cli import main
    from mmrec_gen.data.results import read_results
    from mmrec_gen.train.config import SFTTrainConfig
    from mmrec_gen.train.item_rec_trainer import run_item_sft

    adapter = tmp_path / "adapter"
    run_item_sft(SFTTrainConfig(
        data=str(synth_dir), output_dir=str(adapter), model="tiny-llama", dtype="float32", item_tokens="cf,text",
        head="items", max_history=8, windows_per_user=2, max_steps=2, per_device_train_batch_size=4,
        gradient_accumulation_steps=1, learning_rate=1e-2, save_steps=100, progress=False, num_layers=1,
    ))  # fmt: skip
    merged = tmp_path / "merged"
    assert main(["train", "merge", "--adapter", str(adapter), "--out", str(merged), "--dtype", "float32"]) == 0
    assert sorted(p.name for p in merged.iterdir() if p.suffix in (".json", ".safetensors")) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]  # fmt: skip
    common = ["rank", "--data", str(synth_dir), "--max-users", "6", "--progress", "false", "--dtype", "float32"]
    assert main([*common, "--adapter", str(adapter), "--model", "tiny-llama", "--out", str(tmp_path / "a.jsonl")]) == 0
    assert main([*common, "--model", str(merged), "--out", str(tmp_path / "m.jsonl")]) == 0
    a, m = read_results(tmp_path / "a.jsonl"), read_results(tmp_path / "m.jsonl")
    assert [r["ranking"] for r in a] == [r["ranking"] for r in m]
    np.testing.assert_allclose([r["scores"] for r in a], [r["scores"] for r in m], atol=1e-5)
    assert m[0]["meta"]["head"] == "items" and m[0]["meta"]["template"] == "rec_items"
