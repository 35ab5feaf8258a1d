"""The `mmrec` command line: the contract other tools rely on (names, flags, output keys)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmrec_gen.cli import main

RANK_KEYS = {"user_id", "candidates", "ranking", "target", "valid", "raw_output", "errors"}
EVAL_KEYS = {"hr@1", "hr@5", "ndcg@5", "ndcg@10", "mrr", "valid_ratio", "n_users", "candidates_hash"}


@pytest.fixture(scope="module")
def ranked(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    files = {}
    for mode in ("score", "generate"):
        path = out / f"{mode}.jsonl"
        rc = main(
            ["rank", "--data", str(synth_dir), "--model", "tiny-llama", "--mode", mode, "--max-users", "6",
             "--num-candidates", "10", "--split", "valid", "--seed", "1", "--batch-size", "3",
             "--cache-dir", str(out / "cands"), "--out", str(path), "--no-progress"]
        )  # fmt: skip
        assert rc == 0
        files[mode] = path
    return files


def test_rank_writes_one_line_per_user_with_contract_keys(ranked):
    rows = [json.loads(line) for line in ranked["score"].read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        assert RANK_KEYS <= row.keys()
        assert len(row["candidates"]) == 10 and sorted(row["ranking"]) == sorted(row["candidates"])
        assert row["meta"]["split"] == "valid" and row["meta"]["seed"] == 1 and row["meta"]["mode"] == "score"


def test_both_modes_rank_the_same_candidate_lists(ranked):
    a = [json.loads(line) for line in ranked["score"].read_text().splitlines()]
    b = [json.loads(line) for line in ranked["generate"].read_text().splitlines()]
    assert [(r["user_id"], r["candidates"], r["target"]) for r in a] == [
        (r["user_id"], r["candidates"], r["target"]) for r in b
    ]


def test_evaluate_json_has_one_object_per_file(ranked, capsys):
    assert main(["evaluate", str(ranked["score"]), str(ranked["generate"]), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2
    for obj in lines:
        assert EVAL_KEYS <= obj.keys() and obj["n_users"] == 6
    assert lines[0]["candidates_hash"] == lines[1]["candidates_hash"]
    assert lines[0]["valid_ratio"] == 1.0 and lines[1]["valid_ratio"] == 0.0  # tiny random model: free text is junk


def test_evaluate_table_prints_protocol_line(ranked, capsys):
    assert main(["evaluate", str(ranked["score"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("protocol: dataset=") and "split=valid" in out and "seed=1" in out


def test_explain_writes_checks_for_each_user(synth_dir, ranked, tmp_path, capsys):
    out = tmp_path / "explain.jsonl"
    rc = main(["explain", "--data", str(synth_dir), "--model", "tiny-llama", "--ranking", str(ranked["score"]),
               "--split", "valid", "--seed", "1", "--num-candidates", "10", "--max-users", "3", "--max-new-tokens", "8",
               "--cache-dir", str(tmp_path / "c"), "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    score_rows = {json.loads(x)["user_id"]: json.loads(x) for x in ranked["score"].read_text().splitlines()}
    assert len(rows) == 3
    for row in rows:
        assert row["item_id"] == score_rows[row["user_id"]]["ranking"][0]
        assert {"explanation", "hallucinated_titles", "cites_history", "mentioned_titles"} <= row.keys()


def test_prompts_validate_and_list(capsys):
    assert main(["prompts", "validate"]) == 0
    assert main(["prompts", "list"]) == 0
    out = capsys.readouterr().out
    for template_id in ("rank_listwise", "rank_fewshot", "explain", "pointwise"):
        assert template_id in out


def test_bad_data_folder_is_a_clear_error(tmp_path, capsys):
    rc = main(["rank", "--data", str(tmp_path), "--model", "tiny-llama", "--out", str(tmp_path / "x.jsonl")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "mmrec rank: error:" in err and str(tmp_path) in err


def test_invalid_flag_value_is_rejected_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["rank", "--data", str(tmp_path), "--out", "x.jsonl", "--mode", "sample"])
    assert "--mode must be one of score, constrained, generate" in capsys.readouterr().err


def test_module_entry_point_help():
    done = subprocess.run([sys.executable, "-m", "mmrec_gen", "--help"], capture_output=True, text=True, check=True)
    for command in ("rank", "evaluate", "explain", "prompts", "demo"):
        assert command in done.stdout


def test_demo_runs_end_to_end_on_a_tiny_model(tmp_path, capsys):
    rc = main(["demo", "--model", "tiny-llama", "--users", "3", "--explain-users", "2", "--out-dir", str(tmp_path),
               "--modes", "score", "constrained"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "== metrics ==" in out and "protocol: dataset=synthetic" in out
    assert out.count("why #1:") == 2
    assert (tmp_path / "rank_score.jsonl").is_file() and (tmp_path / "rank_constrained.jsonl").is_file()


def test_explain_refuses_a_ranking_of_another_candidate_file(synth_dir, ranked, tmp_path, capsys):
    rc = main(["explain", "--data", str(synth_dir), "--model", "tiny-llama", "--ranking", str(ranked["score"]),
               "--split", "valid", "--seed", "2", "--num-candidates", "10", "--max-users", "3",
               "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "e.jsonl"), "--no-progress"])  # fmt: skip
    assert rc == 1
    assert "ranks candidate file(s)" in capsys.readouterr().err and not (tmp_path / "e.jsonl").exists()
