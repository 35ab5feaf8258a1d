"""Reading and writing ranking result files (JSONL, one row per user; the row type is
`mmrec_gen.data.rows.ResultRow`).

Writes are atomic (temp file in the same folder + `os.replace`) so a killed job never leaves a half-written
results file under the final name; `append_result` is the streaming counterpart for shard files that the job
layer renames itself.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from typing import IO, Any

from mmrec_gen.data.files import JSONLineError, atomic_write, iter_jsonl

logger = logging.getLogger(__name__)


def read_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a results JSONL file into a list of row dicts (blank lines are skipped).

    Raises ValueError naming the file and the 1-based line number when a line is not a JSON object.
    """
    return [row for _, row in iter_results(path)]


def iter_results(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, row) of a results JSONL file; raises ValueError like `read_results`."""
    try:
        yield from iter_jsonl(path)
    except JSONLineError as err:
        if err.not_json:
            raise ValueError(
                f"{err.path}:{err.line_no}: not valid JSON ({err.problem} at column {err.column}); the file is corrupt or was "
                f"cut off mid-write: re-run the command that wrote it, or delete that line"
            ) from None
        raise ValueError(
            f"{err.path}:{err.line_no}: expected a JSON object (one result row per line), got {err.got}"
        ) from None


def _dumps(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False)


def write_results(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write `rows` as JSONL atomically: a temp file in the target folder, fsync, then rename over `path` (logged
    when it replaces an existing file)."""
    if os.path.exists(path):
        logger.info("replacing the existing %s", path)
    with atomic_write(path) as fh:
        for row in rows:
            fh.write(_dumps(row) + "\n")


def append_result(fh: IO[str], row: dict[str, Any]) -> None:
    """Append one row to an open text file and flush, so a crash loses at most the row being written."""
    fh.write(_dumps(row) + "\n")
    fh.flush()
