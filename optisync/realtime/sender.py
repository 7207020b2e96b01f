"""Sending packs through the Optimove client on a small thread pool, and the one queue a
run's thread waits on.

The calling thread plans and settles; the pool only does network I/O, with a bounded
number of requests in flight so memory stays flat whatever the input size. Answers are
handed back on the calling thread, so the bookkeeping that settles them needs no locks.
``Inbox`` reads the input on a thread of its own, so the calling thread can wake for a
finished send or a deadline while the input has nothing to give.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from queue import Empty, SimpleQueue
from typing import Any, Generic, TypeVar

from optisync.optimove.client import OptimoveClient
from optisync.optimove.outcome import Delivery, Endpoint
from optisync.realtime.batching import FULL_SEND, send_slots

T = TypeVar("T")  # what the caller settles each answer against
Handler = Callable[[T, Delivery | None, BaseException | None], None]
Item = TypeVar("Item")  # an input item


def in_flight_bound(workers: int) -> int:
    """Slots for the sends submitted and not yet settled: two full-size sends per worker
    (see ``send_slots``), enough to keep every worker busy while answers are settled, few
    enough that memory stays flat."""
    return workers * 2 * FULL_SEND


class Sender(Generic[T]):
    """Runs sends on a thread pool with a bounded number in flight; results settle in order
    of completion on the calling thread. ``wake``, if given, is called (on a worker) as
    each send finishes."""

    def __init__(
        self, client: OptimoveClient, workers: int, wake: Callable[[], None] | None = None
    ) -> None:
        self.client = client
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="optisync-send")
        self.limit = in_flight_bound(workers)
        self.inflight: dict[Future[Delivery], T] = {}
        self._slots: dict[Future[Delivery], int] = {}
        self.used = 0  # slots held by the sends in flight
        self.finished: SimpleQueue[Future[Delivery]] = SimpleQueue()
        self.wake = wake

    @property
    def room(self) -> int:
        """Slots free now: a send may be submitted while there are any."""
        return self.limit - self.used

    def submit(self, endpoint: Endpoint, body: Any, tag: T) -> None:
        # a stop signal waits until the send is on the books whole: in flight, with its
        # slots, or not submitted at all
        with SIGNALS.held():
            future = self.pool.submit(self.client.send, endpoint, body)
            self.inflight[future] = tag
            self._slots[future] = slots = send_slots(endpoint)
            self.used += slots
            # Each finished send queues itself: waiting on the queue costs one lock, where
            # waiting on every send in flight sets up a waiter on each of them, every time.
            future.add_done_callback(self._done)
        SIGNALS.check()

    def _done(self, future: Future[Delivery]) -> None:
        self.finished.put(future)
        if self.wake is not None:
            self.wake()

    def settle_done(self, handle: Handler[T]) -> int:
        """Hand every send already finished to ``handle``, without waiting; how many."""
        n = 0
        while not self.finished.empty():
            with SIGNALS.held():  # see settle: from the queue to the books, uninterrupted
                future = self.finished.get()
                tag = self._pop(future)
                n += 1
                exc = future.exception()
                handle(tag, None if exc else future.result(), exc)
        SIGNALS.check()
        return n

    def finish(self, handle: Handler[T] | None) -> None:
        """Wait for every send still in flight and settle it (``handle`` None: record
        nothing more, e.g. once storage failed), then close the pool and the client.

        Waits on the sends themselves, not on the queue, so an answer taken from the queue
        and never recorded cannot hang it; a stop signal cannot cut it short either."""
        try:
            with SIGNALS.held():
                while handle is not None and self.inflight:
                    future = next(iter(self.inflight))
                    exc = future.exception()  # waits for it
                    tag = self._pop(future)
                    handle(tag, None if exc else future.result(), exc)
        finally:
            self.close()
            self.client.close()

    def _pop(self, future: Future[Delivery]) -> T:
        self.used -= self._slots.pop(future)
        return self.inflight.pop(future)

    def settle(self, handle: Handler[T], *, all_: bool = False) -> None:
        """Hand finished sends to ``handle`` until there is room (``all_``: until none is
        left). A stop signal waits until the answers in hand are recorded: once a send
        leaves ``inflight``, only ``handle`` can journal or dead-letter it."""
        while self.inflight and (all_ or self.room <= 0):
            # Held from the moment a send leaves the queue: a signal landing between taking
            # it and recording it would leave it in flight with its completion consumed,
            # and the final drain would wait for it forever.
            with SIGNALS.held():
                done = [self.finished.get()]
                while not self.finished.empty():
                    done.append(self.finished.get())
                for future in done:
                    tag = self._pop(future)
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


class Inbox(Generic[Item]):
    """The one queue a run's thread waits on: input items, read on a thread of their own
    at most ``bound`` ahead of the run (memory stays flat), the end of the input, and the
    wake-ups of finished sends. The run calls ``took`` once it dealt with an item.

    ``get`` returns ``(ITEM, item)``, ``(END, None or the reader's exception)``,
    ``(WAKE, None)``, or None when ``timeout`` passed first.
    """

    ITEM, END, WAKE = 0, 1, 2

    def __init__(self, bound: int = 256) -> None:
        self.queue: SimpleQueue[tuple[int, Any]] = SimpleQueue()
        self.bound = bound
        self.read = 0  # written by the reader only
        self.taken = 0  # written by the run's thread only
        self.room = threading.Event()
        self.closed = False

    def start(self, items: Iterable[Item]) -> None:
        # A daemon: an input that blocks (a pipe kept open) must not keep the process alive
        # once the run ended.
        threading.Thread(
            target=self._read, args=(items,), name="optisync-read", daemon=True
        ).start()

    def _read(self, items: Iterable[Item]) -> None:
        try:
            for item in items:
                while self.read - self.taken >= self.bound and not self.closed:
                    self.room.clear()
                    if self.read - self.taken >= self.bound:
                        self.room.wait(0.05)
                if self.closed:
                    return
                self.read += 1
                self.queue.put((self.ITEM, item))
        except BaseException as exc:  # handed to the run's thread, raised there
            if not self.closed:
                self.queue.put((self.END, exc))
            return
        self.queue.put((self.END, None))

    def wake(self) -> None:
        self.queue.put((self.WAKE, None))

    def get(self, timeout: float | None) -> tuple[int, Any] | None:
        try:
            event = self.queue.get(timeout=timeout)
        except Empty:
            return None
        return event

    def took(self) -> None:
        """One item handed out by ``get`` is dealt with: the reader may read one more."""
        self.taken += 1
        if not self.room.is_set():  # the reader cleared it and may wait: wake it
            self.room.set()

    def close(self) -> None:
        """Stop reading: the reader ends at its next item."""
        self.closed = True
        self.room.set()


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


def stoppable(
    run: Callable[[], None], *, interrupted: Callable[[], None], finish: Callable[[], None]
) -> None:
    """Run ``run`` with SIGTERM and Ctrl-C as a careful stop, the one way push and replay
    stop: ``interrupted`` notes it, ``finish`` (which settles what is in flight) always
    runs, and any other exception goes on after it."""
    with sigterm_as_interrupt():
        try:
            run()
        except KeyboardInterrupt:
            interrupted()
        finally:
            finish()
