"""`--num-candidates all`: the item head ranks the whole catalogue (minus each user's history), rows keep the top
of the ranking and the held-out item's rank, and `mmrec evaluate` scores them with the same metrics."""

from __future__ import annotations

import json

import pytest

from mmrec_gen.data.rows import catalogue_row


@pytest.fixture(scope="module")
def cf_adapter(synth_dir, tmp_path_factory):
    from mmrec_gen.train.config import SFTTrainConfig
    from mmrec_gen.train.item_rec_trainer import run_item_sft

    out = tmp_path_factory.mktemp("cf_items")
    run_item_sft(SFTTrainConfig(
        data=str(synth_dir), output_dir=str(out), model="tiny-llama", dtype="float32", item_tokens="cf",
        head="items", max_history=8, windows_per_user=2, max_steps=2, per_device_train_batch_size=4,
        gradient_accumulation_steps=1, save_steps=100, logging_steps=1, progress=False,
    ))  # fmt: skip
    return out


def test_all_item_candidates_are_the_catalogue_minus_the_history(synth_dir):
    from mmrec_gen.data.candidates import all_item_candidates
    from mmrec_gen.data.loaders import load_dataset
    from mmrec_gen.data.split import split_dataset

    ds = load_dataset(str(synth_dir))
    split_result = split_dataset(ds)
    cand = all_item_candidates(ds, split_result, "test", 0)
    assert len(cand.rows) == len(split_result.users) and cand.num_candidates == 0
    for row in cand.rows:
        user = split_result.users[row.user_id]
        assert row.target == user.history_and_target("test")[1].item_id
        assert set(row.candidates) == (set(ds.items) - set(user.all_item_ids)) | {row.target}
        assert len(set(row.candidates)) == len(row.candidates)
    # The valid split has another target, and so another list.
    assert all_item_candidates(ds, split_result, "valid", 0).content_hash != cand.content_hash


def test_catalogue_row_keeps_the_top_and_the_target_rank():
    row = {"user_id": "u", "candidates": ["a", "b", "c", "d"], "ranking": ["c", "a", "d", "b"], "target": "d",
           "scores": [1.0, 0.0, 3.0, 0.5], "valid": True, "error": None, "meta": {}}  # fmt: skip
    cut = catalogue_row(row, keep=2)
    assert cut["ranking"] == ["c", "a"] and cut["target_rank"] == 3 and cut["catalogue_size"] == 4
    assert cut["candidates"] is None and cut["scores"] is None


def _row(uid, ranking, target, rank, size):
    return {"user_id": uid, "candidates": None, "ranking": ranking, "target": target, "valid": True, "error": None,
            "errors": {}, "target_rank": rank, "catalogue_size": size, "meta": {"candidates_hash": "h"}}  # fmt: skip


def test_evaluate_scores_whole_catalogue_rows_by_hand():
    from mmrec_gen.eval.metrics import ranking_metrics

    rows = [
        _row("a", ["t", "x", "y"], "t", 1, 500),  # hit at 1
        _row("b", ["x", "t", "y"], "t", 2, 500),  # at 2
        _row("c", ["x", "y", "z"], "t", 200, 500),  # below the kept top: only its reciprocal rank counts
    ]
    m = ranking_metrics(rows)
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@5"] == pytest.approx(2 / 3)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / 1.5849625007211563) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 200) / 3)
    assert m["valid_ratio"] == 1.0


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(target_rank=3), "does not match"),  # the target is at 1 in the kept top
        (dict(ranking=["x", "y"], target_rank=1), "does not match"),  # rank 1 but not in the top
        (dict(target_rank=0), "target_rank"),
        (dict(catalogue_size="many"), "catalogue_size"),
    ],
)
def test_evaluate_refuses_inconsistent_whole_catalogue_rows(bad, message):
    from mmrec_gen.eval.metrics import ranking_metrics

    row = {**_row("a", ["t", "x"], "t", 1, 50), **bad}
    with pytest.raises(ValueError, match=message):
        ranking_metrics([row])


def test_rank_all_items_end_to_end_agrees_with_the_sampled_candidates(synth_dir, cf_adapter, tmp_path):
    from mmrec_gen.cli import main
    from mmrec_gen.data.results import read_results

    sampled, whole = tmp_path / "sampled.jsonl", tmp_path / "all.jsonl"
    base = ["rank", "--data", str(synth_dir), "--model", "tiny-llama", "--adapter", str(cf_adapter),
            "--max-users", "5", "--no-progress"]  # fmt: skip
    assert main([*base, "--out", str(sampled)]) == 0
    assert main([*base, "--num-candidates", "all", "--out", str(whole)]) == 0
    by_user = {r["user_id"]: r for r in read_results(sampled)}
    rows = read_results(whole)
    assert len(rows) == 5
    for row in rows:
        assert row["valid"] and row["candidates"] is None and row["meta"]["candidates"] == "all"
        # The synthetic catalogue (< 100 items) is kept whole: restricted to the 20 sampled candidates, the
        # whole-catalogue ranking is the sampled ranking (the item head scores each item on its own).
        assert len(row["ranking"]) == row["catalogue_size"]
        assert row["ranking"][row["target_rank"] - 1] == row["target"]
        small = by_user[row["user_id"]]
        assert [i for i in row["ranking"] if i in set(small["candidates"])] == small["ranking"]
    assert main(["evaluate", str(whole), "--json"]) == 0


def test_all_is_refused_where_it_cannot_work(synth_dir, tmp_path, capsys):
    from mmrec_gen.cli import main

    # Zero-shot letters need the candidates in the prompt (at most 26).
    code = main(["rank", "--data", str(synth_dir), "--model", "tiny-llama", "--num-candidates", "all",
                 "--out", str(tmp_path / "z.jsonl")])  # fmt: skip
    assert code != 0 and "--num-candidates all ranks the whole catalogue" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the MSE head predicts ratings of the candidates: not the whole catalogue
        main(["baseline", "mse", "--data", str(synth_dir), "--num-candidates", "all", "--out", str(tmp_path / "p")])
    assert "--num-candidates all is for mmrec rank" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rank", "--data", str(synth_dir), "--num-candidates", "many", "--out", str(tmp_path / "m.jsonl")])
    assert json.dumps("many")[1:-1] in capsys.readouterr().err


@pytest.mark.parametrize("method", ["pop", "sasrec"])
def test_baselines_rank_the_whole_catalogue_like_their_sampled_lists(synth_dir, tmp_path, method):
    from mmrec_gen.cli import main
    from mmrec_gen.data.results import read_results

    sampled, whole = tmp_path / "sampled.jsonl", tmp_path / "all.jsonl"
    base = ["baseline", method, "--data", str(synth_dir), "--max-users", "6"]
    if method == "sasrec":
        base += ["--epochs", "5", "--eval-every", "5"]
    assert main([*base, "--out", str(sampled)]) == 0
    assert main([*base, "--num-candidates", "all", "--out", str(whole)]) == 0
    by_user = {r["user_id"]: r for r in read_results(sampled)}
    for row in read_results(whole):
        assert row["candidates"] is None and row["meta"]["candidates"] == "all"
        assert row["ranking"][row["target_rank"] - 1] == row["target"]
        small = by_user[row["user_id"]]  # the same model, so the same order on the sampled candidates
        assert [i for i in row["ranking"] if i in set(small["candidates"])] == small["ranking"]
    assert main(["evaluate", str(whole), "--json"]) == 0


def test_a_user_who_has_seen_every_item_is_excluded_from_the_whole_catalogue_and_counted(synth_dir, tmp_path, caplog):
    """Issue 23: such a user got `catalogue_size: 1, target_rank: 1` and counted as a hit, with no warning."""
    import shutil

    from mmrec_gen.cli import main
    from mmrec_gen.data.results import read_results

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    items = [json.loads(line)["item_id"] for line in (data / "items.jsonl").read_text().splitlines()]
    events = [json.loads(line) for line in (data / "interactions.jsonl").read_text().splitlines()]
    seen = {e["item_id"] for e in events if e["user_id"] == "u0002"}
    first = min(e["timestamp"] for e in events if e["user_id"] == "u0002")
    extra = [{"user_id": "u0002", "item_id": i, "timestamp": first - 1 - n, "rating": 3}
             for n, i in enumerate(i for i in items if i not in seen)]  # fmt: skip
    (data / "interactions.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events + extra))

    out = tmp_path / "all.jsonl"
    argv = ["baseline", "pop", "--data", str(data), "--max-users", "4", "--num-candidates", "all", "--out", str(out)]
    assert main(argv) == 0
    rows = read_results(out)
    assert "u0002" not in {r["user_id"] for r in rows} and len(rows) == 4
    assert all(r["catalogue_size"] > 1 and r["meta"]["excluded_users"] == 1 for r in rows)
    assert "whole catalogue: 1 of 40 users excluded, having interacted with every item" in caplog.text
    assert "u0002" in caplog.text
