"""Reading and writing ranking result files (JSONL, one row per user; the row layout is documented in
`mmrec_gen.eval.metrics`).

Writes are atomic (temp file in the same folder + `os.replace`) so a killed job never leaves a half-written
results file under the final name; `append_result` is the streaming counterpart for shard files that the job
layer renames itself.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any


def read_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a results JSONL file into a list of row dicts (blank lines are skipped).

    Raises ValueError naming the file and the 1-based line number when a line is not a JSON object.
    """
    path = Path(path)
    rows: list[dict[str, Any]] = []
    with path.open("r", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path}:{line_no}: not valid JSON ({exc.msg} at column {exc.colno}); the file is corrupt or was "
                    f"cut off mid-write: re-run the command that wrote it, or delete that line"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}:{line_no}: expected a JSON object (one result row per line), got {type(row).__name__}"
                )
            rows.append(row)
    return rows


def _dumps(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False)


def write_results(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write `rows` as JSONL atomically: a temp file in the target folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(_dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Never leave the temp file behind, whatever stopped the write.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def append_result(fh: IO[str], row: dict[str, Any]) -> None:
    """Append one row to an open text file and flush, so a crash loses at most the row being written."""
    fh.write(_dumps(row) + "\n")
    fh.flush()
