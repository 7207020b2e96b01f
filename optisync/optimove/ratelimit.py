"""Client-side rate limiting: stay inside Optimove's sliding-window quotas.

Optimove counts request *arrivals* per API key in a sliding window (50 requests / 10 s for
the REST API, 10 / 1 s for SendTransactionalMail; optimove-api.md §7.1). A 429 costs a
backoff, so the client keeps below the quota instead of discovering it.

The limiter works with *permits*. ``acquire()`` blocks until a send is allowed and returns a
:class:`Permit`; the caller sends the request and releases the permit once the response
(or the error) is in. A permit occupies its slot while in flight and for ``per_seconds``
after its release. The release time is an upper bound of when the server saw the request,
and the next acquisition is a lower bound of when the server sees the next one, so no
window of ``per_seconds`` at the server can hold more than ``requests`` arrivals, whatever
the latency, connection set-up time or scheduling delay. ``margin`` adds a few
milliseconds on top for clock granularity.

:class:`Limiter` is the protocol the client depends on, so a later implementation can keep
the stamps in a shared, locked file (one quota per API key across processes) without
touching the client. Such an implementation should also expire permits whose holder died.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from typing import Self

    from optisync.config.models import RateLimit

# Below this a computed wait is float noise, not time worth sleeping (the margin covers it).
_EPSILON = 1e-9


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


class RateLimiter:
    """Thread-safe limiter: at most ``requests`` sends per sliding ``per_seconds`` window.

    Args:
        requests: sends allowed per window.
        per_seconds: window length in seconds.
        clock: monotonic clock in seconds (injected by tests).
        sleep: how to wait (injected by tests).
        margin: extra seconds a slot stays taken after its window, against clock jitter.
    """

    def __init__(
        self,
        requests: int,
        per_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        margin: float = 0.005,
    ) -> None:
        if requests < 1:
            raise ValueError("requests must be at least 1")
        if per_seconds <= 0:
            raise ValueError("per_seconds must be positive")
        if margin < 0:
            raise ValueError("margin must not be negative")
        self.requests = requests
        self.per_seconds = per_seconds
        self.margin = margin
        self._clock = clock
        self._sleep = sleep
        self._cond = threading.Condition()
        self._in_flight = 0
        # Times at which released slots become free again, in release order (non-decreasing).
        self._frees_at: deque[float] = deque()

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
        while True:
            with self._cond:
                now = self._clock()
                while self._frees_at and self._frees_at[0] - now <= _EPSILON:
                    self._frees_at.popleft()
                if self._in_flight + len(self._frees_at) < self.requests:
                    self._in_flight += 1
                    return Permit(self._release)
                if not self._frees_at:
                    # Every slot is in flight; only a release can free one.
                    self._cond.wait()
                    continue
                wait = self._frees_at[0] - now
            self._sleep(wait)

    def _release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._frees_at.append(self._clock() + self.per_seconds + self.margin)
            self._cond.notify_all()

    def __repr__(self) -> str:
        return f"RateLimiter({self.requests}, {self.per_seconds})"
