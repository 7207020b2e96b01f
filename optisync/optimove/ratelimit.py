"""Client-side rate limiting: stay inside Optimove's sliding-window quotas.

Optimove counts request *arrivals* per API key in a sliding window (see ``limits``). A 429
costs a backoff, so the client keeps below the quota instead of discovering it.

The limiter works with *permits*. ``acquire()`` blocks until a send is allowed and returns a
:class:`Permit`; the caller sends the request and releases the permit once the response
(or the error) is in. A permit occupies its slot while in flight and for ``per_seconds``
after its release. The release time is an upper bound of when the server saw the request,
and the next acquisition is a lower bound of when the server sees the next one, so no
window of ``per_seconds`` at the server can hold more than ``requests`` arrivals, whatever
the latency, connection set-up time or scheduling delay. ``margin`` adds a few
milliseconds on top for clock granularity.

There is one algorithm, :class:`RateLimiter`, and two places to keep its slots: in memory
(:class:`MemorySlots`, one process) or in a locked file that every optisync process using
the same API key shares (:class:`optisync.optimove.quota.FileSlots`). A slot is a pair
``[id, stamp]``: a released slot is stamped with its release time; a slot in flight is
stamped ``hold`` seconds ahead, so that the slot of a process killed mid-request frees itself
after at most ``hold + per_seconds`` (in memory nobody can die holding one, and ``hold`` is
infinite).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from typing import Self

    from optisync.config.models import RateLimit

# Below this a computed wait is float noise, not time worth sleeping (the margin covers it).
_EPSILON = 1e-9

#: One slot: ``[id, stamp]`` (a list, so that it survives a JSON round trip unchanged).
Slot = list[Any]


class Permit:
    """One granted send. Release it when the response arrives; ``with`` does it for you.

    Releasing twice is harmless.
    """

    __slots__ = ("_lock", "_on_release", "_released")

    def __init__(self, on_release: Callable[[], None] | None = None) -> None:
        self._on_release = on_release
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        if self._on_release is not None:
            self._on_release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Limiter(Protocol):
    """What the client needs from a rate limiter."""

    def acquire(self) -> Permit:
        """Block until one more request may be sent; return its permit."""
        ...


class UnlimitedLimiter:
    """A limiter that never waits (the events gateway when no limit is configured)."""

    def acquire(self) -> Permit:
        return Permit()

    def __repr__(self) -> str:
        return "UnlimitedLimiter()"


class AllOf:
    """Every one of ``limiters`` at once, taken in the order given (so two callers never
    wait on each other crosswise): an endpoint under several quotas."""

    def __init__(self, *limiters: Limiter) -> None:
        self.limiters = limiters

    def acquire(self) -> Permit:
        held: list[Permit] = []
        try:
            for limiter in self.limiters:
                held.append(limiter.acquire())
        except BaseException:
            for permit in held:
                permit.release()
            raise

        def release() -> None:
            for permit in reversed(held):
                permit.release()

        return Permit(release)

    def __repr__(self) -> str:
        return f"AllOf{self.limiters!r}"


class SlotStore(Protocol):
    """Where a :class:`RateLimiter` keeps its slots."""

    def session(self) -> AbstractContextManager[list[Slot]]:
        """The slots, locked against every other user of the store; changes are kept."""
        ...

    def mark(self) -> int:
        """Inside a session: a number that every later :meth:`released` changes."""
        ...

    def released(self) -> None:
        """Inside the session that released a slot."""
        ...

    def wait_for_release(self, mark: int, at_most: float, sleep: Callable[[float], None]) -> None:
        """Wait ``at_most`` seconds or less for a release after ``mark``; the limiter looks
        again either way. A store that cannot be notified polls with ``sleep``."""
        ...


class MemorySlots:
    """Slots of one process, under a condition variable that wakes waiters on a release."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._slots: list[Slot] = []
        self._releases = 0

    @contextmanager
    def session(self) -> Iterator[list[Slot]]:
        with self._cond:
            yield self._slots

    def mark(self) -> int:
        return self._releases

    def released(self) -> None:
        self._releases += 1
        self._cond.notify_all()

    def wait_for_release(self, mark: int, at_most: float, sleep: Callable[[float], None]) -> None:
        with self._cond:
            self._cond.wait_for(
                lambda: self._releases != mark, None if math.isinf(at_most) else at_most
            )


class RateLimiter:
    """Thread-safe limiter: at most ``requests`` sends per sliding ``per_seconds`` window.

    Args:
        requests: sends allowed per window.
        per_seconds: window length in seconds.
        clock: clock in seconds (injected by tests); it must mean the same to every user
            of ``store``.
        sleep: how to wait (injected by tests).
        margin: extra seconds a slot stays taken after its window, against clock jitter.
        store: where the slots are kept; a fresh :class:`MemorySlots` by default.
        hold: how long a slot in flight counts as taken if it is never released.
    """

    def __init__(
        self,
        requests: int,
        per_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        margin: float = 0.005,
        store: SlotStore | None = None,
        hold: float = math.inf,
    ) -> None:
        if requests < 1:
            raise ValueError("requests must be at least 1")
        if per_seconds <= 0:
            raise ValueError("per_seconds must be positive")
        if margin < 0:
            raise ValueError("margin must not be negative")
        if hold <= 0:
            raise ValueError("hold must be positive")
        self.requests = requests
        self.per_seconds = per_seconds
        self.margin = margin
        self.hold = hold
        self._clock = clock
        self._sleep = sleep
        self._store: SlotStore = store if store is not None else MemorySlots()

    @classmethod
    def from_config(
        cls,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> RateLimiter:
        return cls(limit.requests, limit.per_seconds, clock=clock, sleep=sleep)

    def acquire(self) -> Permit:
        """Block until a slot is free, take it, and return its permit."""
        slot_id = os.urandom(8).hex()  # unique among every process sharing the store
        store = self._store
        while True:
            with store.session() as slots:
                now = self._clock()
                # A slot counts until a window after its stamp (in flight: stamped ahead).
                tail = self.per_seconds + self.margin
                slots[:] = [s for s in slots if float(s[1]) + tail - now > _EPSILON]
                if len(slots) < self.requests:
                    slots.append([slot_id, now + self.hold])
                    return Permit(lambda: self._release(slot_id))
                soonest = min(float(s[1]) for s in slots)
                wait = soonest + tail - now
                mark = store.mark()
            if soonest > now:  # every slot is in flight: only a release frees one
                store.wait_for_release(mark, wait, self._sleep)
            else:
                self._sleep(wait)

    def _release(self, slot_id: str) -> None:
        with self._store.session() as slots:
            now = self._clock()
            for slot in slots:
                if slot[0] == slot_id:
                    slot[1] = now
            self._store.released()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.requests}, {self.per_seconds})"
