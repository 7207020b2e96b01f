"""push-event: input record -> route -> plan -> batch -> send -> settle.

Nothing is lost: every input record ends either accepted by Optimove (its every part
delivered), or as a dead letter — ``input`` for bad input, or the failed part with the
exact body that was attempted (docs/realtime.md, docs/dead-letters.md) — or, for the
recipients of a bulk mail formed again after a crash when the run stops, held unsettled
for the next run.

The run's thread waits on one queue (``Inbox``): input records, the end of the input and
finished sends all wake it, and so does the next linger deadline, so a feed that never
closes still gets every pack out and every answer settled promptly.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from optisync.config.models import Config
from optisync.errors import StorageError
from optisync.optimove.client import OptimoveClient
from optisync.optimove.outcome import Delivery, Endpoint
from optisync.realtime.batching import Batcher, Outbox, Pack
from optisync.realtime.deadletter import DeadLetterStore
from optisync.realtime.inputs import Record
from optisync.realtime.journal import Journal, RecordedCall
from optisync.realtime.plan import Consent, InvalidMessage, Part, Planner, describe
from optisync.realtime.routing import Router
from optisync.realtime.sender import Inbox, Sender, in_flight_bound, stoppable
from optisync.realtime.settle import Message, PushSettler, not_sent_error
from optisync.realtime.summary import MAX_PLANS_SHOWN, PushSummary

if TYPE_CHECKING:
    from optisync.realtime.optin import OptInRegister  # sqlite3: loaded only when needed

log = logging.getLogger(__name__)

ClientFactory = Callable[[], OptimoveClient]
#: Mail parts serve remembers, to know a caller's resend of a recent message.
RECENT_MAIL = 100_000


class Push:
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
        clock: Callable[[], float] = time.monotonic,
        on_settled: Callable[[Record, str], None] | None = None,
        stream: bool = False,
    ) -> None:
        self.config = config
        self.only = only
        self.dry_run = dry_run
        self.client_factory = client_factory
        self.summary = PushSummary(
            run_id, dry_run=dry_run, dead_letter_dir=str(store.dir) if store else None
        )
        # consent is kept only where some mail depends on it: remembering every member of
        # an endless feed for nothing would grow without bound
        consent = Consent(opt_in_register, dry_run=dry_run) if config.mails_on_consent else None
        self.router = Router(config.routing.rules)
        self.planner = Planner(config, only, consent)
        self.settler = PushSettler(
            self.summary,
            store=store,
            journal=journal,
            run_id=run_id,
            config_hash=config_hash,
            on_settled=on_settled,
        )
        self.journal = journal
        self.clock = clock
        # A journaled file packs by its order alone, so its calls do not depend on timing;
        # a stream needs time cuts. Either way, a journal records each bulk mail's
        # recipients before it goes, so a rerun sends them as that same call again.
        lingering = journal is None or stream
        self.batcher: Batcher[Message] = Batcher(
            config.optimove.events_per_request,
            linger=config.optimove.linger_ms / 1000 if lingering else None,
            clock=clock,
        )
        # serve: the mail parts of the latest messages, so a caller's resend of a message
        # is not mailed again (a bulk mail's id is its recipients', not the message's)
        self.recent_mail: OrderedDict[tuple[str, str], None] | None = (
            OrderedDict() if stream and journal is not None else None
        )
        self.outbox: Outbox[Message] = Outbox()
        self.inbox: Inbox[Record] = Inbox()
        self.sender: Sender[Pack[Message]] | None = None  # built on the first send
        self.storage_failed = False

    def run(
        self, records: Iterable[Record], progress: Callable[[int], None] | None = None
    ) -> PushSummary:
        def interrupted() -> None:
            self.summary.stop("interrupted", "interrupted by a signal; in-flight work was finished")

        def finish() -> None:
            self.inbox.close()
            self._finish()
            log.info("push-event run %s: %s", self.summary.run_id, self.summary.counts())

        def loop() -> None:
            try:
                self._loop(progress)
            except StorageError:
                # nothing more can be stored, so nothing more may be acknowledged
                self.storage_failed = True
                raise

        self.inbox.start(records)
        stoppable(loop, interrupted=interrupted, finish=finish)
        return self.summary

    def _loop(self, progress: Callable[[int], None] | None) -> None:
        inbox, batcher, outbox = self.inbox, self.batcher, self.outbox
        # Records read while no send could start wait here: input is planned only as far as
        # it can be sent, so what a stop signal finds planned and unsent stays small.
        backlog: deque[Record] = deque()
        ended = False
        last_input = self.clock()
        while True:
            if self.sender is not None:
                self._settle_done()
            if batcher.forming and (
                self._room() <= 0 or inbox.read - inbox.taken >= inbox.bound // 2
            ):
                batcher.hold_recorded()
            if backlog and self._room() > 0:
                # input held back is input all the same: the feed is not idle
                last_input = self.clock()
                self._take(backlog.popleft(), progress)
                continue
            if ended and not backlog:  # records still waiting belong in these packs
                for pack in batcher.drain():
                    outbox.put(pack)
            elif self._room() > 0:
                # time-cut packs only when they can go: while sends wait (the quota), packs
                # keep filling, which spends fewer calls of that quota
                for pack in batcher.due(self.clock(), last_input):
                    outbox.put(pack)
            self._dispatch()
            inflight = self.sender.inflight if self.sender is not None else ()
            if ended and not backlog and not outbox and not inflight:
                return
            timeout = None
            if not ended and self._room() > 0:
                deadline = batcher.deadline(last_input)
                if deadline is not None:
                    timeout = max(0.0, deadline - self.clock())
            if self.journal is not None:  # what is settled survives a kill from here on
                self.journal.flush()
            event = inbox.get(timeout)
            if event is None:
                continue
            kind, value = event
            if kind == Inbox.ITEM:
                last_input = self.clock()
                if backlog or self._room() <= 0:
                    backlog.append(value)
                else:
                    self._take(value, progress)
            elif kind == Inbox.END:
                if value is not None:
                    raise value
                ended = True

    def _take(self, record: Record, progress: Callable[[int], None] | None) -> None:
        self.inbox.took()
        self.take(record)
        if progress:
            progress(1)

    def _room(self) -> int:
        """Slots of the in-flight bound free now, packs already waiting counted."""
        if self.sender is None:
            return in_flight_bound(self.config.optimove.concurrency) - self.outbox.slots
        return self.sender.room - self.outbox.slots

    def _dispatch(self) -> None:
        """Send waiting packs in order while there is room (see ``Outbox`` for order)."""
        while self.outbox and (self.sender is None or self.sender.room > 0):
            pack = self.outbox.take()
            if pack is None:  # the rest wait for a customer's earlier call
                return
            self._send(pack)

    def _handle(
        self, pack: Pack[Message], delivery: Delivery | None, exc: BaseException | None
    ) -> None:
        self.outbox.settled(pack)
        if (
            pack.first
            and delivery is not None
            and delivery.outcome == "duplicate"
            and delivery.attempts <= 1  # a 409 to a retry may answer this call's own try
        ):
            # before its parts are recorded as settled: a rerun delivers the others too
            assert self.journal is not None and pack.uid is not None
            self.journal.record_went(pack.uid)
        self.settler.settle(pack, delivery, exc)

    def _settle_done(self) -> int:
        assert self.sender is not None
        return self.sender.settle_done(self._handle)

    def take(self, record: Record) -> None:
        """Validate, route and plan one record, then queue its parts."""
        outcome = self._plan(record)
        if outcome is not None and not self.dry_run:
            self.settler.settled(record, outcome)

    def _plan(self, record: Record) -> str | None:
        """None once the record's parts are queued (the settler reports it when they
        settle), else the outcome that already settled it."""
        s = self.summary
        s.read += 1
        envelope = record.envelope
        if envelope is None:
            self._invalid(record, record.error or "invalid")
            return "invalid"
        routed = self.router.route(envelope)
        if routed.unrouted:
            s.valid += 1
            s.unrouted += 1
            if self.config.routing.unrouted != "dead_letter":
                s.warnings[f"{envelope.type.value}: no routing rule matches"] += 1
            elif self.dry_run:  # writes no letter; the plan shows the message goes nowhere
                if len(s.plans) < MAX_PLANS_SHOWN:
                    s.plans.append(describe(record, routed, []))
            elif self.settler.keep_input(record, "no routing rule matches"):
                s.dead_lettered += 1
            return "unrouted"
        try:
            plan = self.planner.plan(envelope, routed.targets)
        except InvalidMessage as exc:
            self._invalid(record, str(exc))
            return "invalid"
        s.valid += 1
        s.emd_unmapped.update(plan.emd_unmapped)
        if plan.suppressed:
            s.suppressed += 1
            s.suppressed_reasons.update(plan.suppressed)
        if self.dry_run:
            if len(s.plans) < MAX_PLANS_SHOWN:
                s.plans.append(describe(record, routed, plan.parts))
            return None
        if not plan.parts:
            s.nothing_to_send += 1
            return "nothing_to_send"
        parts = [
            p
            for p in plan.parts
            if not self.settler.handled(envelope.message_id, p.slot)
            and not self._mailed_lately(envelope.message_id, p)
        ]
        if not parts:
            s.skipped += 1
            return "skipped"
        message = Message(record, remaining=len(parts))
        for part in parts:
            recorded = self._recorded(message, part)
            if recorded is not None and recorded.went:
                s.duplicates += 1  # Optimove refused its call again: it was mailed
                self.settler.part_delivered(message, part)
            elif recorded is not None and s.stopped:
                self.settler.part_held(message, part)
            elif s.stopped:
                self.settler.part_failed(message, part, not_sent_error(s))
            elif self.batcher.already_sent(part):
                self.settler.part_delivered(message, part)
            elif recorded is not None:
                ready = self.batcher.add_recorded(recorded.uid, recorded.unsettled, message, part)
                for pack in ready:
                    self.outbox.put(pack)
            else:
                for pack in self.batcher.add(message, part):
                    self.outbox.put(pack)
        return None

    def _mailed_lately(self, message_id: str, part: Part) -> bool:
        """A mail part this serve run already took (a caller's resend): it is not mailed
        again, though a bulk mail's id, unlike a lone mail's, cannot tell Optimove so."""
        if self.recent_mail is None or part.endpoint is not Endpoint.SEND_TRANSACTIONAL_MAIL:
            return False
        key = (message_id, part.slot)
        if key in self.recent_mail:
            return True
        self.recent_mail[key] = None
        if len(self.recent_mail) > RECENT_MAIL:
            self.recent_mail.popitem(last=False)
        return False

    def _recorded(self, message: Message, part: Part) -> RecordedCall | None:
        """The bulk mail an earlier run recorded this mail part in, if any."""
        if self.journal is None or part.endpoint is not Endpoint.SEND_TRANSACTIONAL_MAIL:
            return None
        return self.journal.recorded_pack(message.message_id, part.slot)

    def _invalid(self, record: Record, reason: str) -> None:
        if self.dry_run:
            self.summary.invalid += 1
            if len(self.summary.plans) < MAX_PLANS_SHOWN:
                self.summary.plans.append({"line": record.line, "invalid": reason})
            return
        if self.settler.keep_input(record, reason):
            self.summary.invalid += 1
            log.warning("%s line %s: invalid: %s", record.source or "input", record.line, reason)

    def _send(self, pack: Pack[Message]) -> None:
        if self.summary.stopped:
            self.outbox.settled(pack)
            self.settler.unsent(pack)
            return
        if self.sender is None:
            assert self.client_factory is not None
            self.sender = Sender(
                self.client_factory(), self.config.optimove.concurrency, wake=self.inbox.wake
            )
        body = pack.seal()
        if self.journal is not None and pack.endpoint is Endpoint.SEND_TRANSACTIONAL_MAIL:
            parts = [(message.message_id, part.slot) for message, part in pack.items]
            if pack.uid is None and len(pack.items) > 1:
                self.journal.record_pack(body["UniqueMessageID"], parts)
            elif pack.uid is not None and not self.journal.spent(pack.uid):
                # the id is these parts' from now on, whole or short (a repeated input line
                # can fill a call with fewer distinct parts than it was recorded with)
                pack.first = True
                self.journal.record_spent(pack.uid, parts)
        self.sender.submit(pack.endpoint, body, pack)
        self.summary.requests += 1

    def _finish(self) -> None:
        if self.storage_failed:
            if self.sender is not None:  # let in-flight sends end; record nothing more
                self.sender.finish(None)
            return
        # whatever is still queued was never sent: keep it as dead letters (or held)
        for pack in [*self.outbox.drain(), *self.batcher.drain()]:
            self.settler.unsent(pack)
        if self.sender is not None:
            self.sender.finish(self._handle)
        if self.journal is not None:
            self.journal.flush()
