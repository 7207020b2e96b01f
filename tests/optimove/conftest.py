"""Shared helpers for the Optimove client tests: a fake clock and a MockTransport client."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from optisync.config.models import OptimoveSettings
from optisync.optimove.client import OptimoveClient

API_KEY = "key-SECRET-0123456789abcdef"
EVENTS_TOKEN = "token-SECRET-fedcba9876543210"
API_URL = "https://api4.optimove.test"
EVENTS_URL = "https://gateway.optimove.test/reportEvent"

Handler = Callable[[httpx.Request], httpx.Response]


class FakeClock:
    """A monotonic clock that only moves when something sleeps on it (or a test advances it)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_settings(**overrides: Any) -> OptimoveSettings:
    data: dict[str, Any] = {
        "api_url": API_URL,
        "events_url": EVENTS_URL,
        "tenant_id": 42,
        "api_key": API_KEY,
        "events_token": EVENTS_TOKEN,
    }
    data.update(overrides)
    return OptimoveSettings.model_validate(data)


class Recorder:
    """A MockTransport handler that replays scripted answers and keeps every request."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        request.read()
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer


@pytest.fixture
def make_client(clock: FakeClock) -> Iterator[Callable[..., OptimoveClient]]:
    clients: list[OptimoveClient] = []

    def factory(handler: Handler, **settings: Any) -> OptimoveClient:
        client = OptimoveClient(
            make_settings(**settings),
            transport=httpx.MockTransport(handler),
            sleep=clock.sleep,
            clock=clock,
        )
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()
