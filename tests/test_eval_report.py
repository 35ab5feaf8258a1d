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


def _malformed(row: dict, case: str) -> None:
    if case == "ranking of 3 of 4":
        row["ranking"] = row["ranking"][:3]
    elif case == "id outside the candidates":
        row["ranking"] = [*row["ranking"][:3], "zz"]
    elif case == "target outside the candidates":
        row["target"] = "zz"
    elif case == "user_id null":
        row["user_id"] = None
    elif case == "no meta":
        del row["meta"]
    elif case == "meta without candidates_hash":
        row["meta"] = {k: v for k, v in META.items() if k != "candidates_hash"}


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("ranking of 3 of 4", "'ranking' holds 3 of the 4 candidates"),
        ("id outside the candidates", "'ranking' holds 'zz', which is not one of the 'candidates'"),
        ("target outside the candidates", "'target' 'zz' is not one of the 4 'candidates'"),
        ("user_id null", "'user_id' is missing or null"),
        ("no meta", "'meta' is missing"),
        ("meta without candidates_hash", "'meta' lacks candidates_hash"),
    ],
)
def test_evaluate_file_refuses_malformed_rows_naming_file_line_and_field(tmp_path, case, field):
    rows = make_rows(META, [1, 3, 2])
    _malformed(rows[1], case)
    path = tmp_path / "bad.jsonl"
    write_results(path, rows)
    with pytest.raises(ValueError) as info:
        evaluate_file(path)
    assert str(info.value).startswith(f"{path}:2: {field}")


def test_a_partial_ranking_marked_invalid_counts_as_invalid(tmp_path):
    rows = make_rows(META, [1, 1])
    rows[1]["ranking"], rows[1]["valid"] = rows[1]["ranking"][:2], False
    path = tmp_path / "partial.jsonl"
    write_results(path, rows)
    result = evaluate_file(path)
    assert result["valid_ratio"] == 0.5 and result["hr@1"] == 0.5


def test_evaluate_a_folder_is_a_one_line_error(tmp_path, capsys):
    from mmrec_gen.cli import main

    assert main(["evaluate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"mmrec evaluate: error: {tmp_path} is a folder, not a JSONL file; pass the file itself (e.g. {tmp_path}/NAME.jsonl)\n"
    )


def test_runs_on_different_users_of_one_candidate_file_are_flagged(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_results(a, make_rows(META, [1, 2, 3]))
    write_results(b, make_rows(META, [1, 2, 3, 1])[1:])  # u1, u2, u3: another subset of the same file
    table = format_table([evaluate_file(a), evaluate_file(b)])
    assert table.splitlines()[0] == "protocol: dataset=ml-latest-small split=test candidates=3f2a9c1b0d4e seed=0"
    assert (
        "WARNING: these files rank different users of one candidate file (a.jsonl: 3 users, b.jsonl: 3 users); "
        "their numbers are not comparable: rank the same users (--max-users / --users)"
    ) in table
    write_results(b, make_rows(META, [2, 2, 2]))
    assert "WARNING" not in format_table([evaluate_file(a), evaluate_file(b)])


def test_rows_of_different_runs_under_one_hash_are_refused(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = make_rows(META, [1, 2, 3])
    rows[2] = {**rows[2], "meta": {**META, "seed": 1}}
    write_results(path, rows)
    with pytest.raises(ValueError, match=r"mixed.jsonl:3: meta.seed is 1, line 1's is 0: the file mixes rows of "):
        evaluate_file(path)
