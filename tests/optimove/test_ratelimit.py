from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from optisync.optimove.quota import FileSlots
from optisync.optimove.ratelimit import Permit, RateLimiter, UnlimitedLimiter
from tests.support import FakeClock

MakeLimiter = Callable[..., RateLimiter]


@pytest.fixture(params=["memory", "file"])
def limiter(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> MakeLimiter:
    """One algorithm, either slot store: every test using this runs against both."""

    def make(requests: int, per_seconds: float, **kwargs: Any) -> RateLimiter:
        if request.param == "file":
            kwargs.update(store=FileSlots(tmp_path / "slots.json"), hold=60.0)
        return RateLimiter(requests, per_seconds, clock=clock, sleep=clock.sleep, **kwargs)

    return make


def assert_never_more_than(n: int, window: float, times: list[float]) -> None:
    """No half-open window of ``window`` seconds holds more than ``n`` of ``times``."""
    ordered = sorted(times)
    for i in range(len(ordered) - n):
        assert ordered[i + n] - ordered[i] >= window, (i, ordered[i], ordered[i + n])


def test_first_n_acquisitions_do_not_wait(clock: FakeClock, limiter: MakeLimiter) -> None:
    limit = limiter(3, 10.0)
    for _ in range(3):
        limit.acquire().release()
    assert clock.sleeps == []


def test_next_acquisition_sleeps_until_the_window_plus_margin(
    clock: FakeClock, limiter: MakeLimiter
) -> None:
    limit = limiter(2, 10.0, margin=0.005)
    limit.acquire().release()
    clock.advance(4.0)
    limit.acquire().release()
    limit.acquire().release()
    # The first slot frees at 0 + 10 + 0.005; it is now 4.0.
    assert clock.sleeps == [pytest.approx(6.005)]
    limit.acquire().release()
    # The second slot frees at 4 + 10.005; it is now 10.005.
    assert clock.sleeps[1] == pytest.approx(4.0)


def test_sequential_acquisitions_never_exceed_n_per_window(
    clock: FakeClock, limiter: MakeLimiter
) -> None:
    limit = limiter(5, 10.0)
    times = []
    for i in range(60):
        with limit.acquire():
            times.append(clock())
        clock.advance(0.3 * (i % 4))  # uneven gaps between sends
    assert_never_more_than(5, 10.0, times)
    # It does not over-throttle: 60 sends at 5 per ~10 s take about 11 windows.
    assert clock() < 12 * 10.1


def test_many_threads_never_exceed_n_per_window(clock: FakeClock, limiter: MakeLimiter) -> None:
    limit = limiter(4, 1.0)
    times: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            with limit.acquire():
                with lock:
                    times.append(clock())
                clock.advance(0.01)  # the request takes a little time

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert len(times) == 40
    assert_never_more_than(4, 1.0, times)


def test_window_counts_from_release_so_slow_requests_cannot_overlap(
    clock: FakeClock, limiter: MakeLimiter
) -> None:
    limit = limiter(1, 1.0, margin=0.0)
    with limit.acquire():
        clock.advance(0.7)  # answer arrives 0.7 s after the send
    limit.acquire().release()
    assert clock.sleeps == [pytest.approx(1.0)]


def test_in_flight_permits_hold_their_slots_until_released() -> None:
    limiter = RateLimiter(2, 0.01)
    held = [limiter.acquire(), limiter.acquire()]
    got = threading.Event()

    def third() -> None:
        limiter.acquire().release()
        got.set()

    t = threading.Thread(target=third)
    t.start()
    assert not got.wait(0.1)  # both slots in flight: blocked, not spinning through
    for p in held:
        p.release()
    assert got.wait(2.0)
    t.join()


def test_real_clock_threads_stay_within_the_limit() -> None:
    limiter = RateLimiter(3, 0.2)
    times: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(3):
            with limiter.acquire(), lock:
                times.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert len(times) == 9
    assert_never_more_than(3, 0.2, times)


def test_permit_release_is_idempotent(clock: FakeClock, limiter: MakeLimiter) -> None:
    limit = limiter(1, 1.0)
    permit = limit.acquire()
    permit.release()
    permit.release()
    clock.advance(2.0)
    limit.acquire().release()
    assert clock.sleeps == []


def test_unlimited_limiter_never_waits() -> None:
    limiter = UnlimitedLimiter()
    for _ in range(1000):
        assert isinstance(limiter.acquire(), Permit)


@pytest.mark.parametrize(
    ("requests", "per_seconds", "margin"), [(0, 1.0, 0.0), (1, 0.0, 0.0), (1, 1.0, -1.0)]
)
def test_invalid_limits_are_refused(requests: int, per_seconds: float, margin: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter(requests, per_seconds, margin=margin)
