"""The one result-row type every method writes (data/rows.py) and its Parquet shards (data/results.py): the tie
rule, error rows, and a shard that reads back as exactly the dicts a JSONL line holds."""

from __future__ import annotations

import json

import pytest

from mmrec_gen.data.results import read_results_parquet, write_results_parquet
from mmrec_gen.data.rows import ERROR_KEYS, ROW_FIELDS, ResultRow, rank_by_scores
from mmrec_gen.eval.metrics import ranking_metrics

META = {"dataset": "d", "split": "test", "candidates_hash": "h", "seed": 0, "model": "m", "mode": "score"}


def test_ties_go_by_item_id_never_by_display_position():
    # "10" and "9" tie, so do "b" and "a": numeric ids numerically, then the rest by text.
    assert rank_by_scores(["10", "9", "3"], [1.0, 1.0, 2.0]) == ["3", "9", "10"]
    assert rank_by_scores(["b", "a", "c"], [1.0, 1.0, 2.0]) == ["c", "a", "b"]
    assert rank_by_scores(["a", "b"], [0.5, 0.5]) == rank_by_scores(["b", "a"], [0.5, 0.5]) == ["a", "b"]
    with pytest.raises(ValueError, match="2 scores for 3 candidates"):
        rank_by_scores(["a", "b", "c"], [1.0, 2.0])


def test_rows_have_one_layout_for_results_and_errors():
    ok = ResultRow.scored("7", ["x", "y", "z"], "y", [0.1, 0.9, 0.5], META, n_history=4, pred_rating=3.5).to_dict()
    assert list(ok) == [*ROW_FIELDS, "pred_rating"]
    assert ok["ranking"] == ["y", "z", "x"] and ok["valid"] and ok["error"] is None
    assert ok["errors"] == dict.fromkeys(ERROR_KEYS, 0) and ok["scores"] == [0.1, 0.9, 0.5]
    bad = ResultRow.failed("8", ["x", "y"], "x", "PromptTooLongError: ...", META).to_dict()
    assert list(bad) == list(ROW_FIELDS) and bad["ranking"] is None and not bad["valid"] and bad["error"]
    m = ranking_metrics([ok, bad])
    assert m["hr@1"] == 0.5 and m["n_error_records"] == 1  # the error row counts, as a miss
    with pytest.raises(ValueError, match="NaN"):
        ResultRow.scored("9", ["x"], "x", [float("nan")], META, n_history=0)
    with pytest.raises(ValueError, match="would overwrite row fields"):
        ResultRow("1", ["x"], "x", META, extra={"error": "sneaky"}).to_dict()


def test_a_parquet_shard_reads_back_as_the_jsonl_rows(tmp_path):
    rows = [
        ResultRow.scored("1", ["10", "2"], "2", [-1.25, 3.0000000000000004], META, n_history=3).to_dict(),
        ResultRow("2", ["a", "b"], "a", {**META, "head": "items", "item_tokens": ["cf"]}, ranking=["b", "a"],
                  valid=True, raw_output="B, A", errors={**dict.fromkeys(ERROR_KEYS, 0), "missing": 1},
                  truncated=True, n_history=1, extra={"explanation": "Because ü", "cites_history": False}).to_dict(),
        ResultRow.failed("ghost", None, None, "user 'ghost' is not in the candidate file", META).to_dict(),
    ]  # fmt: skip
    path = tmp_path / "shard-00000.parquet"
    write_results_parquet(path, rows)
    back = read_results_parquet(path)
    assert back == rows and [list(r) for r in back] == [list(r) for r in rows]  # values and key order
    assert [json.dumps(r, ensure_ascii=False) for r in back] == [json.dumps(r, ensure_ascii=False) for r in rows]
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00000.parquet"]  # no temp file left behind
