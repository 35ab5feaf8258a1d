"""Protocol lines, evaluate_file and the comparison table."""

from __future__ import annotations

import pytest

from mmrec_gen.data.results import write_results
from mmrec_gen.eval.report import evaluate_file, format_table, protocol_line

META = {
    "dataset": "ml-latest-small",
    "split": "test",
    "candidates_hash": "3f2a9c1b0d4e",
    "seed": 0,
    "model": "smollm2-135m-instruct",
    "mode": "score",
    "template": "rank_listwise",
    "shots": 0,
}


def make_rows(meta: dict, positions: list[int | None], scores: bool = False) -> list[dict]:
    cands = ["a", "b", "c", "d"]
    rows = []
    for n, pos in enumerate(positions):
        ranking = None
        if pos is not None:
            others = ["b", "c", "d"]
            ranking = others[: pos - 1] + ["a"] + others[pos - 1 :]
        rows.append(
            {
                "user_id": f"u{n}",
                "candidates": cands,
                "ranking": ranking,
                "target": "a",
                "valid": pos is not None,
                "raw_output": None,
                "errors": {"invalid": 0, "duplicate": 0, "missing": 0, "out_of_candidate": 0, "from_history": 0},
                "scores": ([4.0 - ranking.index(c) for c in cands] if scores and ranking else None),
                "truncated": False,
                "n_history": 3,
                "error": None if pos is not None else "prompt too long",
                "meta": meta,
            }
        )
    return rows


def test_protocol_line():
    assert protocol_line(META) == (
        "protocol: dataset=ml-latest-small split=test candidates=3f2a9c1b0d4e seed=0 "
        "model=smollm2-135m-instruct mode=score template=rank_listwise shots=0"
    )
    assert protocol_line({"dataset": "x", "seed": 3}) == "protocol: dataset=x seed=3"


def test_evaluate_file(tmp_path):
    path = tmp_path / "run.jsonl"
    write_results(path, make_rows(META, [1, 3, None, 2]))
    result = evaluate_file(path)
    assert result["file"] == str(path)
    assert result["meta"] == META
    assert result["n_users"] == 4 and result["n_error_records"] == 1
    assert result["hr@1"] == pytest.approx(0.25)
    assert result["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 4)
    assert "auc" not in result  # not a pointwise template


def test_evaluate_file_adds_auc_for_pointwise(tmp_path):
    meta = dict(META, template="pointwise_yes_no")
    path = tmp_path / "pw.jsonl"
    # Scores follow the ranking: target 1st -> AUC 1, target 3rd of 4 -> 1/3.
    write_results(path, make_rows(meta, [1, 3, None], scores=True))
    result = evaluate_file(path)
    assert result["auc"] == pytest.approx((1 + 1 / 3) / 2)
    assert result["auc_users_skipped"] == 1  # the error record


def test_evaluate_file_errors_name_the_file(tmp_path):
    path = tmp_path / "dup.jsonl"
    write_results(path, make_rows(META, [1]) + make_rows(META, [2]))
    with pytest.raises(ValueError, match=r"dup\.jsonl: user 'u0' appears more than once"):
        evaluate_file(path)


def test_format_table_shared_protocol(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_results(a, make_rows(META, [1, 1]))
    write_results(b, make_rows(dict(META, model="tiny-llama", mode="generate"), [3, None]))
    table = format_table([evaluate_file(a), evaluate_file(b)])
    lines = table.splitlines()
    assert lines[0] == "protocol: dataset=ml-latest-small split=test candidates=3f2a9c1b0d4e seed=0"
    assert "WARNING" not in table
    assert lines[1].split() == [
        "File", "Model", "Mode", "HR@1", "HR@5", "NDCG@5", "NDCG@10", "MRR", "Valid", "N", "Err",
        "Inv", "Dup", "OOC", "Hist", "Miss",
    ]  # fmt: skip
    assert (
        lines[3].split()
        == ["a.jsonl", "smollm2-135m-instruct", "score"] + ["1.0000"] * 6 + ["2", "0"] + ["0.0000"] * 5
    )
    # Target 3rd for one user, error record for the other: HR@5 = 0.5, NDCG@5 = 0.25, MRR = 1/6.
    cells = lines[4].split()
    assert cells[:3] == ["b.jsonl", "tiny-llama", "generate"]
    assert cells[3:11] == ["0.0000", "0.5000", "0.2500", "0.2500", "0.1667", "0.5000", "2", "1"]


def test_format_table_mixed_protocols_warns(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_results(a, make_rows(META, [1]))
    write_results(b, make_rows(dict(META, candidates_hash="ffff00001111"), [1]))
    lines = format_table([evaluate_file(a), evaluate_file(b)]).splitlines()
    assert lines[0].startswith("protocol: dataset=ml-latest-small split=test candidates=3f2a9c1b0d4e seed=0 ")
    assert lines[0].endswith("file=a.jsonl")
    assert "candidates=ffff00001111" in lines[1] and lines[1].endswith("file=b.jsonl")
    assert lines[2].startswith("WARNING: these files used different candidate files")


def test_format_table_empty():
    assert format_table([]) == "(no results)"
