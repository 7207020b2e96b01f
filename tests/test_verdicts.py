"""Optimove's verdicts and customer creation: signed callback URLs, pending calls,
``rejected`` letters that replay resends, the sweep of overdue calls, and the sandbox that
creates customers and posts verdicts (docs/realtime.md, docs/dead-letters.md)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from optisync.config import load_config
from optisync.config.models import Config
from optisync.events import Envelope
from optisync.optimove.client import OptimoveClient
from optisync.optimove.outcome import Endpoint, classify
from optisync.realtime.deadletter import DeadLetterStore
from optisync.realtime.plan import Planner
from optisync.realtime.verdicts import Verdicts, callback_key, sign_call
from optisync.sandbox import Sandbox, SandboxConfig
from optisync.sandbox.catalog import Catalog
from tests.support import (
    VALID_CONFIG,
    CallbackReceiver,
    config_yaml,
    invoke,
    make_settings,
)

KEY = "verdicts-key"
T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
ATTRS = {"CustomerNewAttributesValuesList": [
    {"CustomerID": "A", "Attributes": [{"RealFieldName": "TierName", "Value": "Gold"}]},
    {"CustomerID": "B", "Attributes": [{"RealFieldName": "TierName", "Value": "Silver"}]},
]}  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def verdicts(tmp_path: Path, clock: Clock | None = None) -> Verdicts:
    store = DeadLetterStore(tmp_path / "dl")
    return Verdicts(
        tmp_path / "dl" / "pending-verdicts",
        store,
        "https://optisync.example.com/v1/optimove/callback",
        callback_key(KEY),
        600.0,
        now=clock or Clock(),
    )


def params_of(url: str) -> dict[str, str]:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(url).query))


def letters(tmp_path: Path) -> list[dict[str, Any]]:
    new = tmp_path / "dl" / "new"
    return [json.loads(p.read_text()) for p in sorted(new.glob("*.json"))] if new.exists() else []


def pending(tmp_path: Path, sub: str = "pending") -> list[str]:
    return sorted(p.name for p in (tmp_path / "dl" / "pending-verdicts" / sub).glob("*.json"))


# -- the handler ---------------------------------------------------------------------------


def test_a_callback_url_names_the_call_and_signs_it_never_with_the_key(tmp_path: Path) -> None:
    v = verdicts(tmp_path)
    call_id, url = v.register(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS)
    assert url.startswith("https://optisync.example.com/v1/optimove/callback?call=")
    assert params_of(url) == {"call": call_id, "sig": sign_call(callback_key(KEY), call_id)}
    assert KEY not in url
    assert pending(tmp_path) == [f"{call_id}.json"]
    record = json.loads((tmp_path / "dl/pending-verdicts/pending" / f"{call_id}.json").read_text())
    assert [c["customer_id"] for c in record["customers"]] == ["A", "B"]
    assert (
        tmp_path / "dl/pending-verdicts/pending" / f"{call_id}.json"
    ).stat().st_mode & 0o777 == (0o600)


@pytest.mark.parametrize(
    ("mangle", "status"),
    [
        (lambda p: {**p, "sig": p["sig"][:-2] + "AA"}, 403),  # a forged signature
        (lambda p: {"call": "x" * 22, "sig": sign_call(b"another key", "x" * 22)}, 403),
        (lambda p: {"call": "../../etc/passwd", "sig": p["sig"]}, 403),
        (lambda p: {"call": p["call"]}, 400),  # no signature at all
        # well signed, but no such call is pending: nothing to match it to
        (lambda p: {"call": "y" * 22, "sig": sign_call(callback_key(KEY), "y" * 22)}, 404),
    ],
)
def test_a_forged_or_unknown_callback_is_refused_and_writes_nothing(
    tmp_path: Path, mangle: Any, status: int
) -> None:
    v = verdicts(tmp_path)
    call_id, url = v.register(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS)
    body = json.dumps(
        {"isSuccess": False, "errors": [{"error": "INVALID_CUSTOMER", "customerId": "A"}]}
    ).encode()
    answer, _ = v.handle(mangle(params_of(url)), body)
    assert answer == status
    assert letters(tmp_path) == []
    assert pending(tmp_path) == [f"{call_id}.json"]  # the real verdict can still come


def test_a_body_that_is_no_verdict_is_400_and_the_call_stays_pending(tmp_path: Path) -> None:
    v = verdicts(tmp_path)
    call_id, url = v.register(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS)
    for body in (b"not json", b"[1]", b"{}", b'{"errors": "x"}'):
        assert v.handle(params_of(url), body)[0] == 400
    assert pending(tmp_path) == [f"{call_id}.json"]
    assert letters(tmp_path) == []


def test_the_verdict_is_read_case_insensitively_and_matched_to_its_customer(
    tmp_path: Path,
) -> None:
    v = verdicts(tmp_path)
    call_id, url = v.register(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS)
    body = {
        "IsSuccess": False,
        "Errors": [
            {"Error": "INVALID_VALUE", "CustomerID": "B", "RealFieldName": "TierName"},
            {"ERROR": "INVALID_CUSTOMER", "customerid": "Z", "realfieldname": "TierName"},
        ],
        "RequestId": "r-1",
    }
    status, answer = v.handle(params_of(url), json.dumps(body).encode())
    assert (status, answer["rejected"], answer["unmatched"]) == (200, 1, 1)
    [letter] = letters(tmp_path)
    assert letter["error"]["class"] == "rejected"
    assert letter["error"]["message"] == "Optimove rejected customer B: INVALID_VALUE on TierName"
    assert letter["kind"] == "attributes"
    assert letter["endpoint"] == "/Customers/UpdateCustomerAttributes"
    assert letter["request"] == {"CustomerNewAttributesValuesList": [ATTRS[  # B's slice only
        "CustomerNewAttributesValuesList"][1]]}  # fmt: skip
    assert pending(tmp_path) == [] and pending(tmp_path, "claimed") == []
    # heard once: the same verdict again finds no pending call
    assert v.handle(params_of(url), json.dumps(body).encode())[0] == 404
    assert len(letters(tmp_path)) == 1


def test_success_removes_the_pending_call(tmp_path: Path) -> None:
    v = verdicts(tmp_path)
    _, url = v.register(Endpoint.UPSERT_CUSTOMER, {"CustomerId": "A", "Attributes": []})
    assert v.handle(params_of(url), b'{"isSuccess": true, "requestId": "r"}') == (
        200,
        {"call": params_of(url)["call"], "rejected": 0, "unmatched": 0},
    )
    assert pending(tmp_path) == [] and letters(tmp_path) == []


def test_sweep_counts_calls_without_a_verdict_once_and_a_late_verdict_is_still_heard(
    tmp_path: Path,
) -> None:
    clock = Clock()
    v = verdicts(tmp_path, clock)
    _, late = v.register(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS)
    clock.now = T0 + timedelta(seconds=300)
    v.register(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS)
    assert v.sweep(T0 + timedelta(seconds=599)) == 0
    assert v.sweep(T0 + timedelta(seconds=601)) == 1
    assert v.sweep(T0 + timedelta(seconds=602)) == 0  # counted once, as it became overdue
    assert v.counts() == {"pending": 1, "overdue": 1}
    assert v.sweep(T0 + timedelta(seconds=901)) == 1
    body = b'{"isSuccess": false, "errors": [{"error": "INVALID_CUSTOMER", "customerId": "A"}]}'
    assert v.handle(params_of(late), body)[0] == 200
    assert len(letters(tmp_path)) == 1
    assert v.counts() == {"pending": 0, "overdue": 1}
    # an overdue call is forgotten after a week
    v.sweep(T0 + timedelta(days=8))
    assert v.counts() == {"pending": 0, "overdue": 0}


# -- the client ----------------------------------------------------------------------------


def test_the_client_adds_a_fresh_callback_url_and_forgets_a_refused_call(tmp_path: Path) -> None:
    v = verdicts(tmp_path)
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = json.loads(request.content)
        if body.get("CustomerId") == "bad":
            return httpx.Response(400, json={"message": "no"})
        return httpx.Response(202, json={})

    client = OptimoveClient(
        make_settings(), transport=httpx.MockTransport(answer), callbacks=v, sleep=lambda _: None
    )
    stale = {**ATTRS, "CallbackURL": "https://old.example.com/?call=old"}
    assert client.send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, json.dumps(stale).encode()).ok
    assert client.send(Endpoint.UPSERT_CUSTOMER, {"CustomerId": "A", "Attributes": []}).ok
    assert not client.send(Endpoint.UPSERT_CUSTOMER, {"CustomerId": "bad", "Attributes": []}).ok
    assert client.send(Endpoint.INSERT_OR_UPDATE_CUSTOMERS, {"Customers": []}).ok
    bodies = [json.loads(r.content) for r in seen]
    assert [r.method for r in seen] == ["POST", "PUT", "PUT", "PUT"]
    assert bodies[0]["CallbackURL"].startswith("https://optisync.example.com/")
    assert bodies[1]["CallbackUrl"].startswith("https://optisync.example.com/")
    assert "CallbackUrl" not in bodies[3] and "CallbackURL" not in bodies[3]
    assert len(pending(tmp_path)) == 2  # the refused upsert awaits no verdict


def test_an_upsert_answered_with_errors_is_fatal() -> None:
    request = httpx.Request("PUT", "https://api4.optimove.net/Customers/UpsertCustomer")
    errors = {"errors": [{"error": "INVALID_FIELD", "realFieldName": "X"}]}
    assert classify(httpx.Response(200, json=errors, request=request)).kind == "fatal"
    assert classify(httpx.Response(200, json={"errors": []}, request=request)).kind == "delivered"
    other = httpx.Request("POST", "https://api4.optimove.net/Customers/UpdateCustomerAttributes")
    assert classify(httpx.Response(202, json=errors, request=other)).kind == "delivered"


# -- the planner ---------------------------------------------------------------------------

REGISTRATION = {
    "id": "reg-1",
    "type": "MEMBER_REGISTRATION",
    "member_id": "M1",
    "occurred_at": "2026-11-25T09:00:00Z",
    "data": {"first_name": "Ann", "tier": "Silver"},
}


def planned(create_method: str) -> list[tuple[str, Any]]:
    config = Config.model_validate(
        {
            "attributes": {
                "create_method": create_method,
                "realtime": [
                    {
                        "name": "TierName",
                        "type": "string",
                        "source": "data.tier",
                        "events": ["MEMBER_REGISTRATION"],
                    }
                ],
            }
        }
    )
    envelope = Envelope.model_validate(REGISTRATION)
    return [
        (p.endpoint.value, p.body) for p in Planner(config).plan(envelope, ("attributes",)).parts
    ]


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (
            "insert_or_update",
            ("/Customers/InsertOrUpdateCustomers", {"Customers": [{"CustomerId": "M1",
             "Attributes": [{"RealFieldName": "TierName", "Value": "Silver"}]}]}),
        ),
        (
            "upsert",
            ("/Customers/UpsertCustomer", {"CustomerId": "M1",
             "Attributes": [{"RealFieldName": "TierName", "Value": "Silver"}]}),
        ),
        (
            "none",
            ("/Customers/UpdateCustomerAttributes", {"CustomerNewAttributesValuesList": [
                {"CustomerID": "M1",
                 "Attributes": [{"RealFieldName": "TierName", "Value": "Silver"}]}]}),
        ),
    ],
)  # fmt: skip
def test_a_registration_creates_the_customer_by_the_configured_method(
    method: str, expected: tuple[str, Any]
) -> None:
    assert planned(method) == [expected]


# -- against the sandbox -------------------------------------------------------------------

ATTRIBUTES = {
    "realtime": [
        {
            "name": "TierName",
            "type": "NVARCHAR(50)",
            "source": "data.tier",
            "events": ["MEMBER_REGISTRATION", "MEMBER_TIER"],
        },
        {"name": "TierExpiry", "type": "DATE", "source": "data.tier_expiry",
         "events": ["MEMBER_TIER"]},
    ],
    "emd": {"opt_in_key": "email_opt_in"},
}  # fmt: skip
ROUTING = {"rules": [{"types": ["MEMBER_REGISTRATION", "MEMBER_TIER"], "to": ["attributes"]}]}


def registration(member: str) -> dict[str, Any]:
    return {**REGISTRATION, "id": f"reg-{member}", "member_id": member}


def tier(member: str, **data: Any) -> dict[str, Any]:
    return {
        "id": f"tier-{member}",
        "type": "MEMBER_TIER",
        "member_id": member,
        "occurred_at": "2026-11-25T10:00:00Z",
        "data": {"tier": "Gold", **data},
    }


def push(config: Path, tmp_path: Path, *messages: dict[str, Any]) -> None:
    source = tmp_path / f"in-{messages[0]['id']}.ndjson"
    source.write_text("".join(json.dumps(m) + "\n" for m in messages))
    invoke("--config", str(config), "push-event", "--input", str(source))


def test_rejected_updates_become_letters_that_replay_resends_once_fixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTIMOVE_API_KEY", KEY)
    heard: list[Verdicts] = []
    receiver = CallbackReceiver(lambda params, body: heard[0].handle(params, body))
    box = Sandbox(
        SandboxConfig(api_key=KEY, tenant_id=1234, catalog=Catalog(("TierName",)))
    ).start()
    try:
        config = tmp_path / "optisync.yaml"
        config.write_text(
            config_yaml(
                box.url,
                dead_letters=tmp_path / "dl",
                events_token=False,
                optimove={"callback_url": receiver.url, "concurrency": 1},
                attributes=ATTRIBUTES,
                routing=ROUTING,
            )
        )
        found = Verdicts.from_config(load_config(config))
        assert found is not None
        heard.append(found)

        # M1 registers, then changes tier with an attribute the account lacks; M2 was
        # never created
        push(config, tmp_path, registration("M1"), tier("M1", tier_expiry="2027-12-31"), tier("M2"))
        order = [(r["path"], r["body"]) for r in box.received()]
        assert [path for path, _ in order] == [
            "/Customers/InsertOrUpdateCustomers",
            "/Customers/UpdateCustomerAttributes",
        ]
        assert order[0][1]["Customers"][0]["CustomerId"] == "M1"
        receiver.wait_for(1)
        assert receiver.answers[0] == (200, {"call": receiver.answers[0][1]["call"],
                                             "rejected": 2, "unmatched": 0})  # fmt: skip
        rejected = {x["request"]["CustomerNewAttributesValuesList"][0]["CustomerID"]: x
                    for x in letters(tmp_path)}  # fmt: skip
        assert {k: (x["error"]["class"], x["error"]["message"]) for k, x in rejected.items()} == {
            "M1": ("rejected", "Optimove rejected customer M1: INVALID_FIELD on TierExpiry"),
            "M2": ("rejected", "Optimove rejected customer M2: INVALID_CUSTOMER on TierName"),
        }
        assert pending(tmp_path) == []

        # the fixes: the account gets the attribute, M2 registers; then replay resends both
        # slices, the letters go, and the verdicts (success) leave nothing pending
        box.config.catalog = Catalog(("TierName", "TierExpiry"))
        push(config, tmp_path, registration("M2"))
        invoke("--config", str(config), "replay")
        receiver.wait_for(3)
        assert [a[1]["rejected"] for a in receiver.answers[1:]] == [0, 0]
        assert letters(tmp_path) == []
        assert pending(tmp_path) == [] and pending(tmp_path, "overdue") == []
        resent = [r["body"] for r in box.received("attributes")][1:]
        assert sorted(b["CustomerNewAttributesValuesList"][0]["CustomerID"] for b in resent) == [
            "M1",
            "M2",
        ]
    finally:
        box.stop()
        receiver.close()


def test_without_a_callback_url_the_sandbox_answers_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTIMOVE_API_KEY", KEY)
    with Sandbox(SandboxConfig(api_key=KEY, tenant_id=1234)) as box:
        config = tmp_path / "optisync.yaml"
        config.write_text(
            config_yaml(
                box.url,
                dead_letters=tmp_path / "dl",
                events_token=False,
                attributes={**ATTRIBUTES, "create_method": "upsert"},
                routing=ROUTING,
            )
        )
        push(config, tmp_path, registration("M1"), tier("M9"))
        # two members: their calls go out in either order
        by_path = {r["path"]: r for r in box.received()}
        assert len(box.received()) == 2
        assert sorted(by_path) == [
            "/Customers/UpdateCustomerAttributes",
            "/Customers/UpsertCustomer",
        ]
        assert "CallbackUrl" not in by_path["/Customers/UpsertCustomer"]["body"]
        stats = box.stats
        assert stats["callbacks_sent"] == stats["callbacks_failed"] == 0
    assert not (tmp_path / "dl" / "pending-verdicts").exists()


# -- validate-config -----------------------------------------------------------------------


def warnings_of(path: Path) -> list[str]:
    result = invoke("--json", "validate-config", str(path), expect=None)
    return [p["message"] for p in json.loads(result.stdout)["problems"]]


def test_validate_config_warns_that_rejections_are_invisible_without_a_callback_url(
    write_config: Any,
) -> None:
    without = VALID_CONFIG.replace(
        'callback_url: "https://optisync.example.com/v1/optimove/callback",', ""
    )
    found = warnings_of(write_config(without))
    assert any(m.startswith("no callback_url: the verdicts on attribute updates") for m in found)
    assert not any("callback_url" in m for m in warnings_of(write_config(VALID_CONFIG)))
    none = VALID_CONFIG.replace("attributes:\n", "attributes:\n  create_method: none\n")
    assert any("create_method is none" in m for m in warnings_of(write_config(none)))
    # validate-config's exit code for warnings is unchanged
    invoke("validate-config", str(write_config(without)))


def test_a_plain_http_callback_url_is_refused_unless_loopback(write_config: Any) -> None:
    remote = VALID_CONFIG.replace("https://optisync.example.com", "http://optisync.example.com")
    result = invoke("--json", "validate-config", str(write_config(remote)), expect=None)
    assert result.exit_code != 0
    local = VALID_CONFIG.replace("https://optisync.example.com", "http://127.0.0.1:8787")
    invoke("validate-config", str(write_config(local)))


def test_the_sandbox_knows_listed_customers_and_posts_verdicts_to_loopback_only() -> None:
    bodies: list[Any] = []
    receiver = CallbackReceiver(lambda params, body: (200, bodies.append(json.loads(body))))
    try:
        with Sandbox(SandboxConfig(api_key=KEY, customers=frozenset({"K1"}))) as box:
            for url in (receiver.url, "https://optimove-callbacks.example.com/v1"):
                body = {
                    "CustomerNewAttributesValuesList": [
                        {"CustomerID": c, "Attributes": [{"RealFieldName": "A", "Value": 1}]}
                        for c in ("K1", "K2")
                    ],
                    "CallbackURL": url,
                }
                answer = httpx.post(
                    f"{box.url}/Customers/UpdateCustomerAttributes",
                    json=body,
                    headers={"X-API-KEY": KEY},
                )
                assert answer.status_code == 202
            receiver.wait_for(1)
            assert box.stats["callbacks_refused"] == 1
        [verdict] = bodies
        assert verdict["isSuccess"] is False
        assert verdict["errors"] == [
            {"error": "INVALID_CUSTOMER", "customerId": "K2", "realFieldName": "A"}
        ]
    finally:
        receiver.close()


def test_a_customer_is_created_before_any_update_of_theirs_is_packed() -> None:
    from optisync.realtime.batching import Batcher
    from optisync.realtime.plan import create_part

    def update(member: str) -> Any:
        from optisync.realtime.deadletter import Kind
        from optisync.realtime.plan import Part

        body = {"CustomerNewAttributesValuesList": [{"CustomerID": member, "Attributes": []}]}
        return Part(Kind.ATTRIBUTES, Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, body, "attributes")

    batcher: Batcher[str] = Batcher(1)
    creating = Endpoint.INSERT_OR_UPDATE_CUSTOMERS
    assert batcher.add("r1", create_part(creating, "M1", [])) == []
    assert batcher.add("r2", create_part(creating, "M2", [])) == []
    assert batcher.add("u3", update("M3")) == []  # M3 is not being created: it waits
    [ready] = batcher.add("u1", update("M1"))
    assert ready.endpoint is creating
    assert ready.seal() == {
        "Customers": [
            {"CustomerId": "M1", "Attributes": []},
            {"CustomerId": "M2", "Attributes": []},
        ]
    }
    # one customer twice in one creation call: the second goes in the next call
    assert batcher.add("r4", create_part(creating, "M4", [])) == []
    [first] = batcher.add("r4b", create_part(creating, "M4", []))
    assert [m for m, _ in first.items] == ["r4"]
    assert [p.endpoint for p in batcher.drain()] == [
        Endpoint.UPDATE_CUSTOMER_ATTRIBUTES,
        creating,
    ]
