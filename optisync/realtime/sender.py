"""Sending packs through the Optimove client on a small thread pool.

The calling thread plans and settles; the pool only does network I/O, with a bounded
number of requests in flight so memory stays flat whatever the input size. Answers are
handed back on the calling thread, so the bookkeeping that settles them needs no locks.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from queue import SimpleQueue
from typing import Any, Generic, TypeVar

from optisync.optimove.client import OptimoveClient
from optisync.optimove.outcome import Delivery, Endpoint

T = TypeVar("T")  # what the caller settles each answer against
Handler = Callable[[T, Delivery | None, BaseException | None], None]


class Sender(Generic[T]):
    """Runs sends on a thread pool with a bounded number in flight; results settle in order
    of completion on the calling thread."""

    def __init__(self, client: OptimoveClient, workers: int) -> None:
        self.client = client
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="optisync-send")
        self.limit = workers * 2
        self.inflight: dict[Future[Delivery], T] = {}
        self.finished: SimpleQueue[Future[Delivery]] = SimpleQueue()

    def submit(self, endpoint: Endpoint, body: Any, tag: T) -> None:
        future = self.pool.submit(self.client.send, endpoint, body)
        self.inflight[future] = tag
        # Each finished send queues itself: waiting on the queue costs one lock, where
        # waiting on every send in flight sets up a waiter on each of them, every time.
        future.add_done_callback(self.finished.put)

    def settle(self, handle: Handler[T], *, all_: bool = False) -> None:
        """Hand finished sends to ``handle`` until there is room (``all_``: until none is
        left). A stop signal waits until the answers in hand are recorded: once a send
        leaves ``inflight``, only ``handle`` can journal or dead-letter it."""
        while self.inflight and (all_ or len(self.inflight) >= self.limit):
            # Held from the moment a send leaves the queue: a signal landing between taking
            # it and recording it would leave it in flight with its completion consumed,
            # and the final drain would wait for it forever.
            with SIGNALS.held():
                done = [self.finished.get()]
                while not self.finished.empty():
                    done.append(self.finished.get())
                for future in done:
                    tag = self.inflight.pop(future)
                    exc = future.exception()
                    handle(tag, None if exc else future.result(), exc)
            if not all_:  # finishing runs to the end whatever arrives
                SIGNALS.check()

    def close(self) -> None:
        """Wait for the sends still running; the client stays open (its owner closes it)."""
        self.pool.shutdown(wait=True, cancel_futures=False)


class Signals:
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


SIGNALS = Signals()  # one per process, like the signal handlers it stands behind


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (systemd, kill) stops a run the same careful way as Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, SIGNALS.handler)
        for sig in (signal.SIGTERM, signal.SIGINT)
        if signal.getsignal(sig) is not signal.SIG_IGN  # nohup'd or backgrounded: keep it so
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        SIGNALS.pending = False
