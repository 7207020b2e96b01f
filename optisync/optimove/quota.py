"""One quota per API key across processes: Optimove counts requests per key, and cron may
run a push, a replay and an export at once. Every optisync process on the machine using the
same key keeps the slots of :class:`~optisync.optimove.ratelimit.RateLimiter` in one small
file, read and rewritten under an exclusive flock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from optisync.errors import StorageError
from optisync.optimove.ratelimit import RateLimiter, Slot


class FileSlots:
    """Slots kept as JSON in ``path``. While every slot is in flight, a waiter looks again
    every ``poll`` seconds: the answer that frees one may come at any moment."""

    def __init__(self, path: Path, *, poll: float = 0.05) -> None:
        self.path = path
        self.poll = poll
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StorageError(f"cannot use the shared quota file {path}: {exc}") from None

    @contextmanager
    def session(self) -> Iterator[list[Slot]]:
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = b""
            while chunk := os.read(fd, 65536):
                raw += chunk
            try:
                slots = json.loads(raw) if raw else []
            except ValueError:
                slots = []  # a torn write by a killed process: start the window afresh
            yield slots
            data = json.dumps(slots).encode()
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, data)
        finally:
            os.close(fd)  # closing releases the flock

    def mark(self) -> int:
        return 0  # a release in another process cannot be observed but by looking again

    def released(self) -> None:
        pass

    def wait_for_release(self, mark: int, at_most: float, sleep: Callable[[float], None]) -> None:
        sleep(min(at_most, self.poll))


class SharedQuota(RateLimiter):
    """A :class:`RateLimiter` whose slots live in ``path``, shared by every process using it.

    Args:
        hold: the longest a request can take; the slot of a process killed mid-request
            frees itself after ``hold + per_seconds``.
        clock: wall-clock seconds, the one clock every process agrees on.
    """

    POLL = 0.05  # seconds between looks at the file while every slot is in flight

    def __init__(
        self,
        path: Path,
        requests: int,
        per_seconds: float,
        *,
        hold: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        margin: float = 0.005,
    ) -> None:
        self.path = path
        super().__init__(
            requests,
            per_seconds,
            clock=clock,
            sleep=sleep,
            margin=margin,
            store=FileSlots(path, poll=self.POLL),
            hold=hold,
        )


def quota_path(state_dir: Path, api_key: str, group: str) -> Path:
    """The quota file of one API key's request group; the key itself is not written."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()[:16]
    return state_dir / "quota" / f"{digest}-{group}.json"
