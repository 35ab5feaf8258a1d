"""Metric values equal hand-computed fixtures (docs/RELIABILITY.md R13); results files read and write safely."""

from __future__ import annotations

import json
import math

import pytest

from mmrec_gen.data.results import append_result, read_results, write_results
from mmrec_gen.eval.metrics import pointwise_auc, ranking_metrics, rating_metrics, user_auc

CANDS = [f"i{k}" for k in range(10)]


def row(user: str, target_pos: int | None, *, valid: bool = True, errors: dict | None = None, **extra) -> dict:
    """A result row whose ranking puts the target at 1-based position `target_pos` (None: an error record)."""
    target = "i0"
    ranking = None
    if target_pos is not None:
        others = [c for c in CANDS if c != target]
        ranking = others[: target_pos - 1] + [target] + others[target_pos - 1 :]
    base = {
        "user_id": user,
        "candidates": CANDS,
        "ranking": ranking,
        "target": target,
        "valid": valid if target_pos is not None else False,
        "raw_output": None,
        "errors": {"invalid": 0, "duplicate": 0, "missing": 0, "out_of_candidate": 0, "from_history": 0}
        | (errors or {}),
        "scores": None,
        "truncated": False,
        "n_history": 5,
        "error": None if target_pos is not None else "OOM after retries",
        "meta": {"dataset": "toy", "split": "test", "candidates_hash": "abc123", "seed": 0},
    }
    base.update(extra)
    return base


def test_target_first():
    m = ranking_metrics([row("u1", 1)])
    assert m["hr@1"] == 1.0 and m["hr@5"] == 1.0 and m["ndcg@5"] == 1.0 and m["ndcg@10"] == 1.0
    assert m["mrr"] == 1.0
    assert m["valid_ratio"] == 1.0 and m["n_users"] == 1 and m["n_valid"] == 1


def test_target_third():
    m = ranking_metrics([row("u1", 3)])
    assert m["hr@1"] == 0.0 and m["hr@5"] == 1.0
    assert m["ndcg@5"] == pytest.approx(1 / math.log2(4)) == pytest.approx(0.5)
    assert m["ndcg@10"] == pytest.approx(0.5)
    assert m["mrr"] == pytest.approx(1 / 3)


def test_target_seventh_outside_top5():
    m = ranking_metrics([row("u1", 7)])
    assert m["hr@5"] == 0.0 and m["ndcg@5"] == 0.0
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(8))
    assert m["mrr"] == pytest.approx(1 / 7)


def test_invalid_and_error_users_score_zero_and_count():
    rows = [
        row("u1", 1),
        row("u2", 3),
        row("u3", 1, valid=False, errors={"out_of_candidate": 2}),  # ranked first but invalid: a miss
        row("u4", None),  # error record
    ]
    m = ranking_metrics(rows)
    assert m["n_users"] == 4 and m["n_valid"] == 2 and m["n_error_records"] == 1
    assert m["hr@1"] == pytest.approx(1 / 4)
    assert m["hr@5"] == pytest.approx(2 / 4)
    assert m["ndcg@5"] == pytest.approx((1 + 0.5) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 3) / 4)
    assert m["valid_ratio"] == pytest.approx(0.5)
    assert m["out_of_candidate_rate"] == pytest.approx(0.25)
    assert m["duplicate_rate"] == 0.0
    assert m["candidates_hash"] == "abc123"


def test_error_rates_count_users_not_mentions():
    rows = [
        row("u1", 1, errors={"duplicate": 5, "missing": 3}),
        row("u2", 2, errors={"duplicate": 1, "from_history": 2}),
        row("u3", 2, valid=False, errors={"invalid": 1, "missing": 10}),
        row("u4", 4),
    ]
    m = ranking_metrics(rows)
    assert m["duplicate_rate"] == 0.5
    assert m["missing_rate"] == 0.5
    assert m["from_history_rate"] == 0.25
    assert m["invalid_rate"] == 0.25
    assert m["out_of_candidate_rate"] == 0.0


def test_score_ties_never_reach_ir_measures():
    # The target is last in id order but first in the ranking: a run built from ids or ties would differ.
    r = row("u1", 1)
    r["target"] = "i9"
    r["ranking"] = ["i9", *CANDS[:9]]
    assert ranking_metrics([r])["hr@1"] == 1.0


def test_unknown_keys_are_ignored():
    m = ranking_metrics([row("u1", 1, pred_rating=4.5, true_rating=4.0, extra={"x": 1})])
    assert m["hr@1"] == 1.0


def test_duplicate_user_raises():
    with pytest.raises(ValueError, match="'u1' appears more than once"):
        ranking_metrics([row("u1", 1), row("u1", 2)])


def test_mixed_candidate_hashes_raise_naming_both():
    other = row("u2", 1)
    other["meta"] = dict(other["meta"], candidates_hash="zzz999")
    with pytest.raises(ValueError, match=r"abc123.*zzz999"):
        ranking_metrics([row("u1", 1), other])


def test_empty_rows_raise():
    with pytest.raises(ValueError, match="no result rows"):
        ranking_metrics([])


def test_non_permutation_ranking_raises():
    bad = row("u1", 1)
    bad["ranking"] = ["i0", "i0", "i1"]
    with pytest.raises(ValueError, match="'u1'.*repeats"):
        ranking_metrics([bad])


# --- AUC -----------------------------------------------------------------------------------------------------


def test_pointwise_auc_hand_computed():
    # Positive 0.8 beats negatives 0.1 and 0.4, loses to 0.9: 2/3.
    assert pointwise_auc([1, 0, 0, 0], [0.8, 0.1, 0.4, 0.9]) == pytest.approx(2 / 3)
    # Ties count one half: positive 0.5 vs negatives 0.5 and 0.1 -> (0.5 + 1) / 2.
    assert pointwise_auc([0, 1, 0], [0.5, 0.5, 0.1]) == pytest.approx(0.75)
    assert pointwise_auc([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2]) == 1.0


def test_pointwise_auc_single_class_is_none():
    assert pointwise_auc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert pointwise_auc([1], [0.3]) is None
    assert pointwise_auc([], []) is None


def test_user_auc_skips_and_counts():
    cands = ["a", "b", "c", "d"]
    base = {"candidates": cands, "ranking": cands, "valid": True}
    rows = [
        {**base, "user_id": "u1", "target": "a", "scores": [0.8, 0.1, 0.4, 0.9]},  # 2/3
        {**base, "user_id": "u2", "target": "c", "scores": [0.1, 0.2, 0.9, 0.3]},  # 1.0
        {**base, "user_id": "u3", "target": "a", "scores": None},  # skipped
        {**base, "user_id": "u4", "target": "zz", "scores": [0.1, 0.2, 0.3, 0.4]},  # target absent: single class
    ]
    result = user_auc(rows)
    assert result["auc"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert result["auc_users"] == 2
    assert result["auc_users_skipped"] == 1
    assert result["auc_users_single_class"] == 1


def test_user_auc_wrong_length_names_user():
    rows = [{"user_id": "u7", "candidates": ["a", "b"], "target": "a", "scores": [0.1]}]
    with pytest.raises(ValueError, match="'u7'"):
        user_auc(rows)


def test_user_auc_no_scorable_users():
    assert user_auc([{"user_id": "u1", "candidates": ["a"], "target": "a", "scores": None}])["auc"] is None


# --- rating --------------------------------------------------------------------------------------------------


def test_rating_metrics_hand_computed():
    m = rating_metrics([4.0, 3.0, 5.0], [3.0, 3.0, 3.0])
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(math.sqrt(5 / 3))


def test_rating_metrics_bad_input():
    with pytest.raises(ValueError, match="2 true ratings but 1"):
        rating_metrics([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no ratings"):
        rating_metrics([], [])
    with pytest.raises(ValueError, match="NaN"):
        rating_metrics([1.0], [float("nan")])


# --- data.results ---------------------------------------------------------------------------------------------


def test_write_read_roundtrip_unicode(tmp_path):
    rows = [row("u1", 1, raw_output="Amélie — C, A"), row("ユーザー", None)]
    path = tmp_path / "sub" / "results.jsonl"
    write_results(path, rows)
    assert read_results(path) == rows
    assert "Amélie" in path.read_text(encoding="utf-8")  # ensure_ascii=False
    assert [p.name for p in path.parent.iterdir()] == ["results.jsonl"]  # no temp file left


def test_write_is_atomic_on_failure(tmp_path):
    path = tmp_path / "results.jsonl"
    write_results(path, [row("u1", 1)])

    def rows_then_crash():
        yield row("u2", 1)
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_results(path, rows_then_crash())
    # The old file is intact and no temp file is left behind.
    assert [r["user_id"] for r in read_results(path)] == ["u1"]
    assert [p.name for p in tmp_path.iterdir()] == ["results.jsonl"]


def test_append_and_bad_line(tmp_path):
    path = tmp_path / "r.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        append_result(fh, row("u1", 1))
        fh.write("\n")  # blank lines are skipped
        append_result(fh, row("u2", 2))
    assert [r["user_id"] for r in read_results(path)] == ["u1", "u2"]
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"user_id": "u3", "rank')  # cut off by a kill
    with pytest.raises(ValueError, match=r"r\.jsonl:4: not valid JSON"):
        read_results(path)
    path.write_text(json.dumps([1, 2]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"r\.jsonl:1: expected a JSON object"):
        read_results(path)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_umask_mode_and_a_replacement_is_logged(tmp_path, caplog, umask):
    import logging
    import os

    old = os.umask(umask)
    try:
        path = tmp_path / "results.jsonl"
        with caplog.at_level(logging.INFO, logger="mmrec_gen.data.results"):
            write_results(path, [row("u1", 1)])
            assert "replacing" not in caplog.text
            assert path.stat().st_mode & 0o777 == 0o666 & ~umask
            path.chmod(0o644)
            write_results(path, [row("u2", 1)])
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # never 0600 (mkstemp's mode)
        assert f"replacing the existing {path}" in caplog.text
    finally:
        os.umask(old)
