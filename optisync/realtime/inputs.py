"""Reading events: from flags, one JSON file, or newline-delimited JSON streamed line by
line, so input size never raises memory, and every bad line becomes a reason with its line
number instead of a crash (docs/envelope.md)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from optisync.cards import find_card_numbers, may_hold_card
from optisync.errors import UsageError
from optisync.events import Envelope, parse_envelope, parse_envelope_json

MAX_LINE_BYTES = 1 << 20  # a longer line is refused (and skipped) without being held
_KEEP_RAW = 4096
#: Deeper JSON is invalid input: no envelope needs more than a few levels, and a deep
#: document (cheap to write: 300 levels are 700 bytes) would hit the recursion limit in
#: every walk that follows (validation, the card check, the dead letter).
MAX_DEPTH = 64
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


@dataclass
class Record:
    """One input record: its envelope, or why it is invalid."""

    line: int | None
    source: str | None
    envelope: Envelope | None = None
    value: Any = None  # the decoded JSON, kept for an invalid record's dead letter
    error: str | None = None
    # a line over the limit, copied whole to an unnamed temporary file for its letter
    raw: IO[bytes] | None = None


class TooDeepError(ValueError):
    """The document nests arrays and objects deeper than :data:`MAX_DEPTH`."""


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        # 1e999 reads as infinity, which no JSON body can carry: one such value would
        # otherwise fail the whole request it is packed into
        raise ValueError(f"number out of range: {text[:40]}")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def too_deep(text: str) -> bool:
    """Whether ``text`` (JSON) nests deeper than :data:`MAX_DEPTH`; brackets inside strings
    do not count."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False  # the common case, without a scan
    depth = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        else:
            depth -= 1
    return False


def decode(text: str | bytes) -> Any:
    """Strict JSON: no NaN, Infinity or out-of-range numbers (json.loads would read them as
    floats), no nesting deeper than :data:`MAX_DEPTH`.

    Raises:
        TooDeepError: nested too deeply (a ValueError).
        ValueError: anything else that is not strict JSON.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if too_deep(text):
        raise TooDeepError("nested too deeply")
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise TooDeepError("nested too deeply") from None


def check(value: Any, line: int | None, source: str | None, raw: str | None = None) -> Record:
    """Validate a decoded value as an envelope; a card number makes it invalid, since such
    messages must never leave (docs/envelope.md).

    ``raw``, the JSON text the value came from, lets most records skip the card walk.
    """
    record = Record(line, source, value=value)
    cards = find_card_numbers(value) if raw is None or may_hold_card(raw) else []
    if cards:
        record.error = (
            f"{', '.join(cards)}: holds a card-number-like value; such messages are never sent"
        )
        return record
    try:
        record.envelope = parse_envelope(value)
    except ValidationError as exc:
        record.error = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(envelope)'}: {err['msg']}"
            for err in exc.errors(include_url=False)[:5]
        )
    except RecursionError:
        record.error = "nested too deeply"
    return record


def _fast(chunk: bytes) -> Envelope | None:
    """The envelope of a line validated straight from its bytes, or None when the line needs
    the full path: it may hold a card number, it names NaN or Infinity (which only the strict
    decoder refuses), or it is invalid (the full path words the reason). A line that passes
    here passes there too, with the same envelope: an out-of-range number needs an exponent
    or 309+ digits, both of which the card screen sends to the full path, and a line nested
    deeper than MAX_DEPTH holds more brackets than that."""
    if may_hold_card(chunk) or b"NaN" in chunk or b"Infinity" in chunk:
        return None
    if chunk.count(b"[") + chunk.count(b"{") > MAX_DEPTH:
        return None
    try:
        return parse_envelope_json(chunk)
    except (ValidationError, RecursionError):
        return None


_SPILL_CHUNK = 1 << 16
_HEAD_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:]')
HEAD_FIELDS = ("id", "type", "member_id")


def oversized(stream: IO[bytes], head: bytes, line: int, source: str | None) -> Record:
    """A line over :data:`MAX_LINE_BYTES` (``head`` is its start): copied whole, chunk by
    chunk, to an unnamed private temporary file the dead letter takes it from, so memory
    holds at most ``head`` and one chunk, never the line."""
    spill = tempfile.TemporaryFile()  # noqa: SIM115 - the record owns it, its letter reads it
    size, more = 0, head
    while more:
        last = more.endswith(b"\n")
        if last:
            more = more[:-2] if more.endswith(b"\r\n") else more[:-1]
        spill.write(more)
        size += len(more)
        if last:
            break
        more = stream.readline(_SPILL_CHUNK)
    spill.seek(0)
    return Record(
        line,
        source,
        value=head_fields(head[:_KEEP_RAW]) or None,
        error=f"line longer than {MAX_LINE_BYTES} bytes ({size} bytes)",
        raw=spill,
    )


def head_fields(head: bytes) -> dict[str, str]:
    """The envelope's ``id``, ``type`` and ``member_id`` where the first bytes of a line
    show them as top-level strings (a nested ``id`` is not the message's)."""
    text = head.decode("utf-8", "replace")
    found: dict[str, str] = {}
    depth, key = 0, None
    value_at: int | None = None  # where the value of ``key`` starts, once its colon is seen
    for match in _HEAD_TOKEN.finditer(text):
        item = match.group()
        is_value = value_at is not None and not text[value_at : match.start()].strip()
        if item == ":":
            value_at = match.end() if key is not None else None
            continue
        if depth == 1 and item[0] == '"':
            if is_value and key is not None:
                if key in HEAD_FIELDS and key not in found:
                    with contextlib.suppress(ValueError):
                        found[key] = json.loads(item)
                key = value_at = None
            else:
                key, value_at = None, None
                with contextlib.suppress(ValueError):
                    key = json.loads(item)
            continue
        key = value_at = None
        depth += 1 if item in "{[" else -1 if item in "}]" else 0
    return found


def read_ndjson(stream: IO[bytes], source: str | None) -> Iterator[Record]:
    """Yield one Record per non-blank line; blank lines are skipped, nothing is dropped."""
    line_no = 0
    while True:
        chunk = stream.readline(MAX_LINE_BYTES + 1)
        if not chunk:
            return
        line_no += 1
        if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            yield oversized(stream, chunk, line_no, source)
            continue
        if line_no == 1 and chunk.startswith(b"\xef\xbb\xbf"):
            chunk = chunk[3:]
        if not chunk.strip():
            continue
        envelope = _fast(chunk)
        if envelope is not None:
            yield Record(line_no, source, envelope=envelope)
            continue
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Record(line_no, source, error=f"not UTF-8 (byte {exc.start})")
            continue
        try:
            value = decode(text)
        except TooDeepError as exc:
            yield Record(line_no, source, value=text[:_KEEP_RAW], error=str(exc))
            continue
        except ValueError as exc:  # JSONDecodeError, NaN, over-long integers
            yield Record(line_no, source, value=text[:_KEEP_RAW], error=f"bad JSON: {exc}")
            continue
        yield check(value, line_no, source, text)


def stdin_stream() -> IO[bytes]:
    """Standard input through a buffer of its own: the run reads its input on a thread that
    may still be blocked on a pipe kept open when the run ends, and a thread holding
    ``sys.stdin``'s lock then makes the interpreter abort at exit."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a test runner: no descriptor
        return sys.stdin.buffer
    return io.BufferedReader(io.FileIO(fd, "rb", closefd=False))


Progress = Callable[[int, int | None], None]  # (bytes done, bytes total or None)


@dataclass
class EventSource:
    """Where push-event reads: flags, one JSON file, or newline-delimited JSON."""

    type: str | None = None
    member: str | None = None
    data: str | None = None
    email: str | None = None
    locale: str | None = None
    event_id: str | None = None
    occurred_at: str | None = None
    file: Path | None = None
    input: str | None = None  # a path, or "-" for stdin

    @property
    def bulk(self) -> bool:
        return self.input is not None

    def check_usage(self) -> None:
        chosen = [
            n
            for n, v in (("--type", self.type), ("--file", self.file), ("--input", self.input))
            if v is not None
        ]
        if len(chosen) != 1:
            raise UsageError(
                "give exactly one of --type (with --member), --file or --input",
                hint="e.g. optisync push-event --input events.ndjson",
            )
        if self.type is not None and not self.member:
            raise UsageError("--type needs --member")

    def records(self, stack: ExitStack, progress: Progress | None = None) -> Iterator[Record]:
        """The records to push; a file opened on the way is closed with ``stack``."""
        if self.type is not None:
            yield self._from_flags()
        elif self.file is not None:
            yield self._from_file(self.file)
        else:
            yield from self._from_ndjson(stack, progress)

    def _from_flags(self) -> Record:
        try:
            data = decode(self.data) if self.data else {}
        except ValueError as exc:
            raise UsageError(f"--data is not valid JSON: {exc}") from None
        value: dict[str, Any] = {
            "type": self.type,
            "member_id": self.member,
            "occurred_at": self.occurred_at or datetime.now(UTC).isoformat(),
            "data": data,
        }
        for key, item in (("id", self.event_id), ("email", self.email), ("locale", self.locale)):
            if item is not None:
                value[key] = item
        return check(value, None, "flags")

    def _from_file(self, file: Path) -> Record:
        try:
            text = file.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc.strerror or exc}") from None
        try:
            value = decode(text.removeprefix(b"\xef\xbb\xbf"))
        except TooDeepError as exc:
            return Record(1, str(file), error=str(exc))
        except ValueError as exc:
            return Record(1, str(file), error=f"bad JSON: {exc}")
        return check(value, None, str(file))

    def _from_ndjson(self, stack: ExitStack, progress: Progress | None) -> Iterator[Record]:
        assert self.input is not None
        stream: IO[bytes]
        total: int | None = None
        if self.input == "-":
            stream, name = stdin_stream(), "<stdin>"
        else:
            path = Path(self.input)
            try:
                stream = stack.enter_context(path.open("rb"))
                total = path.stat().st_size
            except OSError as exc:
                raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
            name = str(path)
        for n, record in enumerate(read_ndjson(stream, name), 1):
            yield record
            if progress is not None and total and n % 500 == 0:
                progress(stream.tell(), total)
