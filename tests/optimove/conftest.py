"""Fixtures for the Optimove client tests: a fake clock and clients on a MockTransport."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from optisync.optimove.client import OptimoveClient
from tests.support import FakeClock, Handler, make_settings


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


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
