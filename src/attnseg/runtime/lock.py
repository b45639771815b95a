"""One process per run or prediction folder: a lock file naming the holder.

``<folder>/.attnseg.lock`` holds JSON ``{"pid", "host", "purpose", "since"}`` and is locked with
``flock`` for the life of the holder, so the kernel releases it when the holder dies, even by
SIGKILL. A second process is refused with the pid and host of the first; a lock file left by
a dead process (its pid no longer running) is taken over and reported. Where ``flock`` is not
available (Windows), the pid recorded in the file decides: a lock of a live pid on this host,
or of any pid on another host, refuses.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from attnseg.runtime.errors import FolderLockedError

try:
    import fcntl
except ImportError:  # Windows: pid-based locking only
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".attnseg.lock"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class FolderLock:
    """Exclusive use of ``folder`` by this process (a context manager).

    >>> with FolderLock(run_dir, "training"):
    ...     train()

    Raises :class:`~attnseg.runtime.errors.FolderLockedError` naming the holder's pid and host.
    After :meth:`acquire`, ``taken_over`` holds the record of a dead holder whose lock was taken.
    """

    def __init__(self, folder: str | os.PathLike, purpose: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.purpose = purpose
        self.taken_over: dict[str, Any] | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _record(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
                           "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode()

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any]:
        try:
            rec = json.loads(raw.decode() or "{}")
        except (ValueError, UnicodeDecodeError):
            return {}
        return rec if isinstance(rec, dict) else {}

    def _refuse(self, rec: dict[str, Any]) -> FolderLockedError:
        who = f"pid {rec.get('pid', '?')} on host {rec.get('host', '?')}"
        if rec.get("pid") == os.getpid() and rec.get("host") == socket.gethostname():
            who = "this process"
        return FolderLockedError(
            f"{self.folder}: in use by {who} ({rec.get('purpose', '?')} since {rec.get('since', '?')}); "
            f"wait for it to finish or stop it (lock file {self.path})")

    def acquire(self) -> FolderLock:
        if self.held:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                raw = os.read(fd, 65536)
                rec = self._parse(raw)
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise self._refuse(rec) from None
                    try:  # the holder may have unlinked the file between our open and flock
                        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                    except FileNotFoundError:
                        same = False
                    if not same:
                        os.close(fd)
                        continue
                    raw = os.pread(fd, 65536, 0)  # re-read under the lock
                    rec = self._parse(raw)
                elif rec and (rec.get("host") != socket.gethostname() or pid_alive(int(rec.get("pid", -1)))):
                    raise self._refuse(rec)
                if rec and rec.get("pid") != os.getpid():
                    self.taken_over = rec  # the process that wrote it is gone (its lock died with it)
                os.ftruncate(fd, 0)
                os.pwrite(fd, self._record(), 0)
                self._fd = fd
                return self
            except BaseException:
                if self._fd is None:
                    os.close(fd)
                raise
        raise FolderLockedError(f"{self.folder}: could not take the lock file {self.path} (contended)")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # unlink while still locked: no one else holds it
        finally:
            os.close(self._fd)
            self._fd = None

    def describe_takeover(self) -> str | None:
        """One line about the stale lock taken over, if any."""
        r = self.taken_over
        if r is None:
            return None
        return (f"took over the stale lock {self.path} of pid {r.get('pid', '?')} on host {r.get('host', '?')} "
                f"({r.get('purpose', '?')} since {r.get('since', '?')}): that process is no longer running")

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
