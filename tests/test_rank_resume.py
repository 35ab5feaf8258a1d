"""`mmrec rank` killed part-way keeps its rows and the same command continues (docs/RELIABILITY.md R9): the final
file equals an uninterrupted run's, a changed config refuses to continue naming what changed, --overwrite starts
over."""

from __future__ import annotations

import json

import pytest

from mmrec_gen.rank.pipeline import run_rank
from mmrec_gen.rank.rank_config import RankConfig
from mmrec_gen.rank.ranker import Ranker


def _cfg(synth_dir, tmp_path, out, **overrides) -> RankConfig:
    values = dict(data=str(synth_dir), model="tiny-llama", max_users=11, num_candidates=5, batch_size=1,
                  cache_dir=str(tmp_path / "cands"), progress=False, out=str(out))  # fmt: skip
    values.update(overrides)
    return RankConfig(**values)


@pytest.fixture
def whole(synth_dir, tmp_path, tiny_model):
    out = tmp_path / "whole.jsonl"
    run_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model)
    return out


def test_a_killed_run_keeps_its_rows_and_the_rerun_equals_an_uninterrupted_run(
    synth_dir, tmp_path, tiny_model, whole, monkeypatch
):
    out = tmp_path / "killed.jsonl"
    real_rank, calls = Ranker.rank, []

    def rank_then_die(self, tasks):
        calls.append(len(tasks))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return real_rank(self, tasks)

    monkeypatch.setattr(Ranker, "rank", rank_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model)
    monkeypatch.setattr(Ranker, "rank", real_rank)
    kept = out.read_text().splitlines()
    assert len(kept) == 4 and kept == whole.read_text().splitlines()[:4]  # the first chunk (4 batches of 1)
    assert json.loads((tmp_path / "killed.jsonl.run.json").read_text())["complete"] is False

    # A kill while writing the second chunk: two of its rows and a line cut mid-write are on disk.
    with out.open("a") as fh:
        fh.write("\n".join(whole.read_text().splitlines()[4:6]) + '\n{"user_id": "cut')
    ranked = []
    monkeypatch.setattr(Ranker, "rank", lambda self, tasks: ranked.append(len(tasks)) or real_rank(self, tasks))
    rows = run_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model)
    assert ranked == [4, 3]  # the part-written chunk is ranked again, whole, as in the uninterrupted run
    assert out.read_bytes() == whole.read_bytes() and len(rows) == 11
    assert json.loads((tmp_path / "killed.jsonl.run.json").read_text())["complete"] is True

    ranked.clear()  # the same command once more: complete, nothing ranked, the file as it was
    assert run_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model) == rows
    assert ranked == [] and out.read_bytes() == whole.read_bytes()


def test_a_changed_config_refuses_to_continue_and_overwrite_starts_over(synth_dir, tmp_path, tiny_model, whole):
    before = whole.read_bytes()
    with pytest.raises(ValueError, match=r"another config \(changed: max_history\).*--overwrite"):
        run_rank(_cfg(synth_dir, tmp_path, whole, max_history=3), loaded_model=tiny_model)
    assert whole.read_bytes() == before
    rows = run_rank(_cfg(synth_dir, tmp_path, whole, max_history=3, overwrite=True), loaded_model=tiny_model)
    assert len(rows) == 11 and [json.loads(line) for line in whole.read_text().splitlines()] == rows
    assert json.loads((tmp_path / "whole.jsonl.run.json").read_text())["config"]["max_history"] == 3


def test_a_run_that_fails_before_its_first_row_writes_nothing(synth_dir, tmp_path, tiny_model, whole, monkeypatch):
    from mmrec_gen.rank import pipeline

    def no_model(*args, **kwargs):
        raise OSError("the model does not load")

    monkeypatch.setattr(pipeline, "build_ranker", no_model)
    fresh = tmp_path / "fresh.jsonl"
    with pytest.raises(OSError):
        run_rank(_cfg(synth_dir, tmp_path, fresh), loaded_model=tiny_model)
    assert not fresh.exists() and not (tmp_path / "fresh.jsonl.run.json").exists()
    # Over a finished file, even with --overwrite, nothing is blanked before a row can replace it.
    before = whole.read_bytes()
    sidecar = (tmp_path / "whole.jsonl.run.json").read_bytes()
    with pytest.raises(OSError):
        run_rank(_cfg(synth_dir, tmp_path, whole, overwrite=True), loaded_model=tiny_model)
    assert whole.read_bytes() == before and (tmp_path / "whole.jsonl.run.json").read_bytes() == sidecar
