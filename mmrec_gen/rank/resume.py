"""A ranking results file that survives a kill (docs/RELIABILITY.md R9 for `mmrec rank`).

Rows are appended and flushed as each chunk of users is ranked; a sidecar `<out>.run.json` holds the run's config
fingerprint and whether the run completed. The same command again continues after the last complete chunk (a cut
line or a part-written chunk is dropped and ranked again, so every chunk is ranked with the same batches as in an
uninterrupted run and the final file is the same); a changed config refuses to continue and names what changed;
`--overwrite` starts over.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from mmrec_gen.data.results import append_result

logger = logging.getLogger(__name__)


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The options whose values differ between a saved run config and this run's (sorted; [] when equal). Both
    sides should be JSON round-tripped (`as_saved`), so a tuple and the list it reads back as compare equal."""
    return sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))


def as_saved(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint as it reads back from a JSON file."""
    return json.loads(json.dumps(fingerprint))


def sidecar_path(out: str | os.PathLike[str]) -> Path:
    return Path(f"{out}.run.json")


def _complete_rows(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The rows of every complete line (ending in a newline and valid JSON) up to the first bad one, and the byte
    offset after each of them."""
    rows, ends, offset = [], [], 0
    with path.open("rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
            offset += len(line)
            ends.append(offset)
    return rows, ends


class ResumableResults:
    """`--out` of one ranking run: `start` says which users are done, `append` writes a chunk, `finish` seals it."""

    def __init__(self, out: str | os.PathLike[str], fingerprint: dict[str, Any], *, chunk: int, overwrite: bool):
        self.path, self.sidecar = Path(out), sidecar_path(out)
        self.fingerprint = as_saved(fingerprint)
        self.chunk, self.overwrite = chunk, overwrite
        self._fh: IO[str] | None = None
        self._started = False
        self._keep_bytes: int | None = None  # where the existing file is cut when writing starts (None: new file)

    def _write_sidecar(self, complete: bool) -> None:
        state = {"config": self.fingerprint, "complete": complete}
        self.sidecar.write_text(json.dumps(state, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")

    def start(self, user_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The rows already written for the first users of `user_ids` (empty when starting over); raises
        ValueError when `--out` holds a run of another config."""
        saved = json.loads(self.sidecar.read_text(encoding="utf-8")) if self.sidecar.exists() else None
        done: list[dict[str, Any]] = []
        if self.path.exists() and saved is not None and not self.overwrite:
            changed = ", ".join(config_changes(saved.get("config") or {}, self.fingerprint))
            if changed:
                raise ValueError(
                    f"{self.path} holds rows of a ranking run with another config (changed: {changed}); rerun with "
                    "the same options to continue it, pass --overwrite to start over, or use another --out"
                )
            rows, ends = _complete_rows(self.path)
            keep = len(rows) if saved.get("complete") else len(rows) - len(rows) % self.chunk
            keep = min(keep, len(user_ids))
            if [str(r.get("user_id")) for r in rows[:keep]] != [str(u) for u in user_ids[:keep]]:
                raise ValueError(
                    f"{self.path}: its rows are not the first users of this run's candidate file; pass --overwrite "
                    "to start over, or use another --out"
                )
            done = rows[:keep]
            self._keep_bytes = ends[keep - 1] if keep else 0
            if keep == len(user_ids):
                logger.info("%s: complete (%d rows) with this config; nothing to rank", self.path, keep)
            else:
                logger.info("%s: continuing after row %d of %d", self.path, keep, len(user_ids))
        elif self.path.exists():
            logger.info("replacing the existing %s", self.path)
            self._keep_bytes = 0
        self._started = True
        return done

    def _open(self) -> None:
        """Touch the files only once there is something to write: a run that fails before its first row (a model
        that does not load) leaves an existing --out as it was and creates none."""
        if self._fh is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._keep_bytes is not None and self.path.exists():
            os.truncate(self.path, self._keep_bytes)
        self._keep_bytes = None  # cut once: a later reopen (finish after close) appends
        self._write_sidecar(complete=False)
        self._fh = self.path.open("a", encoding="utf-8")

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        assert self._started, "start() first"
        self._open()
        for row in rows:
            append_result(self._fh, row)
        os.fsync(self._fh.fileno())

    def finish(self) -> None:
        self._open()  # a run with nothing left to rank still seals the file (and drops a cut last line)
        self._fh.close()
        self._fh = None
        self._write_sidecar(complete=True)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
