"""Unsubscribers: packed per brand up to 200 addresses a call, within the unsubscribe
endpoints' own caps (10 calls in flight, 600 a minute) and the general quota."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from optisync.optimove.client import OptimoveClient
from optisync.optimove.limits import MAX_UNSUBSCRIBERS_PER_CALL, UNSUBSCRIBE_PARALLEL
from optisync.optimove.outcome import Endpoint
from optisync.optimove.ratelimit import Permit
from optisync.realtime.batching import Batcher, Pack
from optisync.realtime.deadletter import Kind
from optisync.realtime.plan import Part
from optisync.sandbox import Sandbox, SandboxConfig
from tests.support import config_yaml, invoke, make_settings

KEY = "sandbox-key-unsub"
TOKEN = "sandbox-token-unsub"
BRAND = 7


def opt_out(address: str, brand: int = BRAND) -> Part:
    body = {"BrandId": brand, "EmailAddresses": [address]}
    return Part(Kind.OPT_IN, Endpoint.ADD_UNSUBSCRIBERS, body, "opt_in")


def opt_back_in(address: str, brand: int = BRAND) -> Part:
    body = {"BrandId": brand, "EmailAddress": address}
    return Part(Kind.OPT_IN, Endpoint.DELETE_UNSUBSCRIBERS, body, "opt_in")


def add_all(batcher: Batcher[int], parts: list[Part]) -> list[Pack[int]]:
    ready = [pack for n, part in enumerate(parts) for pack in batcher.add(n, part)]
    return ready + list(batcher.drain())


# -- packing -----------------------------------------------------------------------------


def test_opt_outs_pack_per_brand_up_to_the_address_cap() -> None:
    parts = [opt_out(f"m{i}@example.com") for i in range(450)] + [opt_out("x@example.com", 8)]
    packs = add_all(Batcher(1), parts)
    shapes = [(p.seal()["BrandId"], len(p.sent["EmailAddresses"])) for p in packs]
    assert sorted(shapes) == [(7, 50), (7, 200), (7, 200), (8, 1)]
    assert MAX_UNSUBSCRIBERS_PER_CALL == 200


def test_an_address_is_sent_once_per_call_and_each_member_keeps_its_own_slice() -> None:
    parts = [opt_out("a@example.com"), opt_out("A@Example.com"), opt_out("b@example.com")]
    (pack,) = add_all(Batcher(1), parts)
    assert pack.seal() == {"BrandId": BRAND, "EmailAddresses": ["a@example.com", "b@example.com"]}
    assert len(pack.items) == 3  # every message is settled by the call
    # a failed call's letters hold each member's own address, safe to replay alone
    assert [pack.letter_request(part) for _, part in pack.items] == [p.body for p in parts]


def test_a_re_subscription_leaves_after_the_waiting_opt_out_of_the_same_address() -> None:
    batcher: Batcher[int] = Batcher(1)
    assert batcher.add(0, opt_out("a@example.com")) == []
    assert len(batcher.add(1, opt_back_in("b@example.com"))) == 1  # another address: alone
    ready = batcher.add(2, opt_back_in("A@example.com"))
    assert [p.endpoint for p in ready] == [
        Endpoint.ADD_UNSUBSCRIBERS,
        Endpoint.DELETE_UNSUBSCRIBERS,
    ]
    assert list(batcher.drain()) == []


# -- the caps ----------------------------------------------------------------------------


def test_unsubscribe_calls_stay_within_ten_in_flight() -> None:
    lock = threading.Lock()
    now = peak = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
        time.sleep(0.02)
        with lock:
            now -= 1
        return httpx.Response(200, json={"Error": None})

    settings = make_settings(rate_limit={"requests": 1000, "per_seconds": 1})
    client = OptimoveClient(settings, transport=httpx.MockTransport(handler))
    body = {"BrandId": BRAND, "EmailAddresses": ["a@example.com"]}
    threads = [
        threading.Thread(target=client.send, args=(Endpoint.ADD_UNSUBSCRIBERS, body))
        for _ in range(40)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    assert peak == UNSUBSCRIBE_PARALLEL


class Counting:
    """A limiter that never waits and counts its permits."""

    def __init__(self) -> None:
        self.taken = 0

    def acquire(self) -> Permit:
        self.taken += 1
        return Permit()


def test_unsubscribe_calls_take_their_own_caps_and_the_general_quota() -> None:
    general, own = Counting(), Counting()
    client = OptimoveClient(
        make_settings(),
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"Error": None})),
        general_limiter=general,
        unsubscribe_limiter=own,
    )
    client.send(Endpoint.DELETE_UNSUBSCRIBERS, {"BrandId": 1, "EmailAddress": "a@example.com"})
    client.send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, {"CustomerNewAttributesValuesList": []})
    client.close()
    assert (own.taken, general.taken) == (1, 2)


# -- end to end --------------------------------------------------------------------------


@pytest.fixture
def box() -> Iterator[Sandbox]:
    config = SandboxConfig(api_key=KEY, tenant_id=1234, events_token=TOKEN)
    with Sandbox(config) as sandbox:
        yield sandbox


def test_450_opt_outs_are_three_calls_at_the_sandbox(
    box: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTIMOVE_API_KEY", KEY)
    monkeypatch.setenv("OPTIMOVE_EVENTS_TOKEN", TOKEN)
    config = tmp_path / "optisync.yaml"
    config.write_text(
        config_yaml(
            box.url,
            dead_letters=tmp_path / "dl",
            optimove={"opt_in": {"method": "unsubscribe_list", "brand_id": BRAND}},
            routing={"rules": [{"types": ["OPT_IN_EMAIL"], "to": ["opt_in"]}]},
        ),
        encoding="utf-8",
    )
    lines = [
        {
            "id": f"o-{i}",
            "type": "OPT_IN_EMAIL",
            "member_id": f"M{i}",
            "email": f"m{i}@example.com",
            "occurred_at": "2026-11-25T10:00:00Z",
            "data": {"opted_in": False},
        }
        for i in range(450)
    ]
    source = tmp_path / "opt-outs.ndjson"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    result = invoke("--json", "--config", str(config), "push-event", "--input", str(source))
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["requests"]) == (450, 3)
    calls = box.received("unsubscribe")
    assert sorted(len(call["body"]["EmailAddresses"]) for call in calls) == [50, 200, 200]
    sent = {a for call in calls for a in call["body"]["EmailAddresses"]}
    assert sent == {line["email"] for line in lines}
