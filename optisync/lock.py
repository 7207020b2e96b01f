"""The run lock: one optisync run per piece of work at a time (exit 75 on overlap).

``fcntl.flock`` on a lock file. The kernel releases the lock when its holder exits, even
by SIGKILL, so a lock left by a killed run is simply taken over; there is no stale-pid
guessing. The file is never deleted (deleting it would let two runs lock two different
files of the same name); while held it names its holder — pid, command, start time and
host — for the error message, and it is emptied on release.

flock is advisory and per open file: two ``RunLock`` objects on the same path conflict
even inside one process. On NFS, Linux emulates flock with byte-range locks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from optisync.durable import FILE_MODE, ensure_private_dir, is_symlink_error, open_private
from optisync.errors import LockedError, StorageError

__all__ = ["RunLock"]

POLL_SECONDS = 0.1

_HINT = (
    "wait for it to finish, or pass --wait to queue behind it; "
    "a lock left by a killed run is released automatically"
)


class RunLock:
    """Hold ``path`` exclusively for the duration of a ``with`` block.

    Without ``wait`` an overlap raises LockedError at once. With ``wait`` it polls until the
    lock is free, for at most ``timeout`` seconds (None: for ever), then raises LockedError.
    ``command`` names this run in the lock file (e.g. "push-event", "replay").
    """

    def __init__(
        self,
        path: Path,
        *,
        wait: bool = False,
        timeout: float | None = None,
        command: str = "optisync",
        poll_interval: float = POLL_SECONDS,
    ) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must not be negative")
        self.path = Path(path)
        self.wait = wait
        self.timeout = timeout
        self.command = command
        self.poll_interval = poll_interval
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        fd = self._open()
        try:
            self._lock(fd)
            self._write_holder(fd)
        except BaseException:
            os.close(fd)  # closing also releases the lock if it was taken
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # -- internals ------------------------------------------------------------------------

    def _storage_error(self, exc: OSError) -> StorageError:
        return StorageError(
            f"cannot open the lock file {self.path}: {exc.strerror or exc}",
            hint="check that its folder exists and is writable by this user",
        )

    def _open(self) -> int:
        try:
            ensure_private_dir(self.path.parent)
            fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            if is_symlink_error(exc):
                # a planted link would have the lock truncate whatever it points to
                raise StorageError(
                    f"the lock file {self.path} is a symbolic link; refusing to follow it",
                    hint="remove the link (and check who planted it); optisync recreates the file",
                ) from exc
            raise self._storage_error(exc) from exc
        with contextlib.suppress(OSError):  # not ours to chmod (another user's file): fine
            os.fchmod(fd, FILE_MODE)
        return fd

    def _try_lock(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise self._storage_error(exc) from exc
        return True

    def _lock(self, fd: int) -> None:
        if self._try_lock(fd):
            return
        if not self.wait:
            raise LockedError(f"{self._holder_text(fd)} holds the lock {self.path}", hint=_HINT)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                raise LockedError(
                    f"gave up after {self.timeout:g}s waiting: "
                    f"{self._holder_text(fd)} still holds the lock {self.path}",
                    hint="try again later, or raise the wait timeout",
                )
            delay = self.poll_interval
            if deadline is not None:
                delay = max(0.0, min(delay, deadline - time.monotonic()))
            time.sleep(delay)
            if self._try_lock(fd):
                return

    def _write_holder(self, fd: int) -> None:
        info = {
            "pid": os.getpid(),
            "command": self.command,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
        }
        data = (json.dumps(info) + "\n").encode("utf-8")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except OSError as exc:
            raise self._storage_error(exc) from exc

    def _holder_text(self, fd: int) -> str:
        """Describe the holder from the lock file, as far as it can be read."""
        info: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            raw = os.pread(fd, 4096, 0)
            loaded = json.loads(raw.decode("utf-8")) if raw.strip() else {}
            if isinstance(loaded, dict):
                info = loaded
        parts = [f"pid {info['pid']}" if "pid" in info else "pid unknown"]
        if info.get("command"):
            parts.append(str(info["command"]))
        if info.get("started_at"):
            parts.append(f"since {info['started_at']}")
        host = info.get("host")
        if host and host != socket.gethostname():
            parts.append(f"on {host}")
        return f"another optisync run ({', '.join(parts)})"
