"""push-event: input record -> route -> plan -> batch -> send -> settle.

Nothing is lost: every input record ends either accepted by Optimove (its every part
delivered), or as a dead letter — ``input`` for bad input, or the failed part with the
exact body that was attempted (docs/realtime.md, docs/dead-letters.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from optisync.config.models import Config
from optisync.errors import StorageError
from optisync.optimove.client import OptimoveClient
from optisync.realtime.batching import Batcher, Pack
from optisync.realtime.deadletter import DeadLetterStore
from optisync.realtime.inputs import Record
from optisync.realtime.journal import Journal
from optisync.realtime.plan import Consent, InvalidMessage, Planner, describe
from optisync.realtime.routing import Router
from optisync.realtime.sender import Sender, sigterm_as_interrupt
from optisync.realtime.settle import Message, PushSettler, not_sent_error
from optisync.realtime.summary import MAX_PLANS_SHOWN, PushSummary

if TYPE_CHECKING:
    from optisync.realtime.optin import OptInRegister  # sqlite3: loaded only when needed

log = logging.getLogger(__name__)

ClientFactory = Callable[[], OptimoveClient]


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
        on_settled: Callable[[Record, str], None] | None = None,
    ) -> None:
        self.config = config
        self.only = only
        self.dry_run = dry_run
        self.client_factory = client_factory
        self.summary = PushSummary(
            run_id, dry_run=dry_run, dead_letter_dir=str(store.dir) if store else None
        )
        self.consent = Consent(opt_in_register, dry_run=dry_run)
        self.router = Router(config.routing.rules)
        self.planner = Planner(config, only, self.consent)
        self.settler = PushSettler(
            self.summary,
            store=store,
            journal=journal,
            run_id=run_id,
            config_hash=config_hash,
            on_settled=on_settled,
        )
        self.journal = journal
        self.batcher: Batcher[Message] = Batcher(config.optimove.events_per_request)
        self.sender: Sender[Pack[Message]] | None = None  # built on the first send
        self.storage_failed = False

    def run(
        self, records: Iterable[Record], progress: Callable[[int], None] | None = None
    ) -> PushSummary:
        with sigterm_as_interrupt():
            try:
                for record in records:
                    self.take(record)
                    if progress:
                        progress(1)
                for pack in self.batcher.drain():
                    self._send(pack)
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
                log.info("push-event run %s: %s", self.summary.run_id, self.summary.counts())
        return self.summary

    def take(self, record: Record) -> None:
        """Validate, route and plan one record, then queue its parts."""
        outcome = self._take(record)
        if outcome is not None and not self.dry_run:
            self.settler.settled(record, outcome)

    def _take(self, record: Record) -> str | None:
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
        parts = [p for p in plan.parts if not self.settler.handled(envelope.message_id, p.slot)]
        if not parts:
            s.skipped += 1
            return "skipped"
        message = Message(record, remaining=len(parts))
        for part in parts:
            if s.stopped:
                self.settler.part_failed(message, part, not_sent_error(s))
            elif self.batcher.already_sent(part):
                self.settler.part_delivered(message, part)
            else:
                for pack in self.batcher.add(message, part):
                    self._send(pack)
        return None

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
            self.settler.unsent(pack)
            return
        if self.sender is None:
            assert self.client_factory is not None
            self.sender = Sender(self.client_factory(), self.config.optimove.concurrency)
        self.sender.submit(pack.endpoint, pack.seal(), pack)
        self.summary.requests += 1
        self.sender.settle(self.settler.settle)
        if self.journal is not None:
            self.journal.flush()

    def _finish(self) -> None:
        if self.storage_failed:
            if self.sender is not None:  # let in-flight sends end; record nothing more
                self.sender.close()
            return
        # whatever is still queued was never sent: keep it as dead letters
        for pack in self.batcher.drain():
            self.settler.unsent(pack)
        if self.sender is not None:
            try:
                self.sender.settle(self.settler.settle, all_=True)
            finally:
                self.sender.close()
                self.sender.client.close()
        if self.journal is not None:
            self.journal.flush()
