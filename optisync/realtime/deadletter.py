"""The dead-letter store: one JSON file per undelivered message (docs/dead-letters.md).

Layout under the configured ``dead_letter.dir`` (Maildir style)::

    tmp/      letters being written; never read back; stale files removed by cleanup_tmp()
    new/      complete letters, each renamed in from tmp/ after flush + fsync
    archive/  letters that were replayed and accepted, when archiving is asked for

A letter may have a sidecar beside it in ``new/``, ``<letter name without .json>.raw``:
the whole raw input line of a record too long to be read (see ``RawPayload``).

File names sort by the time the letter was first written::

    <YYYYmmddTHHMMSS.ffffffZ>-<pid:07>-<counter:06>-<kind>-<sha256(message_id)[:12]>.json

Folders are 0700 and files 0600 (owner only): a letter holds member data. Every letter
is masked for card numbers on write (envelope, request, endpoint and error text),
whatever the caller passed. Secrets never reach this module: the request body is stored,
never its headers.
"""

import codecs
import contextlib
import errno
import hashlib
import itertools
import logging
import os
import re
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import IO

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
)

from optisync import __version__
from optisync.cards import mask_card_numbers, mask_text, may_hold_card
from optisync.config.models import Target
from optisync.durable import TMP_PREFIX, atomic_write, fsync_dir, open_private, publish
from optisync.errors import StorageError
from optisync.redact import redact

__all__ = [
    "DeadLetter",
    "DeadLetterStore",
    "ErrorClass",
    "Kind",
    "LetterError",
    "LetterSource",
    "Problem",
    "RawPayload",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DIR_MODE = 0o700
FILE_MODE = 0o600
STALE_TMP_SECONDS = 300.0


class Kind(StrEnum):
    """A letter's kind: the routing ``Target`` its part was for, or ``input`` for a record
    that was invalid as input (or matched no rule). Spelled member by member so type
    checkers see them; ``test_deadletter`` checks no target is missing."""

    EVENTS = Target.EVENTS.value
    ATTRIBUTES = Target.ATTRIBUTES.value
    OPT_IN = Target.OPT_IN.value
    EMAIL = Target.EMAIL.value
    PROMOTIONS = Target.PROMOTIONS.value
    INPUT = "input"


class ErrorClass(StrEnum):
    INVALID = "invalid"
    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"
    FATAL = "fatal"
    AUTH = "auth"
    # accepted by the API, then refused in Optimove's verdict sent to the callback URL
    REJECTED = "rejected"


class LetterError(BaseModel):
    """Why delivery failed. Serialized with the key ``class`` for ``error_class``."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", defer_build=True)

    error_class: ErrorClass = Field(alias="class")
    status: int | None = None
    message: str = ""


class LetterSource(BaseModel):
    """Where the input came from (file and 1-based line), when known."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    file: str | None = None
    line: int | None = Field(default=None, ge=1)


class RawPayload(BaseModel):
    """The sidecar holding a record's whole raw line (card numbers masked), beside the
    letter in ``new/``: a line too long to read is kept, not held in memory."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    file: str  # the sidecar's name, in the letter's folder
    bytes: int = Field(ge=0)
    sha256: str  # of the sidecar as stored


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DeadLetter(BaseModel):
    """One undelivered message, as stored in a letter file."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", defer_build=True)

    format_version: int = FORMAT_VERSION
    id: str = Field(default_factory=lambda: os.urandom(16).hex())
    message_id: str
    kind: Kind
    type: str | None = None
    envelope: JsonValue = None
    request: JsonValue = None
    endpoint: str | None = None
    error: LetterError
    source: LetterSource = Field(default_factory=LetterSource)
    attempts: int = Field(default=1, ge=0)
    first_failed_at: AwareDatetime = Field(default_factory=_utcnow)
    last_failed_at: AwareDatetime = Field(default_factory=_utcnow)
    run_id: str
    tool_version: str = __version__
    config_hash: str | None = None
    raw: RawPayload | None = None

    @field_validator("first_failed_at", "last_failed_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    def to_json(self) -> bytes:
        # only a letter with a sidecar names it: every other letter stays as it always was
        skip = {"raw"} if self.raw is None else None
        return (self.model_dump_json(by_alias=True, indent=2, exclude=skip) + "\n").encode()

    def masked(self) -> "DeadLetter":
        """A copy with card numbers masked in every field that input or Optimove can fill
        (an invalid record's ``id`` or ``type`` is kept as it came)."""
        return self.model_copy(
            update={
                "message_id": mask_text(self.message_id),
                "type": None if self.type is None else mask_text(self.type),
                "envelope": mask_card_numbers(self.envelope),
                "request": mask_card_numbers(self.request),
                "endpoint": None if self.endpoint is None else mask_text(self.endpoint),
                "error": self.error.model_copy(
                    update={"message": redact(mask_text(self.error.message))}
                ),
            }
        )


@dataclass(frozen=True)
class Problem:
    """A file in ``new/`` that could not be read as a letter."""

    path: Path
    reason: str


_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
}

_counter = itertools.count()
_counter_lock = threading.Lock()


def _next_counter() -> int:
    with _counter_lock:
        return next(_counter) % 1_000_000


class DeadLetterStore:
    """A dead-letter folder. Safe against crashes; see the module docstring for layout.

    Writers in several processes may share a folder (names are unique per process);
    ``remove``, ``record_failure``, ``purge_older_than`` and ``cleanup_tmp(None)`` are
    meant to run under the run lock (``optisync.lock.RunLock``), as ``replay`` does.
    """

    def __init__(self, dir: Path, *, create: bool = True) -> None:
        self.dir = Path(dir)
        self.tmp_dir = self.dir / "tmp"
        self.new_dir = self.dir / "new"
        self.archive_dir = self.dir / "archive"
        if create:
            for sub in (self.tmp_dir, self.new_dir):
                self._ensure_dir(sub)

    # -- errors ---------------------------------------------------------------------------

    def _storage_error(self, action: str, exc: OSError) -> StorageError:
        reason = _REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
        return StorageError(
            f"cannot {action} in the dead-letter folder {self.dir}: {reason}",
            hint=(
                "free disk space or fix the folder's owner and permissions "
                "(config key dead_letter.dir), then run again; messages not stored "
                "were not acknowledged"
            ),
        )

    def _ensure_dir(self, path: Path) -> None:
        try:
            if not path.is_dir():
                created_root = not self.dir.exists()
                path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                if created_root:
                    self.dir.chmod(DIR_MODE)
            if path.stat().st_mode & 0o777 != DIR_MODE:
                path.chmod(DIR_MODE)
        except OSError as exc:
            raise self._storage_error(f"create {path.name}/", exc) from exc

    # -- writing --------------------------------------------------------------------------

    def _new_name(self, letter: DeadLetter) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        digest = hashlib.sha256(letter.message_id.encode("utf-8")).hexdigest()[:12]
        return f"{stamp}-{os.getpid():07d}-{_next_counter():06d}-{letter.kind.value}-{digest}.json"

    def write(self, letter: DeadLetter, raw: IO[bytes] | None = None) -> Path:
        """Store ``letter`` (masked) crash-safely; return its path in ``new/``.

        ``raw``, a record's whole line, is copied chunk by chunk (masked) to the letter's
        sidecar first, so a letter in ``new/`` never names a sidecar that is missing.
        Raises StorageError when the folder is unwritable or full; nothing is left behind.
        """
        final = self.new_dir / self._new_name(letter)
        if raw is not None:
            sidecar = sidecar_of(final)
            tmp = self.tmp_dir / f"{TMP_PREFIX}{sidecar.name}.{os.urandom(8).hex()}"
            try:
                size, digest = _copy_masked(raw, tmp)
                publish(tmp, sidecar)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise self._storage_error("write a dead letter's raw line", exc) from exc
            letter = letter.model_copy(
                update={"raw": RawPayload(file=sidecar.name, bytes=size, sha256=digest)}
            )
            try:
                self._put(letter, final, "write a dead letter")
            except StorageError:
                with contextlib.suppress(OSError):
                    sidecar.unlink()
                raise
            return final
        self._put(letter, final, "write a dead letter")
        return final

    def _rewrite(self, path: Path, letter: DeadLetter) -> None:
        """Atomically replace the letter at ``path``."""
        self._put(letter, path, "update a dead letter")

    def _put(self, letter: DeadLetter, final: Path, action: str) -> None:
        """Write ``letter`` (masked) to ``final`` through ``tmp/``; on failure nothing is
        left behind and a StorageError names ``action``."""
        try:
            atomic_write(final, letter.masked().to_json(), tmp_dir=self.tmp_dir, mode=FILE_MODE)
        except OSError as exc:
            raise self._storage_error(action, exc) from exc

    def record_failure(
        self,
        path: Path,
        letter: DeadLetter,
        error: LetterError,
        *,
        at: datetime | None = None,
    ) -> DeadLetter:
        """A replay of ``letter`` failed again: count the attempt and store the new error.

        ``first_failed_at`` is kept; returns the updated letter, as now stored at ``path``.
        """
        self._check_in_new(path)
        when = (at or _utcnow()).astimezone(UTC)
        updated = letter.model_copy(
            update={"attempts": letter.attempts + 1, "last_failed_at": when, "error": error}
        )
        self._rewrite(path, updated)
        return updated.masked()

    # -- reading --------------------------------------------------------------------------

    def _names(self) -> list[str]:
        try:
            names = os.listdir(self.new_dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(
                f"cannot read the dead-letter folder {self.new_dir}: {exc.strerror or exc}"
            ) from exc
        return sorted(n for n in names if n.endswith(".json") and not n.startswith("."))

    def read(self, path: Path) -> DeadLetter:
        """Parse one letter file (raises OSError or pydantic.ValidationError)."""
        return DeadLetter.model_validate_json(path.read_bytes())

    def iter_letters(
        self,
        kind: Kind | str | None = None,
        type: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        *,
        problems: list[Problem] | None = None,
    ) -> Iterator[tuple[Path, DeadLetter]]:
        """Letters in ``new/`` in the order they were written, filtered.

        ``kind`` and ``type`` must match exactly; ``since`` keeps letters first failed at or
        after it (aware datetime); ``limit`` caps how many are yielded. A file that cannot
        be parsed is logged as a warning, appended to ``problems`` if given, and skipped.
        """
        if since is not None and since.tzinfo is None:
            raise ValueError("since must be a timezone-aware datetime")
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        want_kind = Kind(kind) if kind is not None else None
        yielded = 0
        for name in self._names():
            if limit is not None and yielded >= limit:
                return
            path = self.new_dir / name
            try:
                letter = self.read(path)
            except FileNotFoundError:
                continue  # removed meanwhile
            except (OSError, ValueError) as exc:
                reason = _describe(exc)
                log.warning("skipping unreadable dead letter %s: %s", path, reason)
                if problems is not None:
                    problems.append(Problem(path, reason))
                continue
            if want_kind is not None and letter.kind != want_kind:
                continue
            if type is not None and letter.type != type:
                continue
            if since is not None and letter.first_failed_at < since:
                continue
            yielded += 1
            yield path, letter

    def count(self) -> int:
        """How many letter files are in ``new/`` (unparsed, so corrupt ones count too)."""
        return len(self._names())

    # -- removing -------------------------------------------------------------------------

    def _check_in_new(self, path: Path) -> None:
        if Path(path).parent.resolve() != self.new_dir.resolve():
            raise ValueError(f"{path} is not a letter of {self.new_dir}")

    def remove(self, path: Path, *, archive: bool = False) -> bool:
        """Drop a letter Optimove has accepted: delete it, or move it to ``archive/``.

        Returns False when the file was already gone.
        """
        self._check_in_new(path)
        sidecar = sidecar_of(path)
        try:
            if archive:
                self._ensure_dir(self.archive_dir)
                with contextlib.suppress(FileNotFoundError):
                    sidecar.replace(self.archive_dir / sidecar.name)
                path.replace(self.archive_dir / path.name)
                fsync_dir(self.archive_dir)
            else:
                with contextlib.suppress(FileNotFoundError):
                    sidecar.unlink()
                path.unlink()
            fsync_dir(self.new_dir)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._storage_error("remove a dead letter", exc) from exc
        return True

    def purge_older_than(self, days: float, *, now: datetime | None = None) -> int:
        """Delete letters whose last failure is more than ``days`` ago (retention).

        Unparsable letters are judged by file mtime; ``archive/`` is purged by mtime.
        Returns how many files were deleted.
        """
        if days < 0:
            raise ValueError("days must not be negative")
        cutoff = (now or _utcnow()) - timedelta(days=days)
        removed = 0
        for name in self._names():
            path = self.new_dir / name
            try:
                try:
                    when = self.read(path).last_failed_at
                except ValueError:
                    when = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                if when < cutoff:
                    with contextlib.suppress(FileNotFoundError):
                        sidecar_of(path).unlink()
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._storage_error("purge old dead letters", exc) from exc
        removed += self._purge_by_mtime(self.archive_dir, cutoff.timestamp())
        if removed:
            try:
                fsync_dir(self.new_dir)
            except OSError as exc:
                raise self._storage_error("purge old dead letters", exc) from exc
        return removed

    def cleanup_tmp(self, older_than: float | None = STALE_TMP_SECONDS) -> int:
        """Remove files left in ``tmp/`` by a killed process; returns how many.

        Only files older than ``older_than`` seconds, since another process may be
        writing right now; pass None to remove all of them while holding the run lock.
        """
        cutoff = float("inf") if older_than is None else time.time() - older_than
        return self._purge_by_mtime(self.tmp_dir, cutoff) + self._orphan_sidecars(cutoff)

    def _orphan_sidecars(self, cutoff: float) -> int:
        """Sidecars in ``new/`` whose letter never arrived (a process killed between the
        two renames); young ones may still be getting their letter."""
        removed = 0
        try:
            names = [n for n in os.listdir(self.new_dir) if n.endswith(RAW_SUFFIX)]
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise self._storage_error("list new/", exc) from exc
        for name in names:
            sidecar = self.new_dir / name
            letter = sidecar.with_suffix(".json")
            try:
                if not letter.exists() and sidecar.lstat().st_mtime < cutoff:
                    sidecar.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._storage_error("clean new/", exc) from exc
        return removed

    def _purge_by_mtime(self, folder: Path, cutoff: float) -> int:
        removed = 0
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise self._storage_error(f"list {folder.name}/", exc) from exc
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    Path(entry.path).unlink()
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._storage_error(f"clean {folder.name}/", exc) from exc
        return removed


RAW_SUFFIX = ".raw"


def sidecar_of(letter: Path) -> Path:
    """Where the raw line of the letter at ``letter`` is kept, if it has one."""
    return letter.with_suffix(RAW_SUFFIX)


# -- masking a raw line on its way to the sidecar ------------------------------------------

_CHUNK = 1 << 16
# A piece may end after one of these: no digit run, \u escape or number can go through
# it, so masking piece by piece finds every card number that masking the whole would.
_BREAKS = frozenset(
    "\"#$%&'()*,/:;<=>?@[]^_`{|}~!abcdfghijklmnopqrstuvwxyzABCDFGHIJKLMNOPQRSTUVWXYZ"
)
# JSON escapes writing a character the card check reads as a digit or a separator
_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u([0-9a-fA-F]{4})")
_EXPONENT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?[eE][+-]?[0-9]+")


def _unescape(match: re.Match[str]) -> str:
    char = chr(int(match.group(2), 16))
    if char.isdecimal() or unicodedata.category(char) in {"Zs", "Pd", "Cf"}:
        return match.group(1) + char
    return match.group()


def _number(match: re.Match[str]) -> str:
    """A number in exponent form is masked as the integer it writes would be."""
    try:
        value = Decimal(match.group())
    except InvalidOperation:
        return match.group()
    if value.adjusted() > 19 or value != value.to_integral_value():
        return match.group()
    digits = str(abs(int(value)))
    masked = mask_text(digits)
    return match.group() if masked == digits else masked


def _mask_piece(text: str) -> str:
    if not may_hold_card(text):
        return text
    return mask_text(_EXPONENT.sub(_number, _ESCAPE.sub(_unescape, text)))


def _cut(text: str) -> int:
    """Where ``text`` may be cut for masking: after the last break that no escape can
    hold, within the last chunk; -1 if there is none."""
    for i in range(len(text) - 1, max(len(text) - _CHUNK, 0) - 1, -1):
        if text[i] in _BREAKS and "\\" not in text[max(i - 5, 0) : i]:
            return i + 1
    return -1


def _copy_masked(source: IO[bytes], path: Path) -> tuple[int, str]:
    """Copy ``source`` to a new private file at ``path`` with card numbers masked, one
    chunk at a time; return the bytes written and their sha256. Bytes that are not UTF-8
    are kept as they are. A stretch longer than a chunk with no break at all (a wall of
    digits) is cut anyway, with its digits masked, which errs on the safe side."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    digest, size, carry = hashlib.sha256(), 0, ""
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(fd, "wb") as out:

        def emit(text: str) -> None:
            nonlocal size
            data = text.encode("utf-8", "surrogateescape")
            out.write(data)
            digest.update(data)
            size += len(data)

        while chunk := source.read(_CHUNK):
            text = carry + decoder.decode(chunk)
            cut = _cut(text)
            if cut >= 0:
                emit(_mask_piece(text[:cut]))
                carry = text[cut:]
            elif len(text) > 2 * _CHUNK:
                emit(re.sub(r"[0-9]", "*", text))
                carry = ""
            else:
                carry = text
        emit(_mask_piece(carry + decoder.decode(b"", final=True)))
        out.flush()
        os.fsync(out.fileno())
    return size, digest.hexdigest()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "file"
        return f"not a valid dead letter ({loc}: {first['msg']})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"not a valid dead letter ({exc})"
