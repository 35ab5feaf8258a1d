"""Reading and writing ranking result files (JSONL, one row per user; the row type is
`mmrec_gen.data.rows.ResultRow`).

Writes are atomic (temp file in the same folder + `os.replace`) so a killed job never leaves a half-written
results file under the final name; `append_result` is the streaming counterpart (`mmrec rank`'s resumable file).

A batch-rank output folder (`mmrec batch-rank`, mmrec_gen/jobs/) holds Parquet shards of the same rows plus a
`manifest.json` written last; `iter_results` and `read_results` read such a folder like one JSONL file, in the
manifest's shard order, and refuse a folder whose job has not finished. In a shard, `meta` and the extra keys
(`extra`) are JSON text columns, because their keys differ between runs; the other fields are typed columns.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from mmrec_gen.data.files import JSONLineError, atomic_write, dumps_json, iter_jsonl, loads_json
from mmrec_gen.data.rows import ERROR_KEYS, ROW_FIELDS, ResultRow

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mmrec-batch-rank/1"

logger = logging.getLogger(__name__)


def read_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a results JSONL file into a list of row dicts (blank lines are skipped).

    Raises ValueError naming the file and the 1-based line number when a line is not a JSON object.
    """
    return [row for _, row in iter_results(path)]


def iter_results(path: str | os.PathLike[str]) -> Iterator[tuple[int | str, dict[str, Any]]]:
    """(1-based line number, row) of a results JSONL file, or ("shard-00003.parquet row 5", row) of a batch-rank
    output folder; raises ValueError like `read_results`."""
    if Path(path).is_dir() and (Path(path) / MANIFEST).exists():
        yield from iter_result_dir(path)
        return
    if Path(path).is_dir() and any(Path(path).glob("shard-*.parquet")):
        raise ValueError(
            f"{path}: a batch-rank folder without {MANIFEST}: its job has not finished; rerun the same "
            "`mmrec batch-rank` command to complete it"
        )
    try:
        yield from iter_jsonl(path)
    except JSONLineError as err:
        if err.not_json:
            where = f" at column {err.column}" if err.column else ""
            raise ValueError(
                f"{err.path}:{err.line_no}: not valid JSON ({err.problem}{where}); the file is corrupt, was cut off "
                "mid-write or was written with NaN scores: re-run the command that wrote it, or delete that line"
            ) from None
        raise ValueError(
            f"{err.path}:{err.line_no}: expected a JSON object (one result row per line), got {err.got}"
        ) from None


def _dumps(value: Any) -> str:
    return dumps_json(value, ensure_ascii=False)


def row_line(path: str | os.PathLike[str], row: dict[str, Any]) -> str:
    """One row as a JSON line; a NaN or infinite number in it raises ValueError naming the file and the user (the
    code that made the row should have made it an error row: nothing is written)."""
    try:
        return _dumps(row) + "\n"
    except ValueError:
        raise ValueError(
            f"{path}: the row of user {row.get('user_id')!r} holds a NaN or infinite number, which JSON cannot hold; "
            "it was not written. The method that made it must turn non-finite scores into an error row: report it"
        ) from None


def write_results(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write `rows` as JSONL atomically: a temp file in the target folder, fsync, then rename over `path` (logged
    when it replaces an existing file). A row holding NaN or an infinity raises ValueError and leaves `path` as it
    was (`row_line`)."""
    if os.path.exists(path):
        logger.info("replacing the existing %s", path)
    with atomic_write(path) as fh:
        for row in rows:
            fh.write(row_line(path, row))


def append_result(fh: IO[str], row: dict[str, Any]) -> None:
    """Append one row to an open text file and flush, so a crash loses at most the row being written; a row holding
    NaN or an infinity raises ValueError before anything is written (`row_line`)."""
    fh.write(row_line(fh.name, row))
    fh.flush()


# -- batch-rank folders: Parquet shards + manifest -----------------------------------------------------------


def _row_schema():
    import pyarrow as pa

    text_list = pa.list_(pa.string())
    return pa.schema(
        [
            ("user_id", pa.string()), ("candidates", text_list), ("ranking", text_list), ("target", pa.string()),
            ("valid", pa.bool_()), ("raw_output", pa.string()),
            ("errors", pa.struct([(k, pa.int64()) for k in ERROR_KEYS])), ("scores", pa.list_(pa.float64())),
            ("truncated", pa.bool_()), ("n_history", pa.int64()), ("error", pa.string()),
            ("meta", pa.string()), ("extra", pa.string()),
        ]
    )  # fmt: skip


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def write_results_parquet(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write rows as one Parquet file atomically (a temp name in the same folder, fsync, rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list] = {name: [] for name in (*ROW_FIELDS, "extra")}
    for row in rows:
        r = ResultRow.from_dict(row)
        row_line(path, row)  # the same check as a JSONL line: no NaN or infinity in any field
        columns["user_id"].append(str(r.user_id))
        columns["candidates"].append(None if r.candidates is None else [str(c) for c in r.candidates])
        columns["ranking"].append(None if r.ranking is None else [str(c) for c in r.ranking])
        columns["target"].append(_text(r.target))
        columns["valid"].append(bool(r.valid))
        columns["raw_output"].append(r.raw_output)
        columns["errors"].append({k: int(r.errors.get(k, 0)) for k in ERROR_KEYS})
        columns["scores"].append(None if r.scores is None else [float(s) for s in r.scores])
        columns["truncated"].append(bool(r.truncated))
        columns["n_history"].append(int(r.n_history))
        columns["error"].append(r.error)
        columns["meta"].append(_dumps(r.meta))
        columns["extra"].append(_dumps(r.extra) if r.extra else None)
    table = pa.Table.from_pydict(columns, schema=_row_schema())
    with atomic_write(path, binary=True) as fh:
        pq.write_table(table, fh)


def read_results_parquet(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a Parquet shard, as the same dicts `to_dict` gives (and a JSONL line reads back as)."""
    import pyarrow.parquet as pq

    rows = []
    for record in pq.read_table(path).to_pylist():
        extra = loads_json(record.pop("extra") or "{}")
        record["meta"] = loads_json(record["meta"])
        rows.append(ResultRow(**record, extra=extra).to_dict())
    return rows


def read_shard_user_ids(path: str | os.PathLike[str]) -> list[str]:
    """The user_id column of a Parquet shard (read alone: a cheap check of which users a shard holds)."""
    import pyarrow.parquet as pq

    return [str(u) for u in pq.read_table(path, columns=["user_id"]).column("user_id").to_pylist()]


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the manifest ({exc}); rerun the `mmrec batch-rank` command") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: not a {MANIFEST_FORMAT} manifest (format {manifest.get('format')!r})")
    return manifest


def iter_result_dir(folder: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """("shard-00003.parquet row 5", row) for every row of a finished batch-rank folder, in manifest order."""
    folder = Path(folder)
    for shard in read_manifest(folder)["shards"]:
        path = folder / shard["file"]
        if not path.exists():
            raise ValueError(f"{path}: listed in {folder / MANIFEST} but missing; rerun the batch-rank command")
        try:
            rows = read_results_parquet(path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise ValueError(
                f"{path}: cannot read this shard ({type(exc).__name__}: {str(exc)[:160]}); delete it and rerun the "
                "`mmrec batch-rank` command: it ranks that shard's users again"
            ) from None
        if len(rows) != shard["rows"]:
            raise ValueError(f"{path}: {len(rows)} rows, the manifest says {shard['rows']}; rerun the job")
        for n, row in enumerate(rows, start=1):
            yield f"{shard['file']} row {n}", row
