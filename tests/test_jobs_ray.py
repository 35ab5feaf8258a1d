"""`mmrec batch-rank --engine ray`: Ray Data in local mode, two actors that each load the model once, gives the same
rows and manifest as the local engine, and finishes a job the local engine started (the engine is not part of the
job's config)."""

from __future__ import annotations

import json

import pytest

from mmrec_gen.data.results import read_results
from mmrec_gen.jobs.batch_config import BatchRankConfig
from mmrec_gen.jobs.batch_rank import run_batch_rank

pytest.importorskip("ray.data", reason="the ray extra (make install installs it)")

OPTIONS = dict(model="tiny-llama", num_candidates=5, max_users=14, shard_size=3, progress=False)


@pytest.mark.slow
def test_ray_with_two_workers_gives_the_rows_of_the_local_engine(synth_dir, tmp_path, tiny_model, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # local mode, whatever the shell says
    common = dict(OPTIONS, data=str(synth_dir), cache_dir=str(tmp_path / "cands"))
    local = tmp_path / "local"
    run_batch_rank(BatchRankConfig(out=str(local), **common), loaded_model=tiny_model)

    import ray

    # One local Ray for both jobs (the engine joins a Ray that is already up, and leaves it up).
    ray.init(num_cpus=3, include_dashboard=False)
    try:
        ray_out = tmp_path / "ray"
        summary = run_batch_rank(BatchRankConfig(out=str(ray_out), engine="ray", workers=2, **common))
        assert summary.ranked_users == 14 and summary.prompt_tokens > 0
        assert read_results(ray_out) == read_results(local)
        assert (ray_out / "manifest.json").read_bytes() == (local / "manifest.json").read_bytes()

        # A job the local engine started (shards 0 and 3 done, then killed) is finished by Ray: the same output.
        for name in ("shard-00001.parquet", "shard-00002.parquet", "shard-00004.parquet", "manifest.json"):
            (local / name).unlink()
        summary = run_batch_rank(BatchRankConfig(out=str(local), engine="ray", workers=2, **common))
        assert summary.skipped_shards == 2 and summary.ranked_users == 8
        assert read_results(local) == read_results(ray_out)
        counts = json.loads((local / "manifest.json").read_text())["counts"]
        assert counts == {"users": 14, "rows": 14, "error_rows": 0}
    finally:
        ray.shutdown()
