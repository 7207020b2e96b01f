"""Reading events: newline-delimited JSON streamed line by line, so input size never raises
memory, and every bad line becomes a reason with its line number instead of a crash."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from pydantic import ValidationError

from optisync.cards import find_card_numbers, may_hold_card
from optisync.events import Envelope, parse_envelope

MAX_LINE_BYTES = 1 << 20  # a longer line is refused (and skipped) without being held
_KEEP_RAW = 4096


@dataclass
class Record:
    """One input record: its envelope, or why it is invalid."""

    line: int | None
    source: str | None
    envelope: Envelope | None = None
    value: Any = None  # the decoded JSON, kept for an invalid record's dead letter
    error: str | None = None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def decode(text: str | bytes) -> Any:
    """Strict JSON: no NaN or Infinity (json.loads would accept them)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return _DECODER.decode(text)


def check(value: Any, line: int | None, source: str | None, raw: str | None = None) -> Record:
    """Validate a decoded value as an envelope; card numbers make it invalid (M12).

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


def read_ndjson(stream: IO[bytes], source: str | None) -> Iterator[Record]:
    """Yield one Record per non-blank line; blank lines are skipped, nothing is dropped."""
    line_no = 0
    while True:
        chunk = stream.readline(MAX_LINE_BYTES + 1)
        if not chunk:
            return
        line_no += 1
        if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            while True:  # discard the rest of the over-long line
                more = stream.readline(MAX_LINE_BYTES)
                if not more or more.endswith(b"\n"):
                    break
            yield Record(line_no, source, error=f"line longer than {MAX_LINE_BYTES} bytes")
            continue
        if line_no == 1 and chunk.startswith(b"\xef\xbb\xbf"):
            chunk = chunk[3:]
        if not chunk.strip():
            continue
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Record(line_no, source, error=f"not UTF-8 (byte {exc.start})")
            continue
        try:
            value = decode(text)
        except RecursionError:
            yield Record(line_no, source, value=text[:_KEEP_RAW], error="nested too deeply")
            continue
        except ValueError as exc:  # JSONDecodeError, NaN, over-long integers
            yield Record(line_no, source, value=text[:_KEEP_RAW], error=f"bad JSON: {exc}")
            continue
        yield check(value, line_no, source, text)
