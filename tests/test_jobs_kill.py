"""docs/RELIABILITY.md R9 for `mmrec batch-rank`: a real `mmrec batch-rank` process is killed with SIGKILL at a
random point after its first shard appears; the same command again finishes the job, and the output equals an
uninterrupted run: the same rows in the same order, none lost, none doubled."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

from mmrec_gen.data.results import read_results
from mmrec_gen.jobs.batch_config import BatchRankConfig
from mmrec_gen.jobs.batch_rank import run_batch_rank

OPTIONS = dict(model="tiny-llama", num_candidates=5, mode="generate", max_new_tokens=24, shard_size=2)


def _command(synth_dir, cache, out) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in OPTIONS.items()]
    return [sys.executable, "-m", "mmrec_gen", "batch-rank", f"--data={synth_dir}", f"--cache-dir={cache}",
            f"--out={out}", "--progress=false", *flags]  # fmt: skip


def test_a_sigkilled_job_resumes_to_the_uninterrupted_output(synth_dir, tmp_path, tiny_model):
    cache = tmp_path / "cands"
    whole = tmp_path / "whole"
    run_batch_rank(
        BatchRankConfig(data=str(synth_dir), cache_dir=str(cache), out=str(whole), progress=False, **OPTIONS),
        loaded_model=tiny_model,
    )
    expected = read_results(whole)
    assert len(expected) == 40 and len(list(whole.glob("shard-*.parquet"))) == 20

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    seed = random.randrange(1_000_000)
    after = random.Random(seed).randint(1, 6)  # shards on disk before the kill, plus a random delay below
    proc = subprocess.Popen(_command(synth_dir, cache, out), env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(list(out.glob("shard-*.parquet"))) < after:
        assert proc.poll() is None, f"the job ended before it was killed: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no shard after 300 s"
        time.sleep(0.01)
    time.sleep(random.Random(seed + 1).uniform(0, 0.3))
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = sorted(p.name for p in out.glob("shard-*.parquet"))
    assert not (out / "manifest.json").exists(), f"seed {seed}: the job finished before the kill"
    assert 1 <= len(done) < 20, (seed, done)

    rerun = subprocess.run(_command(synth_dir, cache, out), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # The finished shards were kept, and only the rest was ranked.
    assert f"in 20 shards ({len(done)} already done)" in rerun.stdout, rerun.stdout
    assert f"this run ranked {40 - 2 * len(done)} users" in rerun.stdout, rerun.stdout
    rows = read_results(out)
    ids = [r["user_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 40, f"seed {seed}: lost or doubled users"
    assert rows == expected, f"seed {seed}: the resumed output differs from an uninterrupted run"
    assert json.loads((out / "manifest.json").read_text()) == json.loads((whole / "manifest.json").read_text())
    assert not list(out.glob(".*.tmp"))
