"""push-event and replay: validate → route → send → dead-letter whatever fails.

Nothing is lost: every input record ends either accepted by Optimove (its every part
delivered), or as a dead letter — ``invalid`` for bad input, or the failed part with the
exact body that was attempted. The main thread reads, plans and settles results; a small
thread pool does the network I/O, with a bounded number of requests in flight so memory
stays flat whatever the input size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optisync import logs
from optisync.config.models import Config
from optisync.errors import ExitCode, StorageError
from optisync.optimove.client import OptimoveAuthError, OptimoveClient, encode_body
from optisync.optimove.outcome import Delivery, Endpoint
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
from optisync.realtime.payloads import (
    MAX_CUSTOMERS_PER_CALL,
    InvalidMessage,
    Part,
    opt_in_state,
    pack_attributes,
    pack_transactional,
    plan_message,
)
from optisync.realtime.routing import route

if TYPE_CHECKING:
    from optisync.realtime.optin import OptInRegister

log = logging.getLogger(__name__)
_ERROR_CLASS = {
    "fatal": ErrorClass.FATAL,
    "transient": ErrorClass.TRANSIENT,
    "rate_limited": ErrorClass.RATE_LIMITED,
    "auth": ErrorClass.AUTH,
}
MAX_PLANS_SHOWN = 1000
MAX_RECIPIENTS_PER_CALL = 200
MAX_PROMOTIONS_PER_CALL = 100


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + os.urandom(4).hex()


def config_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return "unknown"


@dataclass
class Summary:
    """Counts of one run, rendered as a table on a TTY and as one JSON object with --json."""

    command: str
    run_id: str
    dry_run: bool = False
    read: int = 0
    valid: int = 0
    invalid: int = 0
    sent: int = 0
    dead_lettered: int = 0
    unrouted: int = 0
    nothing_to_send: int = 0
    skipped: int = 0
    suppressed: int = 0
    requests: int = 0
    duplicates: int = 0
    by_target: Counter[str] = field(default_factory=Counter)
    emd_unmapped: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    suppressed_reasons: Counter[str] = field(default_factory=Counter)
    stopped: str | None = None  # auth | unavailable | interrupted
    stop_reason: str | None = None
    plans: list[dict[str, Any]] = field(default_factory=list)
    not_replayable: int = 0
    letters: int = 0

    def stop(self, why: str, reason: str) -> None:
        """The first reason to stop stays, but an interrupt always shows (exit 130)."""
        if not self.stopped or why == "interrupted":
            self.stopped, self.stop_reason = why, reason

    def exit_code(self) -> ExitCode:
        if self.stopped == "interrupted":
            return ExitCode.INTERRUPTED
        if self.stopped == "auth":
            return ExitCode.REFUSED
        if self.stopped == "unavailable":
            return ExitCode.UNAVAILABLE
        if self.invalid:
            return ExitCode.INVALID_INPUT
        if self.dead_lettered:
            return ExitCode.PARTIAL
        return ExitCode.OK

    def counts(self) -> str:
        return " ".join(
            f"{k}={v}" for k, v in self.as_dict().items() if isinstance(v, int) and k != "dry_run"
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "command": self.command,
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "exit_code": int(self.exit_code()),
        }
        names = [
            "read",
            "valid",
            "invalid",
            "sent",
            "dead_lettered",
            "unrouted",
            "nothing_to_send",
            "suppressed",
            "skipped",
            "requests",
            "duplicates",
        ]
        if self.command == "replay":
            names = ["letters", "sent", "dead_lettered", "not_replayable", "requests", "duplicates"]
        out.update({name: getattr(self, name) for name in names})
        out["delivered_by_target"] = dict(self.by_target)
        out["emd_unmapped"] = dict(self.emd_unmapped)
        out["suppressed_reasons"] = dict(self.suppressed_reasons)
        out["warnings"] = [f"{text} (x{n})" if n > 1 else text for text, n in self.warnings.items()]
        out["stopped"] = self.stopped
        out["stop_reason"] = self.stop_reason
        if self.dry_run:
            out["plans"] = self.plans
        return out


@dataclass
class _Message:
    record: Record
    remaining: int
    failed: bool = False


@dataclass
class _Batch:
    endpoint: Endpoint
    items: list[tuple[_Message, Part]] = field(default_factory=list)
    customers: set[str] = field(default_factory=set)
    sent: Any = None

    def body(self) -> Any:
        bodies = [part.body for _, part in self.items]
        if self.endpoint is Endpoint.ADD_PROMOTIONS:
            return [promo for body in bodies for promo in body]
        if len(bodies) == 1:
            return bodies[0]
        if self.endpoint is Endpoint.UPDATE_CUSTOMER_ATTRIBUTES:
            return pack_attributes(bodies)
        if self.endpoint is Endpoint.SEND_TRANSACTIONAL_MAIL:
            return pack_transactional(bodies)
        return bodies  # events: an array

    def letter_request(self, part: Part, sent: Any) -> Any:
        """What a failed part's dead letter keeps as its request.

        A bulk mail keeps the whole call: replaying that exact body (same UniqueMessageID)
        is what guarantees no second mail if the call did go through. Attribute updates
        and events keep the member's own slice, which is safe to resend alone.
        """
        return sent if self.endpoint is Endpoint.SEND_TRANSACTIONAL_MAIL else part.body


ClientFactory = Callable[[], OptimoveClient]


class _Sender:
    """Runs sends on a thread pool with a bounded number in flight; results settle in order
    of completion on the calling thread, so bookkeeping needs no locks."""

    def __init__(self, client: OptimoveClient | None, workers: int) -> None:
        self.client = client
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="optisync-send")
        self.limit = workers * 2
        self.inflight: dict[Future[Delivery], Any] = {}

    def submit(self, endpoint: Endpoint, body: Any, tag: Any) -> None:
        assert self.client is not None
        future = self.pool.submit(self.client.send, endpoint, body)
        self.inflight[future] = tag

    def settle(
        self,
        handle: Callable[[Any, Delivery | None, BaseException | None], None],
        *,
        all_: bool = False,
    ) -> None:
        """Hand finished sends to ``handle`` until there is room (``all_``: until none is
        left). A stop signal waits until the answers in hand are recorded: once a send
        leaves ``inflight``, only ``handle`` can journal or dead-letter it."""
        while self.inflight and (all_ or len(self.inflight) >= self.limit):
            done, _ = wait(list(self.inflight), return_when=FIRST_COMPLETED)
            with _SIGNALS.held():
                for future in done:
                    tag = self.inflight.pop(future)
                    exc = future.exception()
                    handle(tag, None if exc else future.result(), exc)
            if not all_:  # finishing runs to the end whatever arrives
                _SIGNALS.check()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)


class _Signals:
    """Ctrl-C and SIGTERM stop a run at once, except while answers are being recorded."""

    def __init__(self) -> None:
        self.holding = 0
        self.pending = False

    def handler(self, signum: int, frame: Any) -> None:
        if self.holding:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextmanager
    def held(self) -> Iterator[None]:
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1

    def check(self) -> None:
        if self.pending and not self.holding:
            self.pending = False
            raise KeyboardInterrupt


_SIGNALS = _Signals()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (systemd, kill) stops a run the same careful way as Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, _SIGNALS.handler)
        for sig in (signal.SIGTERM, signal.SIGINT)
        if signal.getsignal(sig) is not signal.SIG_IGN  # nohup'd or backgrounded: keep it so
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _SIGNALS.pending = False


class Pusher:
    """One push-event run over any iterable of input records."""

    def __init__(
        self,
        config: Config,
        *,
        store: DeadLetterStore | None,
        client_factory: ClientFactory | None,
        run_id: str,
        config_hash: str,
        only: set[str] | None = None,
        dry_run: bool = False,
        journal: Journal | None = None,
        opt_in_register: OptInRegister | None = None,
    ) -> None:
        self.config = config
        self.register = opt_in_register
        # a dry run must not write the register, yet later lines should see earlier consent
        self.consent_seen: dict[str, bool] = {}
        self.promo_codes: set[str] = set()
        self.store = store
        self.client_factory = client_factory
        self.only = only
        self.dry_run = dry_run
        self.journal = journal
        self.run_id = run_id
        self.config_hash = config_hash
        self.summary = Summary("push-event", run_id, dry_run=dry_run)
        self.pending: dict[str, _Batch] = {}
        self.sender: _Sender | None = None
        self.storage_failed = False

    # -- the run -------------------------------------------------------------------------

    def run(
        self, records: Iterable[Record], progress: Callable[[int], None] | None = None
    ) -> Summary:
        with sigterm_as_interrupt():
            try:
                for record in records:
                    self._take(record)
                    if progress:
                        progress(1)
                self._flush_all()
            except KeyboardInterrupt:
                self.summary.stop(
                    "interrupted", "interrupted by a signal; in-flight work was finished"
                )
            except StorageError:
                # nothing more can be stored, so nothing more may be acknowledged
                self.storage_failed = True
                raise
            finally:
                self._finish()
                log.info("push-event run %s: %s", self.run_id, self.summary.counts())
        return self.summary

    def _take(self, record: Record) -> None:
        s = self.summary
        s.read += 1
        envelope = record.envelope
        if envelope is None:
            self._invalid(record, record.error or "invalid")
            return
        decision = route(envelope, self.config.routing.rules)
        if decision.unrouted:
            s.valid += 1
            s.unrouted += 1
            if self.config.routing.unrouted == "dead_letter":
                if self._seen_whole(envelope.message_id):
                    return
                self._letter(record, Kind.INPUT, ErrorClass.INVALID, "no routing rule matches")
                self._journal(envelope.message_id, "*")
                s.dead_lettered += 1
            else:
                s.warnings[f"{envelope.type.value}: no routing rule matches"] += 1
            return
        consent = opt_in_state(envelope, self.config)
        if consent is not None:
            self.consent_seen[envelope.member_id] = consent
            if self.register is not None and not self.dry_run:
                self.register.record(envelope.member_id, consent, envelope.occurred_at)
        try:
            plan = plan_message(
                envelope, decision.targets, self.config, self.only, self._known_consent
            )
        except InvalidMessage as exc:
            self._invalid(record, str(exc))
            return
        s.valid += 1
        if plan.emd_unmapped:
            s.emd_unmapped.update(plan.emd_unmapped)
        if plan.suppressed:
            s.suppressed += 1
            s.suppressed_reasons.update(plan.suppressed)
        if self.dry_run:
            if len(s.plans) < MAX_PLANS_SHOWN:
                s.plans.append(self._describe(record, decision.targets, decision.rules, plan.parts))
            return
        if not plan.parts:
            s.nothing_to_send += 1
            return
        parts = plan.parts
        for index, part in enumerate(parts):
            part.slot = f"{part.target}#{index}"
        if self.journal is not None and len(self.journal):
            parts = [p for p in parts if not self.journal.handled(envelope.message_id, p.slot)]
            if not parts:
                s.skipped += 1
                return
        message = _Message(record, remaining=len(parts))
        for part in parts:
            if self.summary.stopped:
                self._fail(message, part, None, self._stopped_error())
            else:
                self._queue(message, part)

    def _known_consent(self, member_id: str) -> bool | None:
        if member_id in self.consent_seen:
            return self.consent_seen[member_id]
        return self.register.get(member_id) if self.register is not None else None

    def _describe(
        self, record: Record, targets: tuple[str, ...], rules: tuple[str, ...], parts: list[Part]
    ) -> dict[str, Any]:
        assert record.envelope is not None
        return {
            "line": record.line,
            "id": record.envelope.message_id,
            "type": record.envelope.type.value,
            "rules": list(rules),
            "targets": list(targets),
            "requests": [{"endpoint": p.endpoint.value, "body": p.body} for p in parts],
        }

    # -- batching and sending ------------------------------------------------------------

    def _queue(self, message: _Message, part: Part) -> None:
        endpoint = part.endpoint
        if endpoint is Endpoint.UPDATE_CUSTOMER_ATTRIBUTES:
            batch = self.pending.setdefault("attributes", _Batch(endpoint))
            customer = part.body["CustomerNewAttributesValuesList"][0]["CustomerID"]
            # a customer seen again goes in a later call, keeping its updates in order
            if customer in batch.customers or len(batch.customers) >= MAX_CUSTOMERS_PER_CALL:
                self._send(self.pending.pop("attributes"))
                batch = self.pending.setdefault("attributes", _Batch(endpoint))
            batch.customers.add(customer)
            batch.items.append((message, part))
            if len(batch.customers) >= MAX_CUSTOMERS_PER_CALL:
                self._send(self.pending.pop("attributes"))
            return
        if endpoint is Endpoint.SEND_TRANSACTIONAL_MAIL:
            key = f"email:{part.body['TemplateID']}"
            batch = self.pending.setdefault(key, _Batch(endpoint))
            batch.items.append((message, part))
            if len(batch.items) >= MAX_RECIPIENTS_PER_CALL:
                self._send(self.pending.pop(key))
            return
        if endpoint is Endpoint.ADD_PROMOTIONS:
            if part.pack_key in self.promo_codes:  # the same code once per run
                self.summary.by_target[part.target] += 1
                self._part_done(message, part)
                return
            self.promo_codes.add(part.pack_key)
            batch = self.pending.setdefault("promotions", _Batch(endpoint))
            batch.items.append((message, part))
            if len(batch.items) >= MAX_PROMOTIONS_PER_CALL:
                self._send(self.pending.pop("promotions"))
            return
        per_request = self.config.optimove.events_per_request
        if endpoint is Endpoint.EVENTS and per_request > 1:
            batch = self.pending.setdefault("events", _Batch(endpoint))
            batch.items.append((message, part))
            if len(batch.items) >= per_request:
                self._send(self.pending.pop("events"))
            return
        self._send(_Batch(endpoint, [(message, part)]))

    def _send(self, batch: _Batch) -> None:
        if self.summary.stopped:
            for message, part in batch.items:
                self._fail(message, part, None, self._stopped_error())
            return
        if self.sender is None:
            assert self.client_factory is not None
            client = self.client_factory()
            self.sender = _Sender(client, self.config.optimove.concurrency)
        batch.sent = batch.body()
        self.sender.submit(batch.endpoint, batch.sent, batch)
        self.summary.requests += 1
        self.sender.settle(self._settle)
        if self.journal is not None:
            self.journal.flush()

    def _flush_all(self) -> None:
        for key in list(self.pending):
            self._send(self.pending.pop(key))

    def _finish(self) -> None:
        if self.storage_failed:
            if self.sender is not None:  # let in-flight sends end; record nothing more
                self.sender.close()
            return
        # whatever is still queued was never sent: keep it as dead letters
        for key in list(self.pending):
            for message, part in self.pending.pop(key).items:
                self._fail(message, part, None, self._stopped_error())
        if self.sender is not None:
            try:
                self.sender.settle(self._settle, all_=True)
            finally:
                self.sender.close()
                if self.sender.client is not None:
                    self.sender.client.close()
        if self.journal is not None:
            self.journal.flush()

    def _settle(self, batch: _Batch, delivery: Delivery | None, exc: BaseException | None) -> None:
        if exc is not None:
            if isinstance(exc, OptimoveAuthError):
                self.summary.stop("auth", exc.message)
                error = LetterError(
                    error_class=ErrorClass.AUTH,
                    status=exc.delivery.status,
                    message=exc.delivery.error or exc.message,
                )
                attempts = exc.delivery.attempts
            else:
                # a bug or a local fault: the messages are kept, then the error surfaces
                for message, part in batch.items:
                    self._fail(
                        message,
                        part,
                        None,
                        LetterError(
                            error_class=ErrorClass.TRANSIENT, message=f"{type(exc).__name__}: {exc}"
                        ),
                        request=batch.letter_request(part, batch.sent),
                    )
                raise exc
            for message, part in batch.items:
                self._fail(
                    message,
                    part,
                    None,
                    error,
                    attempts=attempts,
                    request=batch.letter_request(part, batch.sent),
                )
            return
        assert delivery is not None
        if delivery.ok:
            if delivery.outcome == "duplicate":
                self.summary.duplicates += len(batch.items)
            if delivery.warning:
                self.summary.warnings[f"{batch.endpoint.value}: {delivery.warning}"] += 1
            for message, part in batch.items:
                self.summary.by_target[part.target] += 1
                self._part_done(message, part)
            return
        if delivery.outcome in {"transient", "rate_limited"}:
            self.summary.stop(
                "unavailable",
                f"Optimove unavailable after {delivery.attempts} attempts"
                f" on {batch.endpoint.value}: {delivery.error or delivery.status}",
            )
        error = LetterError(
            error_class=_ERROR_CLASS.get(delivery.outcome, ErrorClass.FATAL),
            status=delivery.status,
            message=delivery.error or f"HTTP {delivery.status}",
        )
        for message, part in batch.items:
            self._fail(
                message,
                part,
                delivery.endpoint,
                error,
                attempts=delivery.attempts,
                request=batch.letter_request(part, batch.sent),
            )

    # -- bookkeeping ---------------------------------------------------------------------

    def _stopped_error(self) -> LetterError:
        why = self.summary.stopped
        if why == "auth":
            return LetterError(
                error_class=ErrorClass.AUTH, message=f"not sent: {self.summary.stop_reason}"
            )
        return LetterError(
            error_class=ErrorClass.TRANSIENT,
            message=f"not sent: {self.summary.stop_reason or why or 'the run ended early'}",
        )

    def _fail(
        self,
        message: _Message,
        part: Part,
        endpoint: str | None,
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

    def _part_done(self, message: _Message, part: Part) -> None:
        """A part is settled (accepted, or kept as a letter): the journal may say so."""
        envelope = message.record.envelope
        assert envelope is not None
        self._journal(envelope.message_id, part.slot)
        message.remaining -= 1
        if message.remaining == 0:
            if message.failed:
                self.summary.dead_lettered += 1
            else:
                self.summary.sent += 1

    def _journal(self, message_id: str, slot: str) -> None:
        if self.journal is not None:
            self.journal.record(message_id, slot)

    def _seen_whole(self, message_id: str) -> bool:
        """True when an earlier run of this input already kept this record as a letter."""
        if self.journal is not None and self.journal.handled(message_id, "*"):
            self.summary.skipped += 1
            return True
        return False

    def _invalid(self, record: Record, reason: str) -> None:
        if self.dry_run:
            self.summary.invalid += 1
            if len(self.summary.plans) < MAX_PLANS_SHOWN:
                self.summary.plans.append({"line": record.line, "invalid": reason})
            return
        record_id = record.envelope.message_id if record.envelope else _record_id(record)
        if self._seen_whole(record_id):
            return
        self.summary.invalid += 1
        log.warning("%s line %s: invalid: %s", record.source or "input", record.line, reason)
        self._letter(record, Kind.INPUT, ErrorClass.INVALID, reason)
        self._journal(record_id, "*")

    def _letter(self, record: Record, kind: Kind, cls: ErrorClass, reason: str) -> None:
        envelope = record.envelope
        self._write(
            DeadLetter(
                message_id=envelope.message_id if envelope else _record_id(record),
                kind=kind,
                type=envelope.type.value if envelope else _raw_type(record.value),
                envelope=envelope.model_dump(mode="json") if envelope else _jsonable(record.value),
                request=None,
                endpoint=None,
                error=LetterError(error_class=cls, message=reason),
                source=LetterSource(file=record.source, line=record.line),
                attempts=0,
                run_id=self.run_id,
                config_hash=self.config_hash,
            )
        )

    def _write(self, letter: DeadLetter) -> None:
        assert self.store is not None
        self.store.write(letter)


def _record_id(record: Record) -> str:
    if isinstance(record.value, dict) and isinstance(record.value.get("id"), str):
        return str(record.value["id"])[:200]
    raw = json.dumps(_jsonable(record.value), sort_keys=True, default=str)
    return f"line-{record.line}-" + hashlib.sha256(raw.encode()).hexdigest()[:16]


def _raw_type(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return str(value["type"])[:64]
    return None


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return repr(value)[:4096]
    return value


def _request(letter: DeadLetter) -> dict[str, Any] | list[Any]:
    request = letter.request
    assert isinstance(request, dict | list)
    return request


# -- replay ----------------------------------------------------------------------------


@dataclass
class ReplayFilter:
    kind: str | None = None
    type: str | None = None
    since: datetime | None = None
    limit: int | None = None


def replay(
    config: Config,
    store: DeadLetterStore,
    client_factory: ClientFactory | None,
    *,
    run_id: str,
    filters: ReplayFilter,
    dry_run: bool = False,
) -> Summary:
    """Re-send dead letters with their exact request bodies (same idempotency keys).

    A letter leaves the folder only after Optimove accepted it; a failing one stays with
    its attempt count raised. Invalid-input letters have no request and are not replayed.
    Letters holding the same request (one bulk call) are sent once, together.
    """
    summary = Summary("replay", run_id, dry_run=dry_run)
    groups: dict[tuple[str, str], list[tuple[Path, DeadLetter]]] = {}
    for path, letter in store.iter_letters(
        kind=filters.kind, type=filters.type, since=filters.since, limit=filters.limit
    ):
        summary.letters += 1
        if letter.request is None or letter.endpoint is None:
            summary.not_replayable += 1
            continue
        key = (letter.endpoint, json.dumps(letter.request, sort_keys=True))
        groups.setdefault(key, []).append((path, letter))
    if dry_run:
        summary.plans = [
            {"endpoint": endpoint, "letters": [p.name for p, _ in items]}
            for (endpoint, _), items in list(groups.items())[:MAX_PLANS_SHOWN]
        ]
        return summary
    if not groups:
        return summary
    assert client_factory is not None
    client = client_factory()
    sender = _Sender(client, config.optimove.concurrency)

    def settle(
        items: list[tuple[Path, DeadLetter]], delivery: Delivery | None, exc: BaseException | None
    ) -> None:
        if exc is not None and not isinstance(exc, OptimoveAuthError):
            raise exc
        if delivery is not None and delivery.ok:
            if delivery.outcome == "duplicate":
                summary.duplicates += len(items)
            for path, letter in items:
                store.remove(path, archive=config.dead_letter.archive)
                summary.sent += 1
                summary.by_target[letter.kind.value] += 1
            return
        failed = exc.delivery if isinstance(exc, OptimoveAuthError) else delivery
        assert failed is not None
        if isinstance(exc, OptimoveAuthError):
            summary.stop("auth", exc.message)
        elif failed.outcome in {"transient", "rate_limited"}:
            summary.stop("unavailable", f"Optimove unavailable after {failed.attempts} attempts")
        error = LetterError(
            error_class=_ERROR_CLASS.get(failed.outcome, ErrorClass.FATAL),
            status=failed.status,
            message=failed.error or f"HTTP {failed.status}",
        )
        for path, letter in items:
            store.record_failure(path, letter, error)
            summary.dead_lettered += 1

    try:
        with sigterm_as_interrupt():
            try:
                for (endpoint, _), items in groups.items():
                    if summary.stopped:
                        break
                    sender.submit(Endpoint(endpoint), encode_body(_request(items[0][1])), items)
                    summary.requests += 1
                    sender.settle(settle)
            except KeyboardInterrupt:
                summary.stop("interrupted", "interrupted by a signal")
            finally:
                sender.settle(settle, all_=True)
    finally:
        sender.close()
        client.close()
    return summary
