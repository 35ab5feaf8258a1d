"""One job per output folder: a lock file holding the PID of the job that writes the folder.

Two `mmrec batch-rank` commands on one `--out` would both see the same shards missing and rank the same users
twice. The lock is `job.lock` in the folder, held with `flock` for as long as the job runs: a second job finds it
held and is refused, naming the PID; the kernel drops the lock when its process ends however it ends (kill -9
included), so a lock file left by a job that is gone is taken over, with a log line naming the old PID. flock
(rather than "the PID in the file is alive") cannot be fooled by a recycled PID, and two jobs taking over the
same stale file cannot both win.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_FILE = "job.lock"


class FolderInUseError(ValueError):
    """Another live job holds the folder's lock."""


class JobLock:
    """`with JobLock(folder):` holds the folder's lock for the block (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str], what: str = "batch-rank job"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self._fd: int | None = None

    def _holder(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8").strip() or "an unknown process"
        except OSError:
            return "an unknown process"

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderInUseError(
                    f"{self.folder} is in use by another {self.what} ({self._holder()}; lock file {self.path}): two "
                    "jobs on one folder would rank the same users twice. Wait for it to finish (then rerun this "
                    "command to resume or check it), stop it, or pass another --out"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # the job that held it removed it as we took it: take the new one
                same = False
            if same:
                break
            os.close(fd)
        previous = os.read(fd, 4096).decode("utf-8", "replace").strip()
        if previous:
            logger.warning("%s: taking over the lock of a job that is gone (%s)", self.path, previous)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except OSError:  # a read-only folder: the file stays, and the next job takes it over (flock is released)
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
