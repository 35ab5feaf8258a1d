"""No NaN in results (issue 23): a model whose outputs are NaN ranks nobody, its users become error rows naming
the cause; no file the toolkit writes holds NaN or Infinity (JSON has no such numbers), and `mmrec evaluate`
refuses a file that does instead of scoring the display order."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmrec_gen.cli import main
from mmrec_gen.data.results import append_result, read_results, write_results, write_results_parquet
from mmrec_gen.models.registry import load_model
from mmrec_gen.rank.pipeline import run_rank
from mmrec_gen.rank.rank_config import RankConfig


def _strict_lines(path) -> list[dict]:
    """Every line parsed as standard JSON (NaN / Infinity refused)."""

    def refuse(name):
        raise AssertionError(f"{path} holds {name}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def broken_models():
    """Real tiny Llamas with one NaN weight in the final norm, so every logit is NaN (as with an adapter whose
    weights hold NaN); `yes_no` has a tokenizer whose Yes and No are single tokens, for the pointwise template."""
    models = {"labels": load_model("tiny-llama"), "yes_no": load_model("tiny-llama-smollm2-tokenizer")}
    with torch.no_grad():
        for loaded in models.values():
            loaded.model.model.norm.weight[0] = float("nan")
    return models


@pytest.mark.parametrize(
    ("broken", "options"),
    [("labels", {}), ("labels", {"permutations": 2}), ("yes_no", {"template": "pointwise"})],
)
def test_non_finite_scores_make_error_rows_and_no_nan_in_the_file(
    synth_dir, tmp_path, broken_models, broken, options, capsys
):
    out = tmp_path / "ranked.jsonl"
    cfg = RankConfig(
        data=str(synth_dir), out=str(out), model=broken_models[broken].name, num_candidates=5, max_users=4, progress=False,
        cache_dir=str(tmp_path / "cands"), **options,
    )  # fmt: skip
    rows = run_rank(cfg, loaded_model=broken_models[broken])
    assert len(rows) == 4
    for row in rows:
        assert row["valid"] is False and row["ranking"] is None and row["scores"] is None
        assert "non-finite scores (nan) for 5 of 5 candidates: the model computed NaN" in row["error"]
    assert [r["user_id"] for r in _strict_lines(out)] == [r["user_id"] for r in rows]

    assert main(["evaluate", "--json", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["hr@1"], result["ndcg@10"], result["valid_ratio"], result["n_error_records"]) == (0, 0, 0, 4)


def _row(user: str, scores) -> dict:
    meta = {"dataset": "d", "split": "test", "candidates_hash": "h", "seed": 0}
    return {"user_id": user, "candidates": ["1", "2"], "ranking": ["1", "2"], "target": "1", "valid": True,
            "scores": scores, "meta": meta}  # fmt: skip


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_writers_refuse_non_finite_numbers_naming_file_and_user(tmp_path, bad):
    path = tmp_path / "r.jsonl"
    with pytest.raises(ValueError, match=r"r.jsonl: the row of user 'u2' holds a NaN or infinite number"):
        write_results(path, [_row("u1", [1.0, 0.5]), _row("u2", [bad, 0.5])])
    assert not path.exists() and not list(tmp_path.iterdir())  # atomic: nothing half-written

    with path.open("w") as fh:
        append_result(fh, _row("u1", [1.0, 0.5]))
        with pytest.raises(ValueError, match=r"user 'u2' holds a NaN or infinite number"):
            append_result(fh, _row("u2", [0.1, bad]))
    assert [r["user_id"] for r in _strict_lines(path)] == ["u1"]

    shard = tmp_path / "shard-00000.parquet"
    with pytest.raises(ValueError, match=r"shard-00000.parquet: the row of user 'u2'"):
        write_results_parquet(shard, [_row("u1", [1.0, 0.5]), _row("u2", [bad, 0.5])])
    assert not shard.exists()


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_evaluate_refuses_a_file_with_non_finite_scores(tmp_path, capsys, constant):
    """What a ranking with NaN weights wrote before: bare NaN scores, every row valid, the display order as
    ranking. It must not be scored (it gave NDCG@10 0.2347 and ValidRatio 1.000)."""
    path = tmp_path / "old.jsonl"
    good = json.dumps(_row("u1", [1.0, 0.5]))
    bad = json.dumps(_row("u2", [0.5, 0.5])).replace("[0.5, 0.5]", f"[{constant}, {constant}]")
    path.write_text(f"{good}\n{bad}\n")
    assert main(["evaluate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"old.jsonl:2: not valid JSON ({constant} is not a JSON number" in err and "re-run the command" in err
    with pytest.raises(ValueError, match=r"old.jsonl:2"):
        read_results(path)


def test_evaluate_refuses_non_finite_scores_in_a_batch_folder(tmp_path, capsys):
    """Parquet can hold NaN: a shard row with a NaN score is refused by `mmrec evaluate`, naming shard and row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmrec_gen.data.results import MANIFEST, MANIFEST_FORMAT

    folder = tmp_path / "job"
    folder.mkdir()
    write_results_parquet(folder / "shard-00000.parquet", [_row("u1", [1.0, 0.5]), _row("u2", [0.7, 0.5])])
    table = pq.read_table(folder / "shard-00000.parquet")
    scores = pa.array([[1.0, 0.5], [math.nan, 0.5]], type=table.schema.field("scores").type)
    pq.write_table(table.set_column(table.schema.get_field_index("scores"), "scores", scores),
                   folder / "shard-00000.parquet")  # fmt: skip
    manifest = {"format": MANIFEST_FORMAT, "shards": [{"file": "shard-00000.parquet", "rows": 2}]}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    assert main(["evaluate", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "shard-00000.parquet row 2: 'scores' must be a list of finite numbers" in err


def test_explanations_from_a_model_computing_nan_are_error_rows(synth_dir, tmp_path, tiny_model, broken_models):
    """The grounded explanation picks the cited title by option log-probabilities: NaN ones pick nothing."""
    from mmrec_gen.rank.pipeline import run_explain
    from mmrec_gen.rank.rank_config import ExplainConfig

    common = dict(data=str(synth_dir), model="tiny-llama", num_candidates=5, max_users=3, progress=False,
                  cache_dir=str(tmp_path / "cands"))  # fmt: skip
    ranked = tmp_path / "ranked.jsonl"
    run_rank(RankConfig(out=str(ranked), **common), loaded_model=tiny_model)  # a sound ranking to explain
    out = tmp_path / "why.jsonl"
    cfg = ExplainConfig(out=str(out), ranking=str(ranked), max_new_tokens=8, **common)
    rows = run_explain(cfg, loaded_model=broken_models["labels"])
    assert len(rows) == 3
    for row in rows:
        assert row["explanation"] is None and "non-finite option scores (nan)" in row["error"]
    assert [r["user_id"] for r in _strict_lines(out)] == [r["user_id"] for r in rows]
