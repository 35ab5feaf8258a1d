"""The MSE regression head: it learns a known rating signal, fusion modes, leave-one-out, encoders, fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmrec_gen.cli import main
from mmrec_gen.eval.report import evaluate_file, rating_summary
from mmrec_gen.features.text_encoders import item_text
from mmrec_gen.recsys.baselines import MSEConfig, run_baseline
from mmrec_gen.recsys.mse_head import RatingScale, UserProfiles


@pytest.fixture(scope="module")
def rated_data(tmp_path_factory):
    """Synthetic data whose ratings follow user-genre affinity (the genre words are in the item text)."""
    from mmrec_gen.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("rated")
    data = generate_synthetic(root / "data", num_users=150, num_items=120, seed=5, with_images=False)
    return root, str(data)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer random BERT saved with MiniLM's tokenizer: exercises the 'any HF encoder folder' path quickly."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mmrec_gen.features.text_encoders import minilm_dir

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(path)
    return str(path)


@pytest.mark.minilm
@pytest.mark.parametrize("fusion", ["concat", "weighted"])
def test_mse_head_on_minilm_beats_the_global_mean(rated_data, fusion, capsys):
    root, data = rated_data
    out = root / f"mse-{fusion}.jsonl"
    rc = main(["baseline", "mse", "--data", data, "--out", str(out), "--fusion", fusion, "--cache-dir",
               str(root / "cands"), "--embeddings-dir", str(root / "emb")])  # fmt: skip
    assert rc == 0 and "RMSE" in capsys.readouterr().out
    result = evaluate_file(out)
    assert result["n_ratings"] == result["n_users"] == 150
    assert result["rmse"] < result["rmse_global_mean"] - 0.05, result
    assert result["mae"] < result["mae_global_mean"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    meta = rows[0]["meta"]
    assert meta["model"] == "mse-minilm" and meta["mode"] == "baseline" and meta["fusion"] == fusion
    weights = meta["fusion_weights"]
    assert (weights is None) == (fusion == "concat")
    if weights:
        assert sum(weights["user"]) == pytest.approx(1.0) and len(weights["item"]) == 1
    for row in rows:  # ranked by predicted rating; the target's prediction is the row's pred_rating
        scores = dict(zip(row["candidates"], row["scores"], strict=True))
        assert scores[row["ranking"][0]] == max(row["scores"])
        assert row["pred_rating"] == scores[row["target"]] and 1.0 <= row["true_rating"] <= 5.0
    assert len(list((root / "emb").glob("minilm-*.npy"))) == 1  # item embeddings computed once, then reused


def test_leave_one_out_profile_equals_a_profile_built_without_the_item():
    emb = torch.randn(5, 4)
    full = UserProfiles(emb, [[(0, 0.2), (1, 0.9), (3, 0.5)]])
    without = UserProfiles(emb, [[(0, 0.2), (3, 0.5)]])
    u, i, r = torch.tensor([0]), torch.tensor([1]), torch.tensor([0.9])
    a_blocks, a_scalars = full.features(emb, u, i, r, torch.tensor([True]))
    b_blocks, b_scalars = without.features(emb, u, i, r, torch.tensor([False]))
    for a, b in zip([*a_blocks, a_scalars], [*b_blocks, b_scalars], strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert b_scalars[0, 0] == pytest.approx(0.35)  # mean unit rating of the two remaining items


def test_rating_scale_and_item_text():
    from mmrec_gen.data.schema import Item

    scale = RatingScale(0.5, 5.0)
    assert scale.to_unit(5.0) == 1.0 and scale.to_unit(0.5) == 0.0 and scale.from_unit(0.5) == 2.75
    with pytest.raises(ValueError, match="high > low"):
        RatingScale(3.0, 3.0)
    item = Item("7", "Heat (1995)", {"year": "1995", "genres": "Action, Crime"})
    assert item_text(item) == "Heat (1995). genres: Action, Crime; year: 1995"


def test_rating_summary_matches_hand_computed_values():
    meta = {"rating_train_mean": 3.0}
    rows = [
        {"pred_rating": 4.0, "true_rating": 5.0, "meta": meta},
        {"pred_rating": 2.0, "true_rating": 2.0, "meta": meta},
        {"pred_rating": None, "true_rating": None, "error": "x", "meta": meta},
    ]
    s = rating_summary(rows)
    assert s["n_ratings"] == 2
    assert s["rmse"] == pytest.approx(np.sqrt(0.5)) and s["mae"] == pytest.approx(0.5)
    assert s["rmse_global_mean"] == pytest.approx(np.sqrt(2.5)) and s["mae_global_mean"] == pytest.approx(1.5)
    assert rating_summary([{"ranking": ["a"], "meta": {}}]) == {}


def test_any_hf_encoder_folder_and_weighted_fusion(rated_data, tiny_bert):
    root, data = rated_data
    cfg = MSEConfig(data=data, out=str(root / "bert.jsonl"), encoder=tiny_bert, fusion="weighted", epochs=3,
                    max_users=20, cache_dir=str(root / "cands"), embeddings_dir=str(root / "emb"))  # fmt: skip
    run = run_baseline("mse", cfg)
    assert len(run.rows) == 20 and not any(r["error"] for r in run.rows)
    assert run.rows[0]["meta"]["model"] == f"mse-{tiny_bert}" and len(run.info["history"]) == 3


def test_llm_hidden_state_encoder(rated_data):
    root, data = rated_data
    cfg = MSEConfig(data=data, out=str(root / "llm.jsonl"), encoder="llm", llm_model="tiny-llama", epochs=2,
                    max_users=10, cache_dir=str(root / "cands"), embeddings_dir=str(root / "emb"))  # fmt: skip
    run = run_baseline("mse", cfg)
    assert run.rows[0]["meta"]["model"] == "mse-llm-tiny-llama" and len(run.rows) == 10
    assert all(r["pred_rating"] is not None for r in run.rows)


def test_finetune_encoder_updates_weights_and_lowers_the_training_loss(tiny_bert):
    from mmrec_gen.recsys.mse_finetune import EncoderFinetuner, FinetuneParams, user_text

    assert user_text([("Heat", 4.0), ("Up", None)]) == "Heat (4); Up" and user_text([]) == "no history"
    tuner = EncoderFinetuner(tiny_bert, FinetuneParams(epochs=8, lr=3e-3, batch_size=8, seed=0))
    assert tuner.model.config.num_labels == 1 and tuner.model.config.problem_type == "regression"
    pairs = [(f"Film {i} (5)", "Sci-Fi space") if i % 2 else (f"Film {i} (1)", "Romance love") for i in range(32)]
    targets = [1.0 if i % 2 else 0.0 for i in range(32)]
    before = {k: v.clone() for k, v in tuner.model.state_dict().items()}
    tuner.fit(pairs, targets, pairs[:8], targets[:8])
    changed = [k for k, v in tuner.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("encoder.layer.0" in k for k in changed)  # the encoder itself is tuned, not only the head
    assert tuner.history[-1]["train_rmse_unit"] < tuner.history[0]["train_rmse_unit"]
    assert tuner.history[-1]["monitor_rmse_unit"] < 0.3


def test_finetune_option_of_the_mse_command(rated_data, tiny_bert):
    root, data = rated_data
    cfg = MSEConfig(data=data, out=str(root / "ft.jsonl"), encoder=tiny_bert, finetune_encoder=True,
                    finetune_max_ratings=64, max_users=5, cache_dir=str(root / "cands"))  # fmt: skip
    run = run_baseline("mse", cfg)
    assert len(run.rows) == 5 and run.rows[0]["meta"]["finetuned_ratings"] == 64
    assert run.rows[0]["meta"]["model"].startswith("mse-ft-") and run.rows[0]["meta"]["fusion"] is None
    assert rating_summary(run.rows)["n_ratings"] == 5


def test_mse_refuses_data_without_ratings(tmp_path, capsys):
    data = tmp_path / "d"
    data.mkdir()
    (data / "items.jsonl").write_text(
        "".join(json.dumps({"item_id": f"i{i}", "title": f"T{i}"}) + "\n" for i in range(9))
    )
    (data / "interactions.jsonl").write_text(
        "".join(json.dumps({"user_id": "u1", "item_id": f"i{i}", "timestamp": i}) + "\n" for i in range(5))
    )
    assert main(["baseline", "mse", "--data", str(data), "--out", str(tmp_path / "o.jsonl"), "--num-candidates",
                 "4", "--cache-dir", str(tmp_path / "c")]) == 1  # fmt: skip
    assert "has no ratings; the mse baseline predicts ratings" in capsys.readouterr().err


def test_efficientnet_features_separate_genres_and_tolerate_bad_files(tmp_path):
    from mmrec_gen.data.synthetic import generate_synthetic
    from mmrec_gen.features.image_features import image_features, load_efficientnet_lite0

    data = generate_synthetic(tmp_path / "img", num_users=5, num_items=16, seed=1, with_images=True)
    items = [json.loads(line) for line in (data / "items.jsonl").read_text().splitlines()]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    paths = [str(data / it["image"]) for it in items] + [str(broken), None]
    feats = image_features(load_efficientnet_lite0(), paths, size=96)
    assert feats.shape == (18, 1280) and not feats[-2:].any() and feats[:-2].any(axis=1).all()
    # Each genre has its own colour and shape, so images of one primary genre are closer than images of two.
    genre = [it["genres"].split(",")[0] for it in items]
    unit = feats[:-2] / np.linalg.norm(feats[:-2], axis=1, keepdims=True)
    sim = unit @ unit.T
    same = [sim[i, j] for i in range(16) for j in range(i) if genre[i] == genre[j]]
    other = [sim[i, j] for i in range(16) for j in range(i) if genre[i] != genre[j]]
    assert same and np.mean(same) > np.mean(other)


def test_mse_with_item_images_uses_two_item_blocks(tmp_path, tiny_bert):
    from mmrec_gen.data.synthetic import generate_synthetic

    data = generate_synthetic(tmp_path / "img", num_users=20, num_items=40, seed=2, min_len=8, max_len=12)
    cfg = MSEConfig(data=str(data), images=str(data / "images"), out=str(tmp_path / "o.jsonl"), fusion="weighted",
                    encoder=tiny_bert, epochs=2, image_size=64, cache_dir=str(tmp_path / "c"),
                    embeddings_dir=str(tmp_path / "emb"))  # fmt: skip
    run = run_baseline("mse", cfg)
    meta = run.rows[0]["meta"]
    assert meta["model"] == f"mse-{tiny_bert}+image" and len(meta["fusion_weights"]["item"]) == 2
    assert len(run.rows) == 20 and len(list((tmp_path / "emb").glob("efficientnet-lite0-images-*.npy"))) == 1


def test_baseline_and_llm_files_evaluate_in_one_table(rated_data, tiny_bert, capsys):
    """pop, an MSE head and an LLM (`mmrec rank --model tiny-llama`) on one candidate file: one table, one protocol."""
    root, data = rated_data
    common = ["--data", data, "--max-users", "8", "--split", "valid", "--seed", "2", "--cache-dir", str(root / "c2")]
    files = {name: str(root / f"eval-{name}.jsonl") for name in ("pop", "mse", "llm")}
    assert main(["baseline", "pop", *common, "--out", files["pop"]]) == 0
    mse = ["--encoder", tiny_bert, "--epochs", "2", "--embeddings-dir", str(root / "emb")]
    assert main(["baseline", "mse", *common, *mse, "--out", files["mse"]]) == 0
    assert main(["rank", "--model", "tiny-llama", *common, "--no-progress", "--out", files["llm"]]) == 0
    capsys.readouterr()
    assert main(["evaluate", files["pop"], files["mse"], files["llm"]]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("protocol: dataset=data split=valid candidates=") and "seed=2" in table[0]
    assert not any(line.startswith("WARNING") for line in table)
    header, rows = table[1].split(), {line.split()[0]: line.split() for line in table[3:]}
    assert header[:3] == ["File", "Model", "Mode"] and "RMSE" in header and "MAE" in header
    assert rows["eval-pop.jsonl"][1:3] == ["pop", "baseline"] and rows["eval-llm.jsonl"][1:3] == [
        "tiny-llama",
        "score",
    ]
    rmse_col = header.index("RMSE")
    assert rows["eval-pop.jsonl"][rmse_col] == "-" and rows["eval-mse.jsonl"][rmse_col] != "-"
    assert main(["evaluate", "--json", files["mse"], files["llm"]]) == 0
    mse_obj, llm_obj = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert {"rmse", "mae", "rmse_global_mean"} <= mse_obj.keys() and "rmse" not in llm_obj
    assert mse_obj["candidates_hash"] == llm_obj["candidates_hash"] and mse_obj["n_ratings"] == 8
