"""The output folder of a batch-rank job, and how a killed job resumes (docs/RELIABILITY.md R9).

    job.json              the job's config fingerprint and shard count, written first
    shard-00000.parquet   one per shard of users, each written to a temp name in the folder and renamed
    manifest.json         written last: the fingerprint, every shard (file, users, rows, error rows), totals

The same command again keeps every finished shard (a final name means a complete file) and ranks the rest; a
temp file left by a kill is deleted. A changed config refuses to resume and names the options that changed
(rank/resume.py's `config_changes`, shared with `mmrec rank`); `--overwrite` starts over.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmrec_gen.data.files import atomic_write
from mmrec_gen.data.results import MANIFEST, MANIFEST_FORMAT, read_shard_user_ids, write_results_parquet
from mmrec_gen.rank.resume import as_saved, config_changes

logger = logging.getLogger(__name__)

JOB_FILE = "job.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def _write_json(path: Path, data: dict) -> None:
    with atomic_write(path) as fh:
        fh.write(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


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
            saved = json.loads(job.read_text(encoding="utf-8"))
            changed = config_changes(saved.get("config") or {}, self.fingerprint)
            if changed:
                raise ValueError(
                    f"{self.folder} holds a batch-rank job with another config (changed: {', '.join(changed)}); "
                    "rerun with the same options to resume it, pass --overwrite to start over, or use another --out"
                )
        others = sorted(p.name for p in self.folder.iterdir() if p not in self._ours())
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
            if read_shard_user_ids(path) != users:
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
        write_results_parquet(self.folder / shard_name(index), rows)

    def finish(self) -> dict[str, Any]:
        """Write the manifest (last) from the shards on disk; returns it."""
        import pyarrow.parquet as pq

        shards = []
        for index, users in enumerate(self.shard_users):
            errors = pq.read_table(self.folder / shard_name(index), columns=["error"]).column("error").to_pylist()
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
