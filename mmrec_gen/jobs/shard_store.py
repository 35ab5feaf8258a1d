"""The output folder of a batch-rank job, and how a killed job resumes (docs/RELIABILITY.md R9).

    job.lock              the running job's PID, while it runs (jobs/job_lock.py: one job per folder)
    job.json              the job's config fingerprint and shard count, written first
    shard-00000.parquet   one per shard of users, each written to a temp name in the folder and renamed
    manifest.json         written last: the fingerprint, every shard (file, users, rows, error rows), totals

The same command again keeps every finished shard (a final name means a complete file) and ranks the rest; a
temp file left by a kill is deleted. A changed config refuses to resume and names the options that changed
(rank/resume.py's `config_changes`, shared with `mmrec rank`); `--overwrite` starts over. A damaged job.json or
finished shard is named with the fix; a folder that stops being writable mid-run ends the job with one error naming
it (the shards finished so far stay, and the same command resumes once it is writable).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mmrec_gen.data.files import atomic_write
from mmrec_gen.data.results import MANIFEST, MANIFEST_FORMAT, read_shard_user_ids, write_results_parquet
from mmrec_gen.jobs.job_lock import LOCK_FILE
from mmrec_gen.rank.resume import as_saved, config_changes

logger = logging.getLogger(__name__)

JOB_FILE = "job.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def _write_json(path: Path, data: dict) -> None:
    with _writing(path):
        with atomic_write(path) as fh:
            fh.write(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turns an OSError while writing `path` (a read-only or full folder) into one ValueError naming the folder."""
    try:
        yield
    except OSError as exc:
        raise ValueError(
            f"{path.parent}: cannot write {path.name} ({exc.strerror or exc}); the shards finished so far are kept: "
            "make the folder writable (or free space) and rerun the same command to resume"
        ) from None


def _unreadable(path: Path, exc: Exception) -> ValueError:
    return ValueError(
        f"{path}: a finished shard that cannot be read ({type(exc).__name__}: {str(exc)[:160]}); delete it to rank "
        "its users again with the same command, or pass --overwrite to start the job over"
    )


def read_job_file(path: Path) -> dict[str, Any]:
    """job.json of a batch-rank folder; a damaged one raises ValueError naming it and the fix."""
    saved, problem = None, "not a batch-rank job file (no 'config' mapping)"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problem = f"cannot read it ({exc.strerror})"
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        problem = f"not valid JSON ({exc})"
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise ValueError(
            f"{path}: {problem}; it was edited or damaged, so the job cannot be checked for resuming: pass "
            "--overwrite to start the job over (its shards are ranked again), or restore the file"
        )
    return saved


class ShardStore:
    """`start` says which shards are finished, `write` adds one, `finish` writes the manifest."""

    def __init__(self, out: str | os.PathLike[str], fingerprint: dict[str, Any], shard_users: Sequence[Sequence[str]]):
        self.folder = Path(out)
        self.fingerprint = as_saved(fingerprint)
        self.shard_users = [[str(u) for u in users] for users in shard_users]

    def _ours(self) -> list[Path]:
        """The files this job kind writes in the folder (and temp files a kill left)."""
        names = {JOB_FILE, MANIFEST}
        return [
            p
            for p in self.folder.iterdir()
            if p.name in names or (p.name.startswith(("shard-", ".shard-", f".{MANIFEST}", f".{JOB_FILE}")))
        ]

    def start(self, *, overwrite: bool) -> set[int]:
        """The indices of finished shards (empty when starting over); raises ValueError when the folder holds a
        job of another config, or files that are not a batch-rank job's."""
        self.folder.mkdir(parents=True, exist_ok=True)
        job = self.folder / JOB_FILE
        if overwrite:
            for path in self._ours():
                path.unlink()
        elif job.exists():
            saved = read_job_file(job)
            changed = config_changes(saved["config"], self.fingerprint)
            if changed:
                raise ValueError(
                    f"{self.folder} holds a batch-rank job with another config (changed: {', '.join(changed)}); "
                    "rerun with the same options to resume it, pass --overwrite to start over, or use another --out"
                )
        others = sorted(p.name for p in self.folder.iterdir() if p not in self._ours() and p.name != LOCK_FILE)
        if others:
            raise ValueError(
                f"--out {self.folder} holds files that are not a batch-rank job's ({', '.join(others[:3])}); "
                "give an empty or new folder"
            )
        for path in self.folder.glob(".*.tmp"):  # a shard or manifest a kill cut off before its rename
            logger.info("removing %s (cut off by a killed run)", path)
            path.unlink()
        if not job.exists():
            _write_json(job, {"format": MANIFEST_FORMAT, "config": self.fingerprint, "shards": len(self.shard_users)})
        done = set()
        for index, users in enumerate(self.shard_users):
            path = self.folder / shard_name(index)
            if not path.exists():
                continue
            try:
                found = read_shard_user_ids(path)
            except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise _unreadable(path, exc) from None
            if found != users:
                raise ValueError(
                    f"{path}: holds other users than this job's shard {index}; pass --overwrite to start over"
                )
            done.add(index)
        stray = [p.name for p in self.folder.glob("shard-*.parquet") if p.name not in self._names()]
        if stray:
            raise ValueError(f"{self.folder}: {stray[0]} is not a shard of this job; pass --overwrite to start over")
        if len(done) < len(self.shard_users) and (self.folder / MANIFEST).exists():
            (self.folder / MANIFEST).unlink()  # the manifest is only ever there when every shard is
        if done:
            logger.info("%s: %d of %d shards already done; ranking the rest", self.folder, len(done), len(self))
        return done

    def _names(self) -> set[str]:
        return {shard_name(i) for i in range(len(self.shard_users))}

    def __len__(self) -> int:
        return len(self.shard_users)

    def write(self, index: int, rows: Sequence[dict[str, Any]]) -> None:
        got = [str(r["user_id"]) for r in rows]
        if got != self.shard_users[index]:
            raise RuntimeError(
                f"shard {index}: rows for users {got[:3]}..., expected {self.shard_users[index][:3]}..."
            )
        path = self.folder / shard_name(index)
        with _writing(path):
            write_results_parquet(path, rows)

    def finish(self) -> dict[str, Any]:
        """Write the manifest (last) from the shards on disk; returns it."""
        import pyarrow.parquet as pq

        shards = []
        for index, users in enumerate(self.shard_users):
            path = self.folder / shard_name(index)
            try:
                errors = pq.read_table(path, columns=["error"]).column("error").to_pylist()
            except (OSError, ValueError) as exc:
                raise _unreadable(path, exc) from None
            shards.append(
                {"file": shard_name(index), "users": len(users), "rows": len(errors),
                 "error_rows": sum(e is not None for e in errors), "first_user": users[0], "last_user": users[-1]}
            )  # fmt: skip
        manifest = {
            "format": MANIFEST_FORMAT,
            "config": self.fingerprint,
            "shards": shards,
            "counts": {
                "users": sum(s["users"] for s in shards),
                "rows": sum(s["rows"] for s in shards),
                "error_rows": sum(s["error_rows"] for s in shards),
            },
        }
        _write_json(self.folder / MANIFEST, manifest)
        return manifest
