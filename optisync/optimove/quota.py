"""One quota per API key across processes: Optimove counts requests per key, and cron may
run a push, a replay and an export at once. Each optisync process on the machine using the
same key draws its send slots from one small file, taken under an exclusive flock.

Same rule as :class:`~optisync.optimove.ratelimit.RateLimiter`: a slot is taken from send
until ``per_seconds`` after the response. While a request is in flight its slot is stamped
``hold`` seconds ahead (the longest a request can take), so the slots of a killed process
free themselves after at most ``hold + per_seconds``.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optisync.errors import StorageError
from optisync.optimove.ratelimit import Permit


class SharedQuota:
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
        self.requests = requests
        self.per_seconds = per_seconds
        self.hold = hold
        self._clock = clock
        self._sleep = sleep
        self.margin = margin
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StorageError(f"cannot use the shared quota file {path}: {exc}") from None

    @contextmanager
    def _locked(self) -> Iterator[list[list[Any]]]:
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

    def acquire(self) -> Permit:
        slot = os.urandom(8).hex()
        while True:
            with self._locked() as slots:
                now = self._clock()
                # a slot counts until its stamp + the window (stamps ahead: in flight)
                live = [s for s in slots if float(s[1]) + self.per_seconds + self.margin > now]
                if len(live) < self.requests:
                    live.append([slot, now + self.hold])
                    slots[:] = live
                    return Permit(lambda: self._release(slot))
                slots[:] = live
                soonest = min(float(s[1]) for s in live)
                wait = soonest + self.per_seconds + self.margin - now
                if soonest > now:  # all in flight: one frees a window after its answer,
                    wait = min(wait, self.POLL)  # which may come at any moment
            self._sleep(max(wait, 0.001))

    def _release(self, slot: str) -> None:
        with self._locked() as slots:
            now = self._clock()
            for entry in slots:
                if entry[0] == slot:
                    entry[1] = now


def quota_path(state_dir: Path, api_key: str, group: str) -> Path:
    import hashlib

    digest = hashlib.sha256(api_key.encode()).hexdigest()[:16]
    return state_dir / "quota" / f"{digest}-{group}.json"
