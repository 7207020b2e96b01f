"""Delivery from the spool through the push engine, in process, against the sandbox."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from optisync.commands.realtime import build_client
from optisync.config import load_config
from optisync.realtime.deadletter import DeadLetterStore
from optisync.sandbox import Faults, Sandbox, SandboxConfig
from optisync.serve.metrics import ServeMetrics
from optisync.serve.service import Delivery
from optisync.serve.spool import Spool
from tests.support import serve_config, tier_or_redemption

KEY, TOKEN = "deliver-key", "deliver-token"


def line(event: dict[str, object]) -> bytes:
    return json.dumps(event).encode()


def wait_for(condition: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Sandbox, Spool, Delivery, ServeMetrics, DeadLetterStore]]:
    monkeypatch.setenv("OPTIMOVE_API_KEY", KEY)
    monkeypatch.setenv("OPTIMOVE_EVENTS_TOKEN", TOKEN)
    config_box = SandboxConfig(api_key=KEY, tenant_id=1234, events_token=TOKEN)
    with Sandbox(config_box) as box:
        path = tmp_path / "optisync.yaml"
        path.write_text(serve_config(box.url, tmp_path))
        config = load_config(path)
        spool = Spool(tmp_path / "spool", 1 << 20)
        store = DeadLetterStore(tmp_path / "dl")
        metrics = ServeMetrics()
        delivery = Delivery(
            config,
            spool,
            store=store,
            client_factory=lambda: build_client(config),
            metrics=metrics,
            new_run_id=lambda: "run",
            config_hash="test",
            pause_after_stop=0.2,
        )
        delivery.start()
        try:
            yield box, spool, delivery, metrics, store
        finally:
            delivery.stop()
            delivery.join(30)
            assert not delivery.alive


def test_each_outcome_leaves_the_spool_and_is_counted(
    running: tuple[Sandbox, Spool, Delivery, ServeMetrics, DeadLetterStore],
) -> None:
    box, spool, delivery, metrics, store = running
    unrouted = {**tier_or_redemption(2, False), "id": "u-2", "type": "PURCHASE"}
    unrouted["data"] = {"purchase_id": "P1", "amount": 10, "currency": "USD"}
    spool.put([line(tier_or_redemption(1, False)), line(unrouted)])
    wait_for(lambda: len(box.received("events")) == 1)
    wait_for(lambda: spool.messages == 1)  # the tier change's attributes wait in their pack
    delivery.stop()
    delivery.join(30)
    assert spool.empty() and not list(spool.dir.glob("*.ndjson"))
    assert metrics.delivered._value.get() == 1
    settled = {
        s.labels["outcome"]: s.value
        for s in metrics.settled.collect()[0].samples
        if s.name.endswith("_total")
    }
    assert settled.get("sent") == 1
    assert settled.get("unrouted", 0) + settled.get("invalid", 0) == 1
    assert metrics.latency._sum.get() > 0


def test_an_outage_letters_what_was_held_then_delivery_resumes(
    running: tuple[Sandbox, Spool, Delivery, ServeMetrics, DeadLetterStore],
) -> None:
    box, spool, delivery, metrics, store = running
    box.set_faults(Faults(error_rate=1.0))
    # enough to fill the sends in flight, so the failures are settled without more input
    spool.put([line(tier_or_redemption(i, False)) for i in range(20)])
    wait_for(lambda: metrics.dead_lettered._value.get() >= 1)
    assert store.count() >= 1
    box.set_faults(Faults())
    spool.put([line(tier_or_redemption(100, False))])

    def event_ids() -> list[str]:
        bodies = [r["body"] for r in box.received("events")]
        return [
            e["context"]["message_id"] for b in bodies for e in (b if isinstance(b, list) else [b])
        ]

    # the stopped run ended and a new one, after the pause, took the rest of the spool
    wait_for(lambda: "t-100" in event_ids())
    delivery.stop()
    delivery.join(30)
    ids = event_ids()
    assert spool.empty()
    # every message is either delivered or a letter: none is lost, none is both
    lettered = {letter.message_id for _, letter in store.iter_letters()}
    assert {f"t-{i}" for i in range(20)} <= lettered | set(ids)


def test_the_client_observer_counts_429s_and_quota_waits() -> None:
    from optisync.optimove.outcome import Endpoint, Outcome

    metrics = ServeMetrics()
    endpoint = Endpoint.UPDATE_CUSTOMER_ATTRIBUTES
    metrics.attempt(endpoint, 0.0, Outcome("rate_limited", 429))
    metrics.attempt(endpoint, 0.5, Outcome("delivered", 202))
    assert metrics.rate_limited.labels(endpoint.value)._value.get() == 1
    assert metrics.quota_waits.labels(endpoint.value)._value.get() == 1
    assert metrics.quota_wait_seconds.labels(endpoint.value)._value.get() == 0.5


def test_the_client_tells_its_observer_of_every_attempt() -> None:
    import httpx

    from optisync.optimove.client import OptimoveClient
    from optisync.optimove.outcome import Endpoint
    from tests.support import make_settings, no_sleep

    answers = iter([httpx.Response(429), httpx.Response(202, json={})])
    client = OptimoveClient(
        make_settings(),
        transport=httpx.MockTransport(lambda request: next(answers)),
        sleep=no_sleep,
    )
    seen: list[tuple[str, int | None]] = []
    client.observer = lambda endpoint, waited, outcome: seen.append(
        (endpoint.value, outcome.status)
    )
    delivery = client.send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, [{"customerId": "1"}])
    assert delivery.ok
    path = "/Customers/UpdateCustomerAttributes"
    assert seen == [(path, 429), (path, 202)]
