"""`mmrec batch-rank` on the local engine (docs/RELIABILITY.md R4, R8, R9): Parquet shards + a manifest written
last, rows equal to `mmrec rank`'s, resume that skips finished shards, a changed config refused naming what
changed, an error row for every user that cannot be ranked, and `mmrec evaluate` on the output folder."""

from __future__ import annotations

import json
import shutil

import pytest

from mmrec_gen.cli import main
from mmrec_gen.data.results import read_results
from mmrec_gen.jobs.batch_config import BatchRankConfig
from mmrec_gen.jobs.batch_rank import run_batch_rank
from mmrec_gen.jobs.shard_worker import ShardWorker
from mmrec_gen.rank.pipeline import run_rank
from mmrec_gen.rank.rank_config import RankConfig
from mmrec_gen.rank.ranker import Ranker

COMMON = dict(model="tiny-llama", num_candidates=5, batch_size=1, progress=False)


def _cfg(synth_dir, tmp_path, out, **overrides) -> BatchRankConfig:
    values = dict(COMMON, data=str(synth_dir), max_users=11, shard_size=4, cache_dir=str(tmp_path / "cands"))
    values.update(overrides)
    return BatchRankConfig(out=str(out), **values)


@pytest.fixture
def job(synth_dir, tmp_path, tiny_model):
    out = tmp_path / "job"
    summary = run_batch_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model)
    return out, summary


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_shards_and_manifest_hold_the_rows_of_mmrec_rank(synth_dir, tmp_path, tiny_model, job):
    out, summary = job
    assert _files(out) == ["job.json", "manifest.json", *(f"shard-0000{i}.parquet" for i in range(3))]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["users"] for s in manifest["shards"]] == [4, 4, 3]
    assert manifest["counts"] == {"users": 11, "rows": 11, "error_rows": 0}
    assert manifest["config"] == json.loads((out / "job.json").read_text())["config"]
    assert summary.users == summary.ranked_users == 11 and summary.skipped_shards == 0 and summary.prompt_tokens > 0

    # The same rows, field for field, as `mmrec rank` writes to its JSONL for the same options.
    jsonl = tmp_path / "rank.jsonl"
    rank_cfg = RankConfig(
        out=str(jsonl), data=str(synth_dir), max_users=11, cache_dir=str(tmp_path / "cands"), **COMMON
    )
    run_rank(rank_cfg, loaded_model=tiny_model)
    rows = read_results(out)
    assert rows == read_results(jsonl)
    assert [r["user_id"] for r in rows] == [json.loads(line)["user_id"] for line in jsonl.read_text().splitlines()]
    assert all(r["valid"] and sorted(r["ranking"]) == sorted(r["candidates"]) for r in rows)


def test_a_rerun_skips_finished_shards_and_equals_the_uninterrupted_run(
    synth_dir, tmp_path, tiny_model, job, monkeypatch
):
    out, _ = job
    whole = read_results(out)
    manifest = (out / "manifest.json").read_bytes()
    # What a kill while shard 1 was being written leaves: shard 0 and 2 done, a temp file, no manifest.
    (out / "shard-00001.parquet").unlink()
    (out / "manifest.json").unlink()
    (out / ".shard-00001.parquet.x1y2.tmp").write_bytes(b"PAR1 cut off")
    ranked = []
    real = ShardWorker.rank_shard
    monkeypatch.setattr(
        ShardWorker, "rank_shard", lambda self, e: ranked.append([t.user_id for t in e]) or real(self, e)
    )
    summary = run_batch_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model)
    assert ranked == [[r["user_id"] for r in whole[4:8]]]  # only the missing shard, whole
    assert summary.skipped_shards == 2 and summary.ranked_users == 4
    assert read_results(out) == whole and (out / "manifest.json").read_bytes() == manifest
    assert not list(out.glob(".*.tmp"))

    ranked.clear()  # complete: the same command ranks nothing and leaves the output as it was
    run_batch_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model)
    assert ranked == [] and read_results(out) == whole


def test_a_changed_config_is_refused_naming_what_changed(synth_dir, tmp_path, tiny_model, job):
    out, _ = job
    before = {name: (out / name).read_bytes() for name in _files(out)}
    with pytest.raises(ValueError, match=r"another config \(changed: max_history\).*--overwrite"):
        run_batch_rank(_cfg(synth_dir, tmp_path, out, max_history=3), loaded_model=tiny_model)
    users = tmp_path / "users.txt"
    users.write_text("\n".join(r["user_id"] for r in read_results(out)[::-1]) + "\n")
    with pytest.raises(ValueError, match=r"changed: user_list\)"):
        run_batch_rank(_cfg(synth_dir, tmp_path, out, users=str(users)), loaded_model=tiny_model)
    with pytest.raises(ValueError, match=r"changed: shard_size\)"):
        run_batch_rank(_cfg(synth_dir, tmp_path, out, shard_size=5), loaded_model=tiny_model)
    assert {name: (out / name).read_bytes() for name in _files(out)} == before  # nothing was touched

    summary = run_batch_rank(_cfg(synth_dir, tmp_path, out, shard_size=5, overwrite=True), loaded_model=tiny_model)
    assert summary.skipped_shards == 0 and _files(out) == [
        "job.json",
        "manifest.json",
        *(f"shard-0000{i}.parquet" for i in range(3)),
    ]
    assert [s["users"] for s in json.loads((out / "manifest.json").read_text())["shards"]] == [5, 5, 1]


def test_every_user_ends_as_a_row_or_an_error_row_naming_it(synth_dir, tmp_path, tiny_model, monkeypatch):
    """An unknown user id, users whose prompt cannot fit (a 5000-character title among their candidates) and a
    user whose ranking raises are error rows naming them; every other user is ranked as without them."""
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    budget = dict(max_model_len=1200, max_text_chars=6000)  # a 5000-character title fits no prompt
    reference = run_batch_rank(_cfg(data, tmp_path, tmp_path / "ref", max_users=None, **budget), tiny_model)
    ref = {r["user_id"]: r for r in read_results(reference.out)}
    long_item = ref["u0003"]["target"]
    items = [json.loads(line) for line in (data / "items.jsonl").read_text().splitlines()]
    for item in items:
        if item["item_id"] == long_item:
            item["title"] = "Z" * 5000
    (data / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    too_long = {u for u, r in ref.items() if long_item in r["candidates"]}
    users = tmp_path / "users.txt"
    users.write_text("u0001\nghost\nu0003\n\nu0005\nu0006\nu0007\nu0008\n")

    real = Ranker.rank

    def fails_for_u0006(self, tasks):
        if any(t.user_id == "u0006" for t in tasks):
            raise RuntimeError("injected fault")
        return real(self, tasks)

    monkeypatch.setattr(Ranker, "rank", fails_for_u0006)
    out = tmp_path / "bad"
    cfg = _cfg(data, tmp_path, out, users=str(users), max_users=None, shard_size=3, **budget)
    summary = run_batch_rank(cfg, loaded_model=tiny_model)
    rows = read_results(out)
    assert [r["user_id"] for r in rows] == ["u0001", "ghost", "u0003", "u0005", "u0006", "u0007", "u0008"]
    errors = {r["user_id"]: r["error"] for r in rows if r["error"]}
    assert "ghost" in errors and "'ghost' is not in the candidate file" in errors["ghost"]
    assert "RuntimeError: injected fault" in errors["u0006"]
    listed_too_long = too_long & {"u0001", "u0003", "u0005", "u0007", "u0008"}
    assert "u0003" in listed_too_long and set(errors) == {"ghost", "u0006"} | listed_too_long
    assert all("PromptTooLongError" in errors[u] for u in listed_too_long)
    # Users who never met the long-titled item are ranked exactly as in the run without bad users.
    met = {
        json.loads(line)["user_id"]
        for line in (data / "interactions.jsonl").read_text().splitlines()
        if long_item in line
    }
    untouched = [r for r in rows if r["user_id"] not in met | set(errors)]
    assert len(untouched) >= 2
    for row in untouched:
        assert row["ranking"] == ref[row["user_id"]]["ranking"] and row["scores"] == ref[row["user_id"]]["scores"]
    assert summary.error_rows == len(errors) == json.loads((out / "manifest.json").read_text())["counts"]["error_rows"]

    users.write_text("u0001\nu0002\nu0001\n")
    with pytest.raises(ValueError, match=r"users.txt:3: user 'u0001' already on line 1"):
        run_batch_rank(_cfg(data, tmp_path, tmp_path / "dup", users=str(users)), loaded_model=tiny_model)


def test_evaluate_reads_the_folder_like_a_jsonl_file(synth_dir, tmp_path, tiny_model, job, capsys):
    out, _ = job
    jsonl = tmp_path / "same.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in read_results(out)))
    assert main(["evaluate", "--json", str(out), str(jsonl)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0].pop("file") == str(out) and lines[1].pop("file") == str(jsonl)
    assert lines[0] == lines[1] and lines[0]["n_users"] == 11

    (out / "manifest.json").unlink()  # a job that has not finished is refused, naming the fix
    assert main(["evaluate", str(out)]) == 1
    assert (
        "without manifest.json: its job has not finished; rerun the same `mmrec batch-rank`" in capsys.readouterr().err
    )


def test_explain_adds_each_users_explanation(synth_dir, tmp_path, tiny_model):
    out = tmp_path / "explained"
    run_batch_rank(_cfg(synth_dir, tmp_path, out, max_users=3, explain=True, explain_max_new_tokens=8), tiny_model)
    rows = read_results(out)
    assert len(rows) == 3
    for row in rows:
        assert row["valid"] and row["explanation_error"] is None and isinstance(row["explanation"], str)
        assert isinstance(row["cites_history"], bool) and isinstance(row["hallucinated_titles"], list)


def test_options_are_checked_before_anything_runs(synth_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--workers 2 needs --engine ray"):
        _cfg(synth_dir, tmp_path, tmp_path / "o", workers=2)
    with pytest.raises(ValueError, match=r"--engine must be one of local, ray"):
        _cfg(synth_dir, tmp_path, tmp_path / "o", engine="spark")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files that are not a batch-rank job's \(notes.txt\)"):
        run_batch_rank(_cfg(synth_dir, tmp_path, tmp_path / "o"))


class _OOMOverTwo:
    """Fault injection: out-of-memory whenever a forward pass holds more than two rows, or a prompt of one length."""

    def __init__(self, model, fail_len: int):
        self.model, self.fail_len = model, fail_len

    def __call__(self, *args, **kwargs):
        import torch

        ids = kwargs["input_ids"]
        if ids.shape[0] > 2 or ids.shape[1] == self.fail_len:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return self.model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_out_of_memory_halves_batches_and_one_user_that_still_fails_is_an_error_row(synth_dir, tmp_path, tiny_model):
    """R8 in a job: the backend halves a batch that ran out of memory; a prompt that fails alone is an error row."""
    import dataclasses

    from mmrec_gen.jobs.batch_rank import plan_batch
    from mmrec_gen.prompting.render import PromptBuilder

    cfg = _cfg(synth_dir, tmp_path, tmp_path / "ref", batch_size=8)
    run_batch_rank(cfg, loaded_model=tiny_model)
    ref = {r["user_id"]: r for r in read_results(tmp_path / "ref")}
    builder = PromptBuilder.from_options(tiny_model.tokenizer, "rank_listwise", cfg, 1)
    lengths = {
        e.user_id: len(builder.rank(e.user_id, e.history, e.candidates).input_ids)
        for s in plan_batch(cfg).shards
        for e in s
    }
    victim = list(lengths)[5]
    flaky = dataclasses.replace(tiny_model, model=_OOMOverTwo(tiny_model.model, lengths[victim]))
    summary = run_batch_rank(_cfg(synth_dir, tmp_path, tmp_path / "oom", batch_size=8), loaded_model=flaky)
    rows = read_results(tmp_path / "oom")
    failed = {r["user_id"] for r in rows if r["error"]}
    assert victim in failed and failed == {u for u, n in lengths.items() if n == lengths[victim]}
    assert all("out of memory" in r["error"] for r in rows if r["error"]) and summary.error_rows == len(failed)
    assert all(r["ranking"] == ref[r["user_id"]]["ranking"] for r in rows if not r["error"]) and len(rows) == 11
