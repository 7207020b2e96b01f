"""The sandbox, exercised over real HTTP on 127.0.0.1 with httpx."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from optisync.sandbox import Faults, Sandbox, SandboxConfig, serve
from tests.support import invoke

KEY = "test-key-0123456789"
TOKEN = "events-token-abcdef"
TENANT = 1234


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tenant": TENANT,
        "event": "member_registration",
        "customer": "cust-1",
        "timestamp": "2024-05-27 10:30:00.000000 UTC",
        "context": {"tier": "gold", "points": 120, "is_new": True},
    }
    base.update(overrides)
    return base


def sign(raw: bytes, token: str = TOKEN) -> dict[str, str]:
    digest = hmac.new(token.encode(), raw, hashlib.sha256).hexdigest()
    return {"X-Optimove-Signature-Version": "1", "X-Optimove-Signature-Content": digest}


Factory = Callable[..., Sandbox]


@pytest.fixture
def make_sandbox() -> Iterator[Factory]:
    started: list[Sandbox] = []

    def make(**overrides: Any) -> Sandbox:
        settings: dict[str, Any] = {"api_key": KEY, "tenant_id": TENANT}
        settings.update(overrides)
        sandbox = Sandbox(SandboxConfig(**settings)).start()
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def sandbox(make_sandbox: Factory) -> Sandbox:
    return make_sandbox()


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=sandbox.url, headers={"X-API-KEY": KEY}, timeout=5, verify=False
    ) as c:
        yield c


def client_for(sandbox: Sandbox, **headers: str) -> httpx.Client:
    # plain HTTP on loopback: verify=False only skips building a TLS context (slow)
    return httpx.Client(base_url=sandbox.url, headers=headers, timeout=5, verify=False)


# -- auth -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/reportEvent", "/Customers/UpdateCustomerAttributes", "/Integrations/GetPromotions"],
)
def test_missing_key_is_401_and_wrong_key_is_403(sandbox: Sandbox, path: str) -> None:
    method = "GET" if "Get" in path else "POST"
    with client_for(sandbox) as anonymous:
        missing = anonymous.request(method, path, json=event())
    with client_for(sandbox, **{"X-API-KEY": "nope"}) as wrong:
        bad = wrong.request(method, path, json=event())
    assert missing.status_code == 401
    assert bad.status_code == 403
    assert sandbox.received() == []
    assert sandbox.stats["unauthorized_401"] == 1
    assert sandbox.stats["forbidden_403"] == 1


def test_key_header_name_is_case_insensitive(sandbox: Sandbox) -> None:
    with client_for(sandbox, **{"x-api-key": KEY}) as lower:
        assert lower.get("/Integrations/GetPromotions").status_code == 200


def test_key_is_never_echoed_or_recorded(make_sandbox: Factory, tmp_path: Path) -> None:
    record = tmp_path / "received.jsonl"
    sandbox = make_sandbox(record_path=record, events_token=TOKEN)
    with client_for(sandbox, **{"X-API-KEY": KEY}) as c:
        raw = json.dumps(event()).encode()
        replies = [
            c.post("/reportEvent", content=raw, headers=sign(raw)),
            c.post("/reportEvent", content=raw),
            c.get("/_sandbox/received"),
        ]
    with client_for(sandbox, **{"X-API-KEY": "wrong-" + KEY}) as wrong:
        replies.append(wrong.get("/Integrations/GetPromotions"))
    for reply in replies:
        assert KEY not in reply.text
        assert TOKEN not in reply.text
    text = record.read_text()
    assert KEY not in text and TOKEN not in text
    assert KEY not in repr(sandbox.config) and TOKEN not in repr(sandbox.config)


# -- events -----------------------------------------------------------------------------


def test_single_event_is_accepted_and_recorded(sandbox: Sandbox, client: httpx.Client) -> None:
    reply = client.post("/reportEvent", json=event())
    assert reply.status_code == 200
    body = reply.json()
    assert body["status"] == "success"
    assert body["message"].isdigit()
    (record,) = sandbox.received("events")
    assert record["kind"] == "events"
    assert record["path"] == "/reportEvent"
    assert record["body"] == event()
    assert record["at"].startswith("20")
    assert sandbox.events_url == sandbox.url + "/reportEvent"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"tenant": TENANT + 1}, "tenantId is missing or invalid"),
        ({"tenant": str(TENANT)}, "tenantId is missing or invalid"),
        ({"timestamp": "2024-05-27T10:30:00Z"}, "timestamp must be"),
        ({"timestamp": "2024-05-27 10:30:00"}, "timestamp must be"),
        ({"timestamp": "2024-13-27 10:30:00 UTC"}, "not a real date"),
        ({"context": {f"p_{i}": i for i in range(51)}}, "too many parameters: 51"),
        ({"context": {"name": "x" * 256}}, "too long: 256"),
        ({"context": {"address": {"city": "Oslo"}}}, "must be a string, number or boolean"),
        ({"context": {"tags": ["a"]}}, "must be a string, number or boolean"),
        ({"context": {"TierName": "gold"}}, "'TierName' is not lowercase snake_case"),
        ({"context": {"tier name": "gold"}}, "is not lowercase snake_case"),
        ({"context": {"tier__name": "gold"}}, "is not lowercase snake_case"),
        ({"event": "MemberRegistration"}, "event name is missing or not lowercase snake_case"),
        ({"customer": ""}, "customer must be a non-empty string"),
        ({"customer": 42}, "customer must be a non-empty string"),
        ({"costumer": "typo"}, "unknown field(s): costumer"),
    ],
)
def test_invalid_event_is_rejected_with_reason(
    sandbox: Sandbox, client: httpx.Client, overrides: dict[str, Any], reason: str
) -> None:
    reply = client.post("/reportEvent", json=event(**overrides))
    assert reply.status_code == 400
    body = reply.json()
    assert body["status"] == "error"
    assert body["message"].startswith("Failed to validate the event with the following error - ")
    assert reason in body["message"]
    assert sandbox.received() == []


def test_event_without_customer_or_visitor_is_rejected(client: httpx.Client) -> None:
    ev = event()
    del ev["customer"]
    reply = client.post("/reportEvent", json=ev)
    assert reply.status_code == 400
    assert "either customer or visitor is required" in reply.json()["message"]


def test_nan_is_not_accepted(sandbox: Sandbox, client: httpx.Client) -> None:
    raw = json.dumps(event()).replace("120", "NaN").encode()
    reply = client.post("/reportEvent", content=raw)
    assert reply.status_code == 400
    assert "NaN" in reply.json()["message"]
    assert sandbox.received() == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"timestamp": "2024-05-27 10:30:00 UTC"},
        {"timestamp": "2024-05-27 17:32:06.094 UTC"},
        {"context": {f"p_{i}": i for i in range(50)}},
        {"context": {"name": "é" * 255, "amount": 12.5, "ok": False}},
        {"context": {}},
        {"customer": "c", "visitor": "v"},
    ],
)
def test_valid_event_variants_are_accepted(client: httpx.Client, overrides: dict[str, Any]) -> None:
    assert client.post("/reportEvent", json=event(**overrides)).status_code == 200


def test_visitor_only_event_is_accepted(client: httpx.Client) -> None:
    ev = event(visitor="vis-9")
    del ev["customer"]
    assert client.post("/reportEvent", json=ev).status_code == 200


def test_array_of_events_is_one_request(sandbox: Sandbox, client: httpx.Client) -> None:
    batch = [event(customer=f"c{i}") for i in range(3)]
    assert client.post("/reportEvent", json=batch).status_code == 200
    (record,) = sandbox.received("events")
    assert record["body"] == batch
    assert sandbox.stats["events"] == 3
    assert sandbox.stats["accepted_events"] == 1


def test_array_with_one_bad_event_is_rejected_whole(sandbox: Sandbox, client: httpx.Client) -> None:
    reply = client.post("/reportEvent", json=[event(), event(tenant=1)])
    assert reply.status_code == 400
    assert "event[1]: tenantId is missing or invalid" in reply.json()["message"]
    assert sandbox.received() == []


def test_more_than_50_events_is_rejected(client: httpx.Client) -> None:
    assert client.post("/reportEvent", json=[event()] * 50).status_code == 200
    reply = client.post("/reportEvent", json=[event()] * 51)
    assert reply.status_code == 400
    assert "too many events: 51" in reply.json()["message"]


def test_limits_off_lifts_caps_but_not_formats(make_sandbox: Factory) -> None:
    sandbox = make_sandbox(enforce_limits=False)
    with client_for(sandbox, **{"X-API-KEY": KEY}) as c:
        assert c.post("/reportEvent", json=[event()] * 51).status_code == 200
        big = event(context={"name": "x" * 300})
        assert c.post("/reportEvent", json=big).status_code == 200
        assert c.post("/reportEvent", json=event(tenant=1)).status_code == 400


# -- HMAC -------------------------------------------------------------------------------


def test_signed_event_is_accepted_without_api_key(make_sandbox: Factory) -> None:
    sandbox = make_sandbox(events_token=TOKEN)
    raw = json.dumps(event()).encode()
    with client_for(sandbox) as c:
        reply = c.post("/reportEvent", content=raw, headers=sign(raw))
        lower = {k.lower(): v for k, v in sign(raw).items()}
        again = c.post("/reportEvent", content=raw, headers=lower)
    assert reply.status_code == 200, reply.text
    assert again.status_code == 200
    assert len(sandbox.received("events")) == 2


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Optimove-Signature-Version": "1"},
        {"X-Optimove-Signature-Version": "1", "X-Optimove-Signature-Content": "00" * 32},
        {**sign(b"other bytes")},
        {**sign(json.dumps(event()).encode(), token="wrong-token")},
        {**sign(json.dumps(event()).encode()), "X-Optimove-Signature-Version": "2"},
    ],
    ids=["none", "no-content", "zeros", "other-body", "other-token", "version-2"],
)
def test_bad_or_missing_signature_is_401(make_sandbox: Factory, headers: dict[str, str]) -> None:
    sandbox = make_sandbox(events_token=TOKEN)
    raw = json.dumps(event()).encode()
    with client_for(sandbox, **{"X-API-KEY": KEY}) as c:
        reply = c.post("/reportEvent", content=raw, headers=headers)
    assert reply.status_code == 401
    assert sandbox.received() == []


def test_signature_covers_exact_bytes(make_sandbox: Factory) -> None:
    sandbox = make_sandbox(events_token=TOKEN)
    compact = json.dumps(event(), separators=(",", ":")).encode()
    spaced = json.dumps(event(), indent=2).encode()
    with client_for(sandbox) as c:
        assert c.post("/reportEvent", content=spaced, headers=sign(compact)).status_code == 401
        assert c.post("/reportEvent", content=spaced, headers=sign(spaced)).status_code == 200


def test_signed_event_with_wrong_api_key_is_403(make_sandbox: Factory) -> None:
    sandbox = make_sandbox(events_token=TOKEN)
    raw = json.dumps(event()).encode()
    with client_for(sandbox, **{"X-API-KEY": "wrong"}) as c:
        assert c.post("/reportEvent", content=raw, headers=sign(raw)).status_code == 403


def test_without_token_events_need_the_api_key(make_sandbox: Factory) -> None:
    sandbox = make_sandbox()
    raw = json.dumps(event()).encode()
    with client_for(sandbox) as c:
        assert c.post("/reportEvent", content=raw, headers=sign(raw)).status_code == 401


def test_signature_does_not_replace_the_key_on_rest(make_sandbox: Factory) -> None:
    sandbox = make_sandbox(events_token=TOKEN)
    raw = json.dumps([{"PromoCode": "A", "PromotionName": "a"}]).encode()
    with client_for(sandbox) as c:
        reply = c.post("/Integrations/AddPromotions", content=raw, headers=sign(raw))
    assert reply.status_code == 401


# -- customer attributes ----------------------------------------------------------------


def attributes(customers: int, per_customer: int) -> dict[str, Any]:
    return {
        "CustomerNewAttributesValuesList": [
            {
                "CustomerID": f"c{c}",
                "Attributes": [
                    {"RealFieldName": f"attr_{a}", "Value": str(a)} for a in range(per_customer)
                ],
            }
            for c in range(customers)
        ]
    }


def test_update_attributes_at_the_caps_is_202(sandbox: Sandbox, client: httpx.Client) -> None:
    body = attributes(1000, 10)
    reply = client.post("/Customers/UpdateCustomerAttributes", json=body)
    assert reply.status_code == 202
    request_id = reply.json()["requestId"]
    assert uuid.UUID(request_id)
    (record,) = sandbox.received("attributes")
    assert record["body"] == body
    assert record["request_id"] == request_id


@pytest.mark.parametrize(
    ("customers", "per_customer", "reason"),
    [(1001, 1, "too many customers: 1001"), (1, 11, "too many attributes: 11")],
)
def test_update_attributes_over_caps_is_400(
    sandbox: Sandbox, client: httpx.Client, customers: int, per_customer: int, reason: str
) -> None:
    reply = client.post(
        "/Customers/UpdateCustomerAttributes", json=attributes(customers, per_customer)
    )
    assert reply.status_code == 400
    assert reason in reply.text
    assert sandbox.received() == []


def test_update_attributes_shape_errors(client: httpx.Client) -> None:
    reply = client.post("/Customers/UpdateCustomerAttributes", json={"Customers": []})
    assert reply.status_code == 400
    assert "CustomerNewAttributesValuesList" in reply.text


# -- transactional mail -----------------------------------------------------------------

TEMPLATES = {42: frozenset({"FIRST_NAME", "POINTS"})}


def mail(
    template: int = 42, unique: str | None = None, recipients: int = 1, tags: tuple[str, ...] = ()
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "TemplateID": template,
        "Recipients": [
            {
                "Email": f"m{i}@example.com",
                "Personalizations": [{"Tag": tag, "Value": "v"} for tag in tags],
            }
            for i in range(recipients)
        ],
    }
    if unique is not None:
        body["UniqueMessageID"] = unique
    return body


@pytest.fixture
def mail_client(make_sandbox: Factory) -> Iterator[tuple[Sandbox, httpx.Client]]:
    sandbox = make_sandbox(templates=TEMPLATES)
    with client_for(sandbox, **{"X-API-KEY": KEY}) as c:
        yield sandbox, c


SEND = "/TransactionalMail/SendTransactionalMail"


def test_transactional_success(mail_client: tuple[Sandbox, httpx.Client]) -> None:
    sandbox, c = mail_client
    reply = c.post(SEND, json=mail(unique="u-1", tags=("FIRST_NAME", "POINTS")))
    assert reply.status_code == 200
    body = reply.json()
    assert body["IsSuccess"] is True
    assert isinstance(body["SendID"], int)
    assert body["Error"] is None
    (record,) = sandbox.received("transactional")
    assert record["unique_message_id"] == "u-1"
    assert record["body"]["UniqueMessageID"] == "u-1"


def test_transactional_missing_tags_is_206(mail_client: tuple[Sandbox, httpx.Client]) -> None:
    sandbox, c = mail_client
    reply = c.post(SEND, json=mail(tags=("FIRST_NAME",)))
    assert reply.status_code == 206
    body = reply.json()
    assert body["IsSuccess"] is True
    assert "POINTS" in body["Error"]
    assert "FIRST_NAME" not in body["Error"]
    assert len(sandbox.received("transactional")) == 1
    assert sandbox.stats["partial_206"] == 1


def test_transactional_repeat_unique_id_is_409(mail_client: tuple[Sandbox, httpx.Client]) -> None:
    sandbox, c = mail_client
    full = ("FIRST_NAME", "POINTS")
    assert c.post(SEND, json=mail(unique="u-2", tags=full)).status_code == 200
    again = c.post(SEND, json=mail(unique="u-2", tags=full))
    assert again.status_code == 409
    assert again.json() == {
        "IsSuccess": False,
        "SendID": None,
        "Error": "Request for this UniqueMessageID has succeeded before",
    }
    assert c.post(SEND, json=mail(unique="u-3", tags=full)).status_code == 200
    assert sandbox.stats["duplicates_409"] == 1
    assert [r["unique_message_id"] for r in sandbox.received("transactional")] == ["u-2", "u-3"]


def test_transactional_invalid_template(mail_client: tuple[Sandbox, httpx.Client]) -> None:
    sandbox, c = mail_client
    reply = c.post(SEND, json=mail(template=7, unique="u-4"))
    assert reply.status_code == 200
    assert reply.json() == {"IsSuccess": False, "SendID": None, "Error": "Invalid template"}
    assert sandbox.received() == []
    # a failed send does not burn the UniqueMessageID
    assert c.post(SEND, json=mail(unique="u-4", tags=("FIRST_NAME", "POINTS"))).status_code == 200


def test_transactional_recipient_cap(mail_client: tuple[Sandbox, httpx.Client]) -> None:
    sandbox, c = mail_client
    assert c.post(SEND, json=mail(recipients=200, tags=("FIRST_NAME", "POINTS"))).is_success
    reply = c.post(SEND, json=mail(recipients=201))
    assert reply.status_code == 400
    assert reply.json()["IsSuccess"] is False
    assert "too many recipients: 201" in reply.json()["Error"]
    assert len(sandbox.received()) == 1


def test_transactional_without_templates_accepts_any_id(client: httpx.Client) -> None:
    reply = client.post(SEND, json=mail(template=999))
    assert reply.status_code == 200
    assert reply.json()["IsSuccess"] is True


# -- promotions -------------------------------------------------------------------------


def test_promotions_upsert_get_delete(sandbox: Sandbox, client: httpx.Client) -> None:
    add = "/Integrations/AddPromotions"
    first = client.post(add, json=[{"PromoCode": "P1", "PromotionName": "One"}])
    assert first.status_code == 200
    assert first.content == b""
    assert first.headers["content-length"] == "0"
    client.post(
        add,
        json=[
            {"PromoCode": "P1", "PromotionName": "Uno"},
            {"PromoCode": 2, "PromotionName": "Two"},
        ],
    )
    assert client.get("/Integrations/GetPromotions").json() == [
        {"PromoCode": "P1", "PromotionName": "Uno"},
        {"PromoCode": "2", "PromotionName": "Two"},
    ]
    assert client.post("/Integrations/DeletePromotions", json=[{"PromoCode": "P1"}]).is_success
    assert client.get("/Integrations/GetPromotions").json() == [
        {"PromoCode": "2", "PromotionName": "Two"}
    ]
    assert len(sandbox.received("promotions")) == 3


def test_promotions_cap(client: httpx.Client) -> None:
    promos = [{"PromoCode": f"P{i}", "PromotionName": "x"} for i in range(101)]
    reply = client.post("/Integrations/AddPromotions", json=promos)
    assert reply.status_code == 400
    assert client.get("/Integrations/GetPromotions").json() == []


# -- unsubscribers ----------------------------------------------------------------------


def test_unsubscribers_add_get_delete(sandbox: Sandbox, client: httpx.Client) -> None:
    add = client.post(
        "/Optimail/AddUnsubscribers",
        json={"BrandId": 4, "EmailAddresses": ["a@example.com", "b@example.com"]},
    )
    assert add.status_code == 200
    assert add.json() == {"Error": None}
    client.post("/Optimail/AddUnsubscribers", json={"BrandId": 5, "EmailAddresses": ["c@x.io"]})
    rows = client.get("/current/optimail/GetUnsubscribers", params={"BrandID": 4}).json()
    assert [r["Email"] for r in rows] == ["a@example.com", "b@example.com"]
    assert time.strptime(rows[0]["UnsubscribedTime"], "%Y-%m-%d %H:%M:%S")
    delete = client.post(
        "/Optimail/DeleteUnsubscribers", json={"BrandId": 4, "EmailAddress": "A@example.com"}
    )
    assert delete.json() == {"Error": None}
    everyone = client.get("/Optimail/GetUnsubscribers").json()
    assert sorted(r["Email"] for r in everyone) == ["b@example.com", "c@x.io"]
    assert len(sandbox.received("unsubscribe")) == 2
    assert len(sandbox.received("resubscribe")) == 1


def test_unsubscribers_invalid_email_and_cap(sandbox: Sandbox, client: httpx.Client) -> None:
    bad = client.post(
        "/Optimail/AddUnsubscribers", json={"BrandId": 4, "EmailAddresses": ["not-an-email"]}
    )
    assert bad.status_code == 400
    assert bad.json() == {"Error": "Invalid email"}
    many = [f"u{i}@example.com" for i in range(201)]
    over = client.post("/Optimail/AddUnsubscribers", json={"BrandId": 4, "EmailAddresses": many})
    assert over.status_code == 400
    assert sandbox.received() == []


# -- rate limiting ----------------------------------------------------------------------


def test_general_rate_limit_429_is_not_recorded(make_sandbox: Factory) -> None:
    sandbox = make_sandbox(rate_limit=(3, 60.0))
    promo = [{"PromoCode": "P", "PromotionName": "x"}]
    with client_for(sandbox, **{"X-API-KEY": KEY}) as c:
        statuses = [c.post("/Integrations/AddPromotions", json=promo) for _ in range(5)]
        events_ok = c.post("/reportEvent", json=event())  # events gateway: unlimited
    assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]
    limited = statuses[3]
    assert limited.json() == {
        "status": 429,
        "error": "Too Many Requests",
        "message": "You have exceeded the rate limit for this API group",
    }
    assert "retry-after" not in limited.headers
    assert events_ok.status_code == 200
    assert len(sandbox.received("promotions")) == 3
    assert sandbox.stats["rate_limited_429"] == 2


def test_transactional_has_its_own_limit(make_sandbox: Factory) -> None:
    sandbox = make_sandbox(rate_limit=(100, 60.0), transactional_rate_limit=(2, 60.0))
    with client_for(sandbox, **{"X-API-KEY": KEY}) as c:
        sends = [c.post(SEND, json=mail()).status_code for _ in range(3)]
        other = c.get("/Integrations/GetPromotions").status_code
    assert sends == [200, 200, 429]
    assert other == 200
    assert len(sandbox.received("transactional")) == 2


def test_events_limit_when_configured(make_sandbox: Factory) -> None:
    sandbox = make_sandbox(events_rate_limit=(2, 60.0), rate_limit=(1, 60.0))
    with client_for(sandbox, **{"X-API-KEY": KEY}) as c:
        codes = [c.post("/reportEvent", json=event()).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_window_slides(make_sandbox: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    # the sandbox's window reads a fake clock: however slow the machine, the first three
    # requests fall in one window and the fourth in the next
    from types import SimpleNamespace

    from optisync.sandbox import state
    from tests.support import FakeClock

    clock = FakeClock(1000.0)
    monkeypatch.setattr(state, "time", SimpleNamespace(monotonic=clock, sleep=time.sleep))
    sandbox = make_sandbox(rate_limit=(2, 0.3))
    with client_for(sandbox, **{"X-API-KEY": KEY}) as c:
        first = [c.get("/Integrations/GetPromotions").status_code for _ in range(3)]
        clock.advance(0.35)
        later = c.get("/Integrations/GetPromotions").status_code
    assert first == [200, 200, 429]
    assert later == 200


def test_unauthenticated_requests_do_not_use_the_quota(make_sandbox: Factory) -> None:
    sandbox = make_sandbox(rate_limit=(1, 60.0))
    with client_for(sandbox) as anonymous:
        for _ in range(3):
            assert anonymous.get("/Integrations/GetPromotions").status_code == 401
    with client_for(sandbox, **{"X-API-KEY": KEY}) as c:
        assert c.get("/Integrations/GetPromotions").status_code == 200


def test_limits_off_means_no_429(make_sandbox: Factory) -> None:
    sandbox = make_sandbox(enforce_limits=False, rate_limit=(1, 60.0))
    with client_for(sandbox, **{"X-API-KEY": KEY}) as c:
        codes = {c.get("/Integrations/GetPromotions").status_code for _ in range(5)}
    assert codes == {200}


# -- fault injection --------------------------------------------------------------------


def outcomes(sandbox: Sandbox, count: int) -> list[str]:
    seen: list[str] = []
    with client_for(sandbox, **{"X-API-KEY": KEY}) as c:
        for _ in range(count):
            try:
                seen.append(str(c.post("/reportEvent", json=event()).status_code))
            except httpx.TransportError:
                seen.append("closed")
    return seen


MIXED = Faults(
    error_rate=0.2, burst_429=0.1, burst_length=3, drop_rate=0.1, lost_response_rate=0.1, seed=7
)


def test_same_seed_gives_same_outcomes(make_sandbox: Factory) -> None:
    first = outcomes(make_sandbox(faults=MIXED), 60)
    second_box = make_sandbox(faults=MIXED)
    second = outcomes(second_box, 60)
    assert first == second
    assert {"200", "503", "429", "closed"} <= set(first)
    second_box.reset()  # reset restarts the sequence too
    assert outcomes(second_box, 60) == first


def test_different_seed_gives_different_outcomes(make_sandbox: Factory) -> None:
    a = outcomes(make_sandbox(faults=MIXED), 60)
    other = Faults(**{**MIXED.__dict__, "seed": 8})
    b = outcomes(make_sandbox(faults=other), 60)
    assert a != b


def test_bursts_are_consecutive_429s(make_sandbox: Factory) -> None:
    sandbox = make_sandbox(faults=Faults(burst_429=0.1, burst_length=4, seed=3))
    seen = outcomes(sandbox, 80)
    runs: list[int] = []
    count = 0
    for outcome in [*seen, "end"]:
        if outcome == "429":
            count += 1
        elif count:
            runs.append(count)
            count = 0
    assert runs, "expected at least one burst"
    assert all(run >= 4 for run in runs[:-1] if run)
    assert sandbox.stats["faults_429"] == seen.count("429")
    assert len(sandbox.received()) == seen.count("200")


def test_error_rate_503_is_not_recorded(make_sandbox: Factory) -> None:
    sandbox = make_sandbox(faults=Faults(error_rate=1.0))
    assert outcomes(sandbox, 3) == ["503"] * 3
    assert sandbox.received() == []
    assert sandbox.stats["faults_503"] == 3


def test_drop_closes_without_processing(make_sandbox: Factory) -> None:
    sandbox = make_sandbox(faults=Faults(drop_rate=1.0))
    with (
        client_for(sandbox, **{"X-API-KEY": KEY}) as c,
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
    ):
        c.post("/reportEvent", json=event())
    assert sandbox.received() == []
    assert sandbox.stats["dropped"] == 1


def test_lost_response_records_but_client_sees_error(make_sandbox: Factory) -> None:
    sandbox = make_sandbox(faults=Faults(lost_response_rate=1.0))
    with client_for(sandbox, **{"X-API-KEY": KEY}) as c:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            c.post(SEND, json=mail(unique="once"))
        sandbox.set_faults(Faults())
        retry = c.post(SEND, json=mail(unique="once"))
    assert retry.status_code == 409
    assert len(sandbox.received("transactional")) == 1
    assert sandbox.stats["lost_responses"] == 1


def test_latency_is_added(make_sandbox: Factory) -> None:
    sandbox = make_sandbox(faults=Faults(latency_ms=150))
    with client_for(sandbox, **{"X-API-KEY": KEY}) as c:
        c.get("/Integrations/GetPromotions")
        started = time.perf_counter()
        c.get("/Integrations/GetPromotions")
        elapsed = time.perf_counter() - started
    assert elapsed >= 0.14


def test_faults_validate_their_values() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        Faults(error_rate=1.5)
    with pytest.raises(ValueError, match="burst_length"):
        Faults(burst_length=0)


# -- paths and protocol -----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/current/Integrations/GetPromotions",
        "/integrations/getpromotions",
        "/CURRENT/INTEGRATIONS/GETPROMOTIONS",
        "/Integrations/GetPromotions/",
    ],
)
def test_current_prefix_and_case_insensitive_paths(client: httpx.Client, path: str) -> None:
    reply = client.get(path)
    assert reply.status_code == 200
    assert reply.json() == []


def test_events_path_variants(sandbox: Sandbox, client: httpx.Client) -> None:
    assert client.post("/current/reportevent", json=event()).status_code == 200
    assert client.post("/REPORTEVENT", json=event()).status_code == 200
    assert len(sandbox.received("events")) == 2


def test_unknown_path_404_and_wrong_method_405(client: httpx.Client) -> None:
    assert client.get("/Customers/Nope").status_code == 404
    wrong = client.get("/Customers/UpdateCustomerAttributes")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert client.post("/Integrations/GetPromotions", json=[]).status_code == 405


def test_malformed_json_is_400_with_plain_reason(sandbox: Sandbox, client: httpx.Client) -> None:
    reply = client.post("/Integrations/AddPromotions", content=b"[{oops")
    assert reply.status_code == 400
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.text.startswith("Malformed JSON:")
    empty = client.post("/Customers/UpdateCustomerAttributes", content=b"")
    assert empty.status_code == 400
    assert "empty" in empty.text
    assert sandbox.received() == []


def test_keep_alive_reuses_one_connection(sandbox: Sandbox) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sandbox.port, timeout=5)
    raw = json.dumps(event()).encode()
    sockets = set()
    for _ in range(3):
        conn.request("POST", "/reportEvent", body=raw, headers={"X-API-KEY": KEY})
        reply = conn.getresponse()
        assert reply.getheader("Content-Length") is not None
        reply.read()
        assert reply.status == 200
        sockets.add(id(conn.sock))
    conn.close()
    assert len(sockets) == 1


def test_chunked_body_is_read(sandbox: Sandbox, client: httpx.Client) -> None:
    raw = json.dumps(event()).encode()
    reply = client.post("/reportEvent", content=iter([raw[:10], raw[10:]]))
    assert reply.status_code == 200
    assert sandbox.received("events")[0]["body"] == event()


def test_concurrent_requests_are_all_counted(sandbox: Sandbox) -> None:
    def worker() -> None:
        with client_for(sandbox, **{"X-API-KEY": KEY}) as c:
            for _ in range(25):
                assert c.post("/reportEvent", json=event()).status_code == 200

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sandbox.stats["accepted_events"] == 200
    assert sandbox.stats["requests"] == 200


# -- inspection -------------------------------------------------------------------------


def test_inspection_endpoints(sandbox: Sandbox, client: httpx.Client) -> None:
    client.post("/reportEvent", json=event())
    client.post("/Integrations/AddPromotions", json=[{"PromoCode": "A", "PromotionName": "a"}])
    events = client.get("/_sandbox/received", params={"kind": "events"}).json()
    assert [r["kind"] for r in events] == ["events"]
    assert len(client.get("/_sandbox/received").json()) == 2
    assert client.get("/_sandbox/received", params={"kind": "bogus"}).status_code == 400
    stats = client.get("/_sandbox/stats").json()
    assert stats["accepted"] == 2
    assert stats["requests"] == 2  # inspection calls are not counted
    assert client.post("/_sandbox/reset").status_code == 200
    assert client.get("/_sandbox/received").json() == []
    assert client.get("/Integrations/GetPromotions").json() == []
    assert sandbox.stats["accepted"] == 0


def test_inspection_requires_the_key(sandbox: Sandbox) -> None:
    with client_for(sandbox) as anonymous:
        assert anonymous.get("/_sandbox/stats").status_code == 401
    with client_for(sandbox, **{"X-API-KEY": "nope"}) as wrong:
        assert wrong.get("/_sandbox/received").status_code == 403


def test_faults_endpoint_sets_faults_and_is_exempt(sandbox: Sandbox, client: httpx.Client) -> None:
    reply = client.post("/_sandbox/faults", json={"error_rate": 1.0, "seed": 1})
    assert reply.status_code == 200
    assert reply.json()["error_rate"] == 1.0
    assert sandbox.faults.error_rate == 1.0
    assert client.post("/reportEvent", json=event()).status_code == 503
    assert client.get("/_sandbox/stats").json()["faults_503"] == 1  # not faulted itself
    assert client.post("/_sandbox/faults", json={"error_rate": 2}).status_code == 400
    assert client.post("/_sandbox/faults", json={"nope": 1}).status_code == 400
    assert client.post("/_sandbox/faults", json={}).status_code == 200
    assert client.post("/reportEvent", json=event()).status_code == 200


def test_record_path_appends_json_lines(make_sandbox: Factory, tmp_path: Path) -> None:
    record = tmp_path / "log.jsonl"
    sandbox = make_sandbox(record_path=record)
    with client_for(sandbox, **{"X-API-KEY": KEY}) as c:
        c.post("/reportEvent", json=event())
        c.post("/reportEvent", json=event(tenant=5))  # rejected: not recorded
        c.post(SEND, json=mail(unique="u-9"))
    sandbox.stop()
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["events", "transactional"]
    assert lines[1]["unique_message_id"] == "u-9"


# -- lifecycle --------------------------------------------------------------------------


def test_stop_closes_the_port(make_sandbox: Factory) -> None:
    sandbox = make_sandbox()
    with client_for(sandbox, **{"X-API-KEY": KEY}) as c:
        assert c.get("/Integrations/GetPromotions").status_code == 200
        sandbox.stop()
        with pytest.raises(httpx.TransportError):
            c.get("/Integrations/GetPromotions")


def test_serve_blocks_until_stopped() -> None:
    ready: list[Sandbox] = []
    started = threading.Event()

    def on_ready(sandbox: Sandbox) -> None:
        ready.append(sandbox)
        started.set()

    thread = threading.Thread(
        target=serve, args=(SandboxConfig(api_key=KEY), "127.0.0.1", 0), kwargs={"ready": on_ready}
    )
    thread.start()
    assert started.wait(5)
    with client_for(ready[0], **{"X-API-KEY": KEY}) as c:
        assert c.get("/_sandbox/stats").status_code == 200
    ready[0].stop()
    thread.join(5)
    assert not thread.is_alive()


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="api_key"):
        SandboxConfig(api_key="")
    with pytest.raises(ValueError, match="rate_limit"):
        SandboxConfig(api_key=KEY, rate_limit=(0, 10.0))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_stops_cleanly_on_signal(signum: int) -> None:
    script = (
        "from optisync.sandbox import SandboxConfig, serve\n"
        f"serve(SandboxConfig(api_key={KEY!r}), '127.0.0.1', 0)\n"
        "print('returned')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:"), line
        with httpx.Client(base_url=url, headers={"X-API-KEY": KEY}, verify=False) as c:
            assert c.get("/_sandbox/stats").status_code == 200
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.strip() == "returned"
    assert "Traceback" not in err


def test_command_passes_every_fault_flag_to_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[SandboxConfig] = []
    monkeypatch.setattr("optisync.sandbox.serve", lambda config, host, port: seen.append(config))
    invoke(
        "sandbox", "--api-key", "k", "--error-rate", "0.1", "--burst-429", "0.2",
        "--latency-ms", "3", "--drop-rate", "0.3", "--lost-response-rate", "0.4",
        "--slow-rate", "0.5", "--slow-ms", "60", "--seed", "7", "--keep", "2",
    )  # fmt: skip
    assert seen[0].faults == Faults(
        error_rate=0.1, burst_429=0.2, latency_ms=3, drop_rate=0.3, lost_response_rate=0.4,
        slow_rate=0.5, slow_ms=60, seed=7,
    )  # fmt: skip
    assert seen[0].keep_received == 2
