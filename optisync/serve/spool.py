"""The spool: every accepted request body, durable before it is acknowledged.

Each accepted POST becomes one file of NDJSON lines, written under a temporary name,
fsynced, renamed and the folder fsynced (``durable.write_new`` and ``publish``), so a
202 is only ever sent for messages that survive a crash. Files are named by a sequence
number and the time of receipt; delivery reads them in that order. A file is removed once
every message in it is settled (delivered or dead-lettered); a restart feeds the
remaining files again and the journal beside them skips the parts already settled.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from optisync.durable import TMP_PREFIX, ensure_private_dir, publish, write_new
from optisync.errors import StorageError
from optisync.realtime.inputs import Record, read_ndjson

SUFFIX = ".ndjson"
JOURNAL = "serve.journal"
LOCK = "serve.lock"


class _Put:
    """One caller's lines in a group commit, and how its write ended."""

    __slots__ = ("data", "done", "error", "lines", "name")

    def __init__(self, data: bytes, lines: int) -> None:
        self.data = data
        self.lines = lines
        self.done = False
        self.name: str | None = None
        self.error: StorageError | None = None

    def result(self) -> str:
        if self.error is not None or self.name is None:
            raise self.error or StorageError("the spool write did not finish")
        return self.name


class SpoolFullError(Exception):
    """The spool holds more than its limit: callers should retry later."""


def received_at(name: str) -> float | None:
    """The Unix time a spool file was received, from its name."""
    try:
        return int(name.removesuffix(SUFFIX).split("-")[1]) / 1e9
    except (IndexError, ValueError):
        return None


class Spool:
    """Spool files in one folder; ``put`` is safe from any thread, the feed runs in one."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.dir = folder
        self.max_bytes = max_bytes
        try:
            ensure_private_dir(folder)
            for leftover in folder.glob(f"{TMP_PREFIX}*"):  # a write cut short: never acked
                leftover.unlink()
            names = sorted(p.name for p in folder.glob(f"*{SUFFIX}"))
            self._files = {name: (folder / name).stat().st_size for name in names}
            left = {name: (folder / name).read_bytes().count(b"\n") for name in names}
        except OSError as exc:
            raise StorageError(
                f"cannot use the spool folder {folder}: {exc.strerror or exc}",
                hint="check serve.spool_dir exists and is writable",
            ) from None
        self._seq = max((int(n.split("-")[0]) for n in names), default=0)
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        # messages of each file not yet settled (all of them, until the file is fed)
        self._left: dict[str, int] = left
        self._closing = False
        self._commit = threading.Condition()  # the group commit: posts waiting to be written
        self._pending: list[_Put] = []
        self._writing = False

    # -- intake ----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return sum(self._files.values())

    def full(self) -> bool:
        return self.size > self.max_bytes

    def writable(self) -> bool:
        return os.access(self.dir, os.W_OK | os.X_OK)

    @property
    def messages(self) -> int:
        """Messages spooled and not yet settled."""
        with self._cond:
            return sum(self._left.values())

    def empty(self) -> bool:
        with self._cond:
            return not self._files

    def put(self, lines: list[bytes]) -> str:
        """Store ``lines`` (one JSON message each) durably; returns the file's name.

        Raises SpoolFullError over the limit, StorageError when the write fails.

        Posts that arrive while a file is being written wait, and the next file holds them
        all (a group commit): a caller posting one message at a time in many connections
        costs one fsync per group, not one per message, and each caller still returns only
        once its own lines are on disk.
        """
        data = b"".join(line.rstrip(b"\r\n") + b"\n" for line in lines)
        if self.full():
            raise SpoolFullError
        entry = _Put(data, len(lines))
        with self._commit:
            self._pending.append(entry)
            while not entry.done and self._writing:
                self._commit.wait()
            if entry.done:
                return entry.result()
            self._writing = True  # this caller writes the group, its own lines among them
            group, self._pending = self._pending, []
        name: str | None = None
        error: StorageError | None = None
        try:
            name = self._write([e.data for e in group], sum(e.lines for e in group))
        except StorageError as exc:
            error = exc
        finally:
            if name is None and error is None:  # anything else went wrong: none is stored
                error = StorageError(f"cannot write to the spool {self.dir}: interrupted")
            with self._commit:
                for e in group:
                    e.name, e.error, e.done = name, error, True
                self._writing = False
                self._commit.notify_all()
        return entry.result()

    def _write(self, chunks: list[bytes], lines: int) -> str:
        # Written and fsynced under a temporary name outside the lock, so delivery goes on
        # meanwhile; the name (the delivery order) is taken at the rename.
        tmp = self.dir / f"{TMP_PREFIX}{secrets.token_hex(8)}"
        data = b"".join(chunks)
        try:
            write_new(tmp, data)
            with self._cond:
                self._seq += 1
                name = f"{self._seq:012d}-{time.time_ns()}{SUFFIX}"
                publish(tmp, self.dir / name)
                self._files[name] = len(data)
                self._queue.append(name)
                self._left[name] = lines
                self._cond.notify_all()
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StorageError(f"cannot write to the spool {self.dir}: {exc}") from None
        return name

    # -- delivery --------------------------------------------------------------------------

    def records(self, halt: Callable[[], bool]) -> Iterator[Record]:
        """Every spooled message in order, from the oldest file still here; blocks for new
        ones. Ends when ``halt()`` is true, or after ``close()`` once all are fed."""
        with self._cond:
            self._queue = deque(sorted(self._files))
        while True:
            with self._cond:
                while not self._queue and not self._closing and not halt():
                    self._cond.wait(0.2)
                if halt() or not self._queue:
                    return
                name = self._queue.popleft()
            try:
                data = (self.dir / name).read_bytes()
            except OSError as exc:
                raise StorageError(f"cannot read the spool file {self.dir / name}: {exc}") from None
            records = list(read_ndjson(io.BytesIO(data), name))
            with self._cond:
                self._left[name] = len(records)  # a new run settles each of them again
            if not records:
                self._remove(name)
            for record in records:
                if halt():
                    return
                yield record

    def settled(self, record: Record) -> None:
        """One message of a spool file needs nothing more; the last one removes the file."""
        name = record.source
        with self._cond:
            left = self._left.get(name or "")
            if left is None:
                return
            self._left[name or ""] = left - 1
            if left > 1:
                return
        self._remove(name or "")

    def _remove(self, name: str) -> None:
        # No folder fsync: a removal lost to a crash only feeds the file again, and the
        # journal then skips every part of it.
        with contextlib.suppress(FileNotFoundError):
            (self.dir / name).unlink()
        with self._cond:
            self._files.pop(name, None)
            self._left.pop(name, None)
            self._cond.notify_all()

    def close(self) -> None:
        """No more intake: the feed ends once every spooled file is fed."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
