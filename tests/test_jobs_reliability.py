"""Batch jobs that share, lose or damage their output folder (issue 23): one job per folder (a lock holding the
PID, taken over when its job is gone), a folder that turns read-only mid-run, a damaged shard or job.json."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest

from mmrec_gen.cli import main
from mmrec_gen.data.results import read_results
from mmrec_gen.jobs.batch_config import BatchRankConfig
from mmrec_gen.jobs.batch_rank import run_batch_rank
from mmrec_gen.jobs.job_lock import LOCK_FILE, FolderInUseError
from mmrec_gen.jobs.shard_worker import ShardWorker

COMMON = dict(model="tiny-llama", num_candidates=5, batch_size=4, progress=False)
HOLD_LOCK = """
import sys
from mmrec_gen.jobs.job_lock import JobLock
with JobLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # hold it until the test closes our stdin
"""


def _cfg(synth_dir, tmp_path, out, **overrides) -> BatchRankConfig:
    values = dict(COMMON, data=str(synth_dir), max_users=6, shard_size=2, cache_dir=str(tmp_path / "cands"))
    values.update(overrides)
    return BatchRankConfig(out=str(out), **values)


def _env() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}


def test_a_second_job_on_one_folder_is_refused_while_the_first_lives(synth_dir, tmp_path, tiny_model):
    out = tmp_path / "job"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=_env(),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUseError, match=rf"job is in use by another batch-rank job \(PID {holder.pid} on "):
            run_batch_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing ranked, nothing written
    finally:
        holder.stdin.close()
        holder.wait()
    # The holder is gone (its lock with it): the same command now runs, and removes the lock when done.
    summary = run_batch_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model)
    assert summary.ranked_users == 6 and len(read_results(out)) == 6 and not (out / LOCK_FILE).exists()


def test_the_cli_refuses_a_locked_folder_in_one_line(synth_dir, tmp_path, capsys):
    out = tmp_path / "job"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=_env(),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["batch-rank", "--data", str(synth_dir), "--model", "tiny-llama", "--num-candidates", "5",
                "--max-users", "2", "--out", str(out), "--cache-dir", str(tmp_path / "cands"), "--progress", "false"]  # fmt: skip
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"mmrec batch-rank: error: {out} is in use by another batch-rank job (PID {holder.pid}")
    finally:
        holder.stdin.close()
        holder.wait()


def test_a_lock_left_by_a_job_that_is_gone_is_taken_over(synth_dir, tmp_path, tiny_model, caplog):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)  # a process that has exited
    out = tmp_path / "job"
    out.mkdir()
    (out / LOCK_FILE).write_text(f"PID {pid} on somewhere\n")
    summary = run_batch_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model)
    assert summary.ranked_users == 6 and not (out / LOCK_FILE).exists()
    assert f"taking over the lock of a job that is gone (PID {pid} on somewhere)" in caplog.text


@contextlib.contextmanager
def _read_only(folder):
    """The folder made read-only for this process: chmod for a normal user; root ignores modes, so for root the
    folder is made immutable (chattr +i), or the test is skipped where that is not possible."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root and chattr +i is not available: cannot make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_folder_that_turns_read_only_mid_run_ends_in_one_error_and_keeps_finished_shards(
    synth_dir, tmp_path, tiny_model, monkeypatch
):
    out = tmp_path / "job"
    ref = run_batch_rank(_cfg(synth_dir, tmp_path, tmp_path / "ref"), loaded_model=tiny_model)
    real = ShardWorker.rank_shard
    stack = contextlib.ExitStack()

    def read_only_after_the_first_shard(self, entries):
        if (out / "shard-00000.parquet").exists() and not stack._exit_callbacks:
            stack.enter_context(_read_only(out))
        return real(self, entries)

    monkeypatch.setattr(ShardWorker, "rank_shard", read_only_after_the_first_shard)
    with stack, pytest.raises(ValueError) as exc:
        run_batch_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model)
    message = str(exc.value)
    assert message.startswith(f"{out}: cannot write shard-00001.parquet (")
    assert "the shards finished so far are kept: make the folder writable" in message and "\n" not in message
    # The lock file stays (a read-only folder): the next job takes it over.
    assert sorted(p.name for p in out.iterdir()) == ["job.json", LOCK_FILE, "shard-00000.parquet"]

    monkeypatch.setattr(ShardWorker, "rank_shard", real)  # writable again: the same command resumes
    summary = run_batch_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model)
    assert summary.skipped_shards == 1 and read_results(out) == read_results(ref.out)


def test_a_damaged_shard_or_job_file_is_named_with_the_fix(synth_dir, tmp_path, tiny_model, capsys):
    out = tmp_path / "job"
    run_batch_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model)
    whole = read_results(out)
    (out / "shard-00001.parquet").write_bytes(b"PAR1 not a parquet file")
    with pytest.raises(ValueError, match=r"shard-00001.parquet: cannot read this shard .*delete it and rerun"):
        read_results(out)
    with pytest.raises(ValueError) as exc:
        run_batch_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model)
    assert str(exc.value).startswith(f"{out / 'shard-00001.parquet'}: a finished shard that cannot be read")
    assert "delete it to rank its users again with the same command, or pass --overwrite" in str(exc.value)
    (out / "shard-00001.parquet").unlink()  # the fix it names
    assert run_batch_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model).ranked_users == 2
    assert read_results(out) == whole

    (out / "job.json").write_text('{"format": "mmrec-batch-rank/1",\n')
    with pytest.raises(ValueError) as exc:
        run_batch_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model)
    assert str(exc.value).startswith(f"{out / 'job.json'}: not valid JSON (Expecting property name enclosed")
    assert "pass --overwrite to start the job over" in str(exc.value)
    (out / "job.json").write_text("[]\n")
    with pytest.raises(ValueError, match=r"job.json: not a batch-rank job file \(no 'config' mapping\)"):
        run_batch_rank(_cfg(synth_dir, tmp_path, out), loaded_model=tiny_model)
    assert run_batch_rank(_cfg(synth_dir, tmp_path, out, overwrite=True), loaded_model=tiny_model).ranked_users == 6
