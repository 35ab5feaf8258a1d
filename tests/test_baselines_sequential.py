"""Popularity and SASRec baselines: tie rules, the sequential signal SASRec must find, determinism, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmrec_gen.cli import main
from mmrec_gen.eval.metrics import ranking_metrics
from mmrec_gen.recsys.baselines import PopConfig, SASRecConfig, ranking_from_scores, run_baseline, training_view
from mmrec_gen.recsys.popularity import PopularityModel

SASREC_FAST = dict(hidden=32, epochs=40, lr=1e-2, dropout=0.1, eval_every=5, patience=3, max_len=20, batch_size=64)


def write_cycle_data(root, num_users=120, num_items=60, seed=0):
    """Each user walks the item cycle i, i+1, i+2, ... (mod num_items) from a random start: the next item is
    fully determined by the last one, while every item is about equally popular (popularity carries no signal)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "items.jsonl", "w") as fh:
        for i in range(num_items):
            fh.write(json.dumps({"item_id": f"i{i:03d}", "title": f"Item {i}"}) + "\n")
    with open(root / "interactions.jsonl", "w") as fh:
        for u in range(num_users):
            start, length = int(rng.integers(num_items)), int(rng.integers(10, 20))
            for t in range(length):
                item = f"i{(start + t) % num_items:03d}"
                fh.write(json.dumps({"user_id": f"u{u:03d}", "item_id": item, "timestamp": 1000 + t}) + "\n")
    return root


@pytest.fixture(scope="module")
def cycle_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cycle")
    data = write_cycle_data(root / "data")
    common = dict(data=str(data), split="test", seed=0, cache_dir=str(root / "cands"))
    pop = run_baseline("pop", PopConfig(out=str(root / "pop.jsonl"), **common))
    sasrec = run_baseline("sasrec", SASRecConfig(out=str(root / "sasrec.jsonl"), **common, **SASREC_FAST))
    return root, pop, sasrec, common


def test_popularity_counts_train_items_and_breaks_ties_by_item_id():
    model = PopularityModel().fit([["10", "2", "7"], ["2", "7"], ["9"]])
    assert model.scores(["2", "10", "99"]) == [2.0, 1.0, 0.0]
    # 2 and 7 tie (2), 9 and 10 tie (1), 99 and 100 are unseen (0): numeric id order inside each tie.
    assert model.rank(["100", "10", "9", "99", "7", "2"]) == ["2", "7", "9", "10", "99", "100"]
    assert ranking_from_scores(["b", "a", "c"], [1.0, 1.0, 2.0]) == ["c", "a", "b"]


def test_sasrec_beats_popularity_on_sequential_data(cycle_runs):
    _, pop, sasrec, _ = cycle_runs
    m_pop, m_sas = ranking_metrics(pop.rows), ranking_metrics(sasrec.rows)
    assert m_sas["n_users"] == m_pop["n_users"] == 120 and m_sas["n_error_records"] == 0
    assert m_sas["hr@1"] > m_pop["hr@1"] + 0.3, (m_sas, m_pop)
    assert m_sas["ndcg@10"] > m_pop["ndcg@10"]
    assert sasrec.info["best_monitor_ndcg@10"] > 0.5  # early stopping watched the valid items


def test_baseline_rows_have_the_rank_contract_and_share_the_candidate_file(cycle_runs):
    _, pop, sasrec, _ = cycle_runs
    keys = {"user_id", "candidates", "ranking", "target", "valid", "raw_output", "errors", "scores", "truncated",
            "n_history", "error", "meta"}  # fmt: skip
    for a, b in zip(pop.rows, sasrec.rows, strict=True):
        assert keys <= a.keys() and keys <= b.keys()
        assert (a["user_id"], a["candidates"], a["target"]) == (b["user_id"], b["candidates"], b["target"])
        assert sorted(a["ranking"]) == sorted(a["candidates"]) and len(a["scores"]) == len(a["candidates"])
        assert a["meta"]["candidates_hash"] == b["meta"]["candidates_hash"]
        assert (a["meta"]["model"], b["meta"]["model"], a["meta"]["mode"]) == ("pop", "sasrec", "baseline")


def test_sasrec_is_deterministic_for_a_seed(cycle_runs):
    root, _, sasrec, common = cycle_runs
    again = run_baseline(
        "sasrec", SASRecConfig(out=str(root / "again.jsonl"), **{**common, "max_users": 10}, **SASREC_FAST)
    )
    assert [r["scores"] for r in again.rows] == [r["scores"] for r in sasrec.rows[:10]]


def test_valid_split_monitors_the_last_train_item_never_the_target(cycle_runs):
    from mmrec_gen.data.loaders import load_dataset
    from mmrec_gen.data.split import split_dataset

    root, *_ = cycle_runs
    sr = split_dataset(load_dataset(str(root / "data")))
    fit, monitor = training_view(sr, "valid")
    for uid, us in sr.users.items():
        assert monitor[uid] == us.train[-1] and us.valid not in fit[uid] and us.train[-1] not in fit[uid]
    fit, monitor = training_view(sr, "test")
    assert all(monitor[u] == us.valid and fit[u] == list(us.train) for u, us in sr.users.items())


def test_a_user_that_cannot_be_scored_becomes_an_error_row(cycle_runs, monkeypatch):
    from mmrec_gen.recsys import popularity

    root, _, _, common = cycle_runs
    real = popularity.PopularityModel.scores

    def flaky(self, items):  # injected fault: one user's scoring fails
        if "i000" in items:
            raise KeyError("injected")
        return real(self, items)

    monkeypatch.setattr(popularity.PopularityModel, "scores", flaky)
    run = run_baseline("pop", PopConfig(out=str(root / "faulty.jsonl"), **common))
    failed = [r for r in run.rows if r["error"]]
    assert len(run.rows) == 120 and 0 < len(failed) < 120
    assert all("i000" in r["candidates"] and r["ranking"] is None and "injected" in r["error"] for r in failed)


def test_cli_rejects_unknown_baselines_and_bad_options(cycle_runs, capsys):
    root, _, _, common = cycle_runs
    assert main(["baseline", "knn", "--data", common["data"], "--out", str(root / "x.jsonl")]) == 1
    assert "unknown baseline 'knn': choose one of pop, sasrec, mse" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(
            ["baseline", "sasrec", "--data", common["data"], "--out", "x.jsonl", "--hidden", "30", "--num-heads", "4"]
        )
    assert "--hidden (30) must be divisible by --num-heads (4)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["baseline", "pop", "--data", common["data"], "--out", "x.jsonl", "--split", "train"])
    assert "--split must be valid or test" in capsys.readouterr().err
    assert main(["baseline"]) == 2 and "pop,sasrec,mse" in capsys.readouterr().out


def test_sasrec_item_embeddings_follow_the_given_item_order():
    import numpy as np

    from mmrec_gen.features.cache import aligned
    from mmrec_gen.recsys.sasrec import SASRecParams, SASRecRecommender

    rec = SASRecRecommender(["i2", "i0", "i1"], SASRecParams(hidden=8, epochs=1, seed=0))
    rec.fit({"u0": ["i0", "i1", "i2", "i0"], "u1": ["i1", "i2", "i0"]})
    table = rec.item_embeddings()
    assert table.shape == (3, 8) and table.dtype == np.float32
    weight = rec.model.item_emb.weight.detach().numpy()
    for k, item in enumerate(rec.item_ids):
        np.testing.assert_array_equal(table[k], weight[rec.index[item]])
    np.testing.assert_array_equal(aligned(table, rec.item_ids, ["i0", "i1"]), table[[1, 2]])
    # Scores are dot products with exactly these rows: the table is the one the model ranks with.
    scores = rec.score([["i0", "i1"]], [["i2", "i0"]])[0]
    state = rec._last_states([["i0", "i1"]])[0].numpy()
    np.testing.assert_allclose(scores, [table[0] @ state, table[1] @ state], rtol=1e-5)
