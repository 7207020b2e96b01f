"""One quota per API key across processes: Optimove counts requests per key, and cron may
run a push, a replay and an export at once. Every optisync process on the machine using the
same key keeps the slots of :class:`~optisync.optimove.ratelimit.RateLimiter` in one small
file, read and rewritten under an exclusive flock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from optisync.durable import ensure_private_dir, open_private, write_new
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


SALT_NAME = ".salt"
_SALT_BYTES = 32


def quota_path(state_dir: Path, api_key: str, group: str) -> Path:
    """The quota file of one API key's request group.

    Named by an HMAC of the key under a random salt kept in the same folder (0600): every
    process on this machine finds the same file for the same key, while a name copied
    elsewhere (a listing, a backup) cannot confirm a guessed key without the salt, as an
    unsalted hash of it could.
    """
    folder = state_dir / "quota"
    digest = hmac.new(local_salt(folder), api_key.encode(), "sha256").hexdigest()[:32]
    return folder / f"{digest}-{group}.json"


def local_salt(folder: Path) -> bytes:
    """The salt of ``folder``, drawn on first use; concurrent first uses agree on one."""
    path = folder / SALT_NAME
    try:
        ensure_private_dir(folder)
        salt = _read_salt(path)
        if salt is None:
            tmp = folder / f".tmp-salt-{secrets.token_hex(8)}"
            write_new(tmp, secrets.token_hex(_SALT_BYTES).encode())
            try:
                os.link(tmp, path)  # atomic, whole: the first process to link wins
            except FileExistsError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            salt = _read_salt(path)
    except OSError as exc:
        raise StorageError(f"cannot use the shared quota salt {path}: {exc}") from None
    if salt is None:
        raise StorageError(
            f"the shared quota salt {path} is not usable",
            hint="remove it; the next run draws a new one",
        )
    return salt


def _read_salt(path: Path) -> bytes | None:
    try:
        fd = open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        raw = os.read(fd, 4 * _SALT_BYTES).strip()
    finally:
        os.close(fd)
    return raw if len(raw) == 2 * _SALT_BYTES else None
