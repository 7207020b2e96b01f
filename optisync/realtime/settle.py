"""Settling: Optimove's answer for one request (or the exception instead) becomes counts,
journal entries and dead letters, and may stop the run.

``Settler.settle`` is the one rule push-event and replay share: what counts as delivered,
which error class a refusal is, when to stop (a rejected key stops at once, Optimove still
unavailable after the client's retries stops too). What "delivered" and "failed" then mean
differs: push journals its parts and writes new letters (``PushSettler``), replay removes
or updates the letters it resent (``replay.ReplaySettler``). See docs/realtime.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Generic, Protocol, TypeVar

from optisync import logs
from optisync.optimove.client import OptimoveAuthError
from optisync.optimove.outcome import Delivery, Endpoint
from optisync.realtime.batching import Pack
from optisync.realtime.deadletter import (
    DeadLetter,
    DeadLetterStore,
    ErrorClass,
    Kind,
    LetterError,
    LetterSource,
)
from optisync.realtime.inputs import Record
from optisync.realtime.journal import Journal
from optisync.realtime.plan import Part
from optisync.realtime.summary import PushSummary, RunSummary
from optisync.redact import redact

log = logging.getLogger(__name__)

_ERROR_CLASS = {
    "invalid": ErrorClass.INVALID,
    "fatal": ErrorClass.FATAL,
    "transient": ErrorClass.TRANSIENT,
    "rate_limited": ErrorClass.RATE_LIMITED,
    "auth": ErrorClass.AUTH,
}
WHOLE = "*"  # the journal slot of a record kept whole, as an input letter


class Sent(Protocol):
    """A request that went out: its endpoint and how many items it carried."""

    @property
    def endpoint(self) -> Endpoint: ...

    @property
    def items(self) -> list[Any]: ...


P = TypeVar("P", bound=Sent)


class Settler(Generic[P]):
    """The shared settling rule; subclasses say what delivering and failing do."""

    def __init__(self, summary: RunSummary) -> None:
        self.summary = summary

    def delivered(self, sent: P) -> None:
        raise NotImplementedError

    def failed(self, sent: P, error: LetterError, attempts: int) -> None:
        raise NotImplementedError

    def settle(self, sent: P, delivery: Delivery | None, exc: BaseException | None) -> None:
        summary = self.summary
        if exc is not None and not isinstance(exc, OptimoveAuthError):
            # a bug or a local fault: the messages are kept, then the error surfaces
            message = redact(f"{type(exc).__name__}: {exc}")
            self.failed(sent, LetterError(error_class=ErrorClass.TRANSIENT, message=message), 0)
            raise exc
        answer = exc.delivery if isinstance(exc, OptimoveAuthError) else delivery
        assert answer is not None
        if answer.ok:
            if answer.outcome == "duplicate":
                summary.duplicates += len(sent.items)
            if answer.warning:
                summary.warnings[f"{sent.endpoint.value}: {answer.warning}"] += 1
            self.delivered(sent)
            return
        if isinstance(exc, OptimoveAuthError):
            summary.stop("auth", exc.message)
            error = LetterError(
                error_class=ErrorClass.AUTH,
                status=answer.status,
                message=answer.error or exc.message,
            )
        else:
            if answer.outcome in {"transient", "rate_limited"}:
                summary.stop(
                    "unavailable",
                    f"Optimove unavailable after {answer.attempts} attempts"
                    f" on {sent.endpoint.value}: {answer.error or answer.status}",
                )
            error = LetterError(
                error_class=_ERROR_CLASS.get(answer.outcome, ErrorClass.FATAL),
                status=answer.status,
                message=answer.error or f"HTTP {answer.status}",
            )
        self.failed(sent, error, answer.attempts)


def not_sent_error(summary: RunSummary) -> LetterError:
    """The error a part carries when the run stopped before sending it."""
    if summary.stopped == "auth":
        return LetterError(error_class=ErrorClass.AUTH, message=f"not sent: {summary.stop_reason}")
    reason = summary.stop_reason or summary.stopped or "the run ended early"
    return LetterError(error_class=ErrorClass.TRANSIENT, message=f"not sent: {reason}")


@dataclass
class Message:
    """One input record on its way: it is sent once all its parts are, else a letter."""

    record: Record
    remaining: int
    failed: bool = False
    held: bool = False  # a part left for the next run (``PushSettler.part_held``)

    @property
    def message_id(self) -> str:
        assert self.record.envelope is not None
        return self.record.envelope.message_id


class PushSettler(Settler[Pack[Message]]):
    """push-event's books: every record ends accepted or as a dead letter (or held for the
    next run, ``part_held``), and the journal records each part only once it is accepted
    or a letter (docs/dead-letters.md)."""

    summary: PushSummary

    def __init__(
        self,
        summary: PushSummary,
        *,
        store: DeadLetterStore | None,
        journal: Journal | None,
        run_id: str,
        config_hash: str,
        on_settled: Callable[[Record, str], None] | None = None,
    ) -> None:
        super().__init__(summary)
        self.on_settled = on_settled
        self.store = store
        self.journal = journal
        self.run_id = run_id
        self.config_hash = config_hash

    # -- packs ---------------------------------------------------------------------------

    def delivered(self, sent: Pack[Message]) -> None:
        for message, part in sent.items:
            self.part_delivered(message, part)

    def failed(self, sent: Pack[Message], error: LetterError, attempts: int) -> None:
        for message, part in sent.items:
            self.part_failed(message, part, error, attempts, sent.letter_request(part))

    def unsent(self, pack: Pack[Message]) -> None:
        """The run stopped before this pack went out: keep each part as a letter, but hold
        a bulk mail formed again for the next run (``part_held``)."""
        if pack.uid is not None:
            for message, part in pack.items:
                self.part_held(message, part)
            return
        error = not_sent_error(self.summary)
        for message, part in pack.items:
            self.part_failed(message, part, error, request=pack.letter_request(part))

    # -- parts ---------------------------------------------------------------------------

    def part_delivered(self, message: Message, part: Part) -> None:
        self.summary.by_target[part.target] += 1
        self._part_done(message, part)

    def part_held(self, message: Message, part: Part) -> None:
        """Leave a part of a bulk mail an earlier run recorded unsettled: not journalled, no
        letter, its message not done. The next run (serve's restart, a rerun of the file)
        forms that call again whole. A letter could not: its call could go under the
        recorded id with only some of the recipients, and the rest never could."""
        if not message.held:
            message.held = True
            self.summary.held += 1
        log.warning(
            "held %s part of message %s for the next run: its bulk mail goes again whole",
            part.kind.value,
            message.message_id,
        )

    def part_failed(
        self,
        message: Message,
        part: Part,
        error: LetterError,
        attempts: int = 0,
        request: Any = None,
    ) -> None:
        envelope = message.record.envelope
        assert envelope is not None
        log.warning(
            "dead-lettered %s part of message %s (member %s): %s",
            part.kind.value,
            envelope.message_id,
            logs.member(envelope.member_id),
            error.message,
        )
        self._write(
            DeadLetter(
                message_id=envelope.message_id,
                kind=part.kind,
                type=envelope.type.value,
                envelope=envelope.model_dump(mode="json"),
                request=part.body if request is None else request,
                endpoint=part.endpoint.value,
                error=error,
                source=LetterSource(file=message.record.source, line=message.record.line),
                attempts=attempts,
                run_id=self.run_id,
                config_hash=self.config_hash,
            )
        )
        message.failed = True
        self._part_done(message, part)

    def _part_done(self, message: Message, part: Part) -> None:
        """A part is settled (accepted, or kept as a letter): the journal may say so."""
        self.record(message.message_id, part.slot)
        message.remaining -= 1
        if message.remaining == 0:
            if message.failed:
                self.summary.dead_lettered += 1
            else:
                self.summary.sent += 1
            self.settled(message.record, "dead_lettered" if message.failed else "sent")

    def settled(self, record: Record, outcome: str) -> None:
        """``record`` needs nothing more: every part accepted or kept as a letter, or it was
        invalid, unrouted, skipped or had nothing to send (``outcome`` says which)."""
        if self.on_settled is not None:
            self.on_settled(record, outcome)

    # -- whole records -------------------------------------------------------------------

    def handled(self, message_id: str, slot: str) -> bool:
        """True when an earlier run of this input already settled this slot."""
        return self.journal is not None and self.journal.handled(message_id, slot)

    def record(self, message_id: str, slot: str) -> None:
        if self.journal is not None:
            self.journal.record(message_id, slot)

    def keep_input(self, record: Record, reason: str) -> bool:
        """Keep ``record`` whole as an ``input`` letter; False when an earlier run of this
        input already did (the record is counted as skipped instead)."""
        envelope = record.envelope
        message_id = envelope.message_id if envelope else _record_id(record)
        if self.handled(message_id, WHOLE):
            self.summary.skipped += 1
            return False
        self._write(
            DeadLetter(
                message_id=message_id,
                kind=Kind.INPUT,
                type=envelope.type.value if envelope else _raw_type(record.value),
                envelope=envelope.model_dump(mode="json") if envelope else _jsonable(record.value),
                request=None,
                endpoint=None,
                error=LetterError(error_class=ErrorClass.INVALID, message=reason),
                source=LetterSource(file=record.source, line=record.line),
                attempts=0,
                run_id=self.run_id,
                config_hash=self.config_hash,
            ),
            record.raw,
        )
        self.record(message_id, WHOLE)
        return True

    def _write(self, letter: DeadLetter, raw: IO[bytes] | None = None) -> None:
        assert self.store is not None
        self.store.write(letter, raw)


def _record_id(record: Record) -> str:
    """A record's message id, or a stable stand-in when it has none."""
    if isinstance(record.value, dict) and isinstance(record.value.get("id"), str):
        return str(record.value["id"])[:200]
    raw = json.dumps(_jsonable(record.value), sort_keys=True, default=str)
    return f"line-{record.line}-" + hashlib.sha256(raw.encode()).hexdigest()[:16]


def _raw_type(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return str(value["type"])[:64]
    return None


def _jsonable(value: Any) -> Any:
    """``value`` if a letter can hold it as JSON, else its (cut) repr."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return repr(value)[:4096]
    return value
