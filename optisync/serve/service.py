"""Delivery: a thread that runs the push engine over the spool, for as long as it serves.

The same routing, packing, quota, retries, dead letters and journal as push-event: one
``Push`` run reads the spool's records in order and never ends on its own. A run that
stops (a refused key, Optimove unavailable after its retries) has dead-lettered what it
had planned, exactly as push-event would (a bulk mail formed again after a crash stays
spooled instead); the loop then waits and starts a new run on the rest of the spool, so a
long outage does not turn the whole backlog into letters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from optisync.config.models import Config
from optisync.optimove.client import OptimoveClient
from optisync.realtime.deadletter import DeadLetterStore
from optisync.realtime.inputs import Record
from optisync.realtime.journal import Journal
from optisync.realtime.push import Push
from optisync.realtime.summary import PushSummary
from optisync.serve.metrics import ServeMetrics
from optisync.serve.spool import JOURNAL, Spool, received_at

if TYPE_CHECKING:
    from optisync.realtime.optin import OptInRegister

log = logging.getLogger(__name__)

#: After a run stopped on Optimove (key refused, unavailable): wait before the next one.
PAUSE_AFTER_STOP = 30.0
LETTERED = frozenset({"dead_lettered", "invalid", "unrouted"})


class Delivery:
    """Feeds the spool to successive push runs on a thread of its own."""

    def __init__(
        self,
        config: Config,
        spool: Spool,
        *,
        store: DeadLetterStore,
        client_factory: Callable[[], OptimoveClient],
        metrics: ServeMetrics,
        new_run_id: Callable[[], str],
        config_hash: str,
        opt_in_register: OptInRegister | None = None,
        pause_after_stop: float = PAUSE_AFTER_STOP,
    ) -> None:
        self.config = config
        self.spool = spool
        self.store = store
        self.client_factory = client_factory
        self.metrics = metrics
        self.new_run_id = new_run_id
        self.config_hash = config_hash
        self.register = opt_in_register
        self.pause_after_stop = pause_after_stop
        self.error: BaseException | None = None
        self.on_error: Callable[[], None] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._main, name="optisync-deliver", daemon=True)

    def start(self) -> Delivery:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Intake is over: deliver what is spooled, then end (see ``join``)."""
        self._stopping.set()
        self.spool.close()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _client(self) -> OptimoveClient:
        client = self.client_factory()
        client.observer = self.metrics.attempt
        return client

    def _settled(self, record: Record, outcome: str) -> None:
        self.spool.settled(record)
        m = self.metrics
        m.settled.labels(outcome).inc()
        if outcome == "sent":
            m.delivered.inc()
        elif outcome in LETTERED:
            m.dead_lettered.inc()
        if outcome in ("sent", "dead_lettered"):  # an answer from Optimove settled it
            at = received_at(record.source or "")
            if at is not None:
                m.latency.observe(max(0.0, time.time() - at))
        m.spooled.set(self.spool.messages)
        m.spool_bytes.set(self.spool.size)

    def _main(self) -> None:
        try:
            while True:
                summary = self._one_run()
                if self._stopping.is_set() or not summary.stopped:
                    return
                log.warning(
                    "delivery paused for %.0fs: %s", self.pause_after_stop, summary.stop_reason
                )
                if self._stopping.wait(self.pause_after_stop):
                    return  # stopping: what is left stays spooled for the next start
        except BaseException as exc:  # a storage fault: nothing more may be acknowledged
            log.error("delivery failed: %s", exc)
            self.error = exc
            if self.on_error is not None:
                self.on_error()

    def _one_run(self) -> PushSummary:
        # The journal only guards messages still spooled: with none left it starts afresh,
        # so it does not grow for as long as the service runs.
        journal = Journal(self.spool.dir / JOURNAL, fresh=self.spool.empty())
        try:
            push = Push(
                self.config,
                store=self.store,
                client_factory=self._client,
                run_id=self.new_run_id(),
                config_hash=self.config_hash,
                journal=journal,
                opt_in_register=self.register,
                on_settled=self._settled,
                stream=True,
            )
            summary = push.run(self.spool.records(lambda: push.summary.stopped is not None))
        finally:
            journal.close()
        log.info("delivery run %s ended: %s", summary.run_id, summary.counts())
        return summary
