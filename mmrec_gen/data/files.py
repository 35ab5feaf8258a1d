"""The one atomic file writer and the one JSONL reader that every file format of the toolkit goes through."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_can_create_in(path: Path, flag: str, given: str | os.PathLike[str]) -> None:
    """Raise ValueError unless a file or folder can be created at `path`: its nearest existing ancestor must be a
    folder we can write in (probed with a temp file, so read-only mounts and missing permissions both show)."""
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise ValueError(
            f"{flag} {given}: {existing} is a file, so nothing can be created under it; pick another path"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".mmrec-write-check-", dir=existing)
    except OSError as exc:
        raise ValueError(
            f"{flag} {given}: cannot write in {existing} ({exc.strerror}); pick a writable path"
        ) from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: str | os.PathLike[str], flag: str = "--out") -> None:
    """Before any compute: raise ValueError (naming `flag`, the path and the fix) unless `path` can be written as a
    file. Creates nothing."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file path, e.g. {target / 'results.jsonl'}")
    _check_can_create_in(target.parent, flag, path)


def check_output_dir(path: str | os.PathLike[str], flag: str = "--output-dir") -> None:
    """Before any compute: raise ValueError unless `path` is a folder we can write in, or can be created as one."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder; give a folder path (it is created if missing)")
    _check_can_create_in(target, flag, path)


def new_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0666 less the process umask."""
    umask = os.umask(0o022)  # the stdlib reads the umask only by setting it: set it back at once
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, binary: bool = False) -> Iterator[IO]:
    """Write to a temp file in `path`'s folder, fsync, then rename it over `path`: a killed run never leaves a
    half-written file under the final name, and the temp file is removed whatever stopped the write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp makes 0600; the file gets the mode open() would give it
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number (a NaN or infinite value was written into the file)")


def loads_json(text: str | bytes):
    """`json.loads` that refuses NaN, Infinity and -Infinity (Python writes and reads them; JSON has no such
    numbers, and a NaN score would be evaluated as if it ranked something)."""
    return json.loads(text, parse_constant=_refuse_constant)


def dumps_json(obj, **kwargs) -> str:
    """`json.dumps` that raises ValueError on NaN or an infinity instead of writing them (`allow_nan=False`)."""
    return json.dumps(obj, allow_nan=False, **kwargs)


# A JSONL record longer than this is refused before it is parsed: a JSON array saved as .jsonl, or a file that is
# not JSONL at all, would otherwise be read into memory (and parsed) as one multi-gigabyte line.
MAX_JSONL_LINE_CHARS = 1 << 24


class JSONLineError(ValueError):
    """A line of a JSONL file that is not a JSON object; callers turn it into their format's own message."""

    def __init__(
        self, path: Path, line_no: int, problem: str, not_json: bool, got: str | None = None, column: int = 0
    ) -> None:
        super().__init__(f"{path}:{line_no}: {problem}")
        self.path, self.line_no, self.problem, self.not_json = path, line_no, problem, not_json
        self.got, self.column = got, column  # the JSON type found instead of an object; the column of a JSON error


def iter_jsonl(path: str | os.PathLike[str], *, encoding: str = "utf-8") -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) for every non-blank line; raises JSONLineError on the first bad line, or on a
    line longer than MAX_JSONL_LINE_CHARS (without reading the rest of it)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a JSONL file; pass the file itself (e.g. {path}/NAME.jsonl)")
    limit = MAX_JSONL_LINE_CHARS
    with path.open(encoding=encoding) as fh:
        for line_no, line in enumerate(iter(lambda: fh.readline(limit + 1), ""), start=1):
            if len(line) > limit and not line.endswith("\n"):
                raise JSONLineError(
                    path, line_no, f"a line of more than {limit:,} characters: JSONL holds one record per line "
                    "(a JSON array or another format?)", True,
                )  # fmt: skip
            if not line.strip():
                continue
            try:
                obj = loads_json(line)
            except json.JSONDecodeError as exc:
                raise JSONLineError(path, line_no, exc.msg, True, column=exc.colno) from exc
            except ValueError as exc:  # NaN / Infinity, or an integer of more than 4300 digits (Python's limit)
                raise JSONLineError(path, line_no, f"{str(exc)[:120]}", True) from None
            if not isinstance(obj, dict):
                raise JSONLineError(path, line_no, "not a JSON object", False, type(obj).__name__)
            yield line_no, obj
