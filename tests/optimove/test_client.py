from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from optisync.errors import AuthError, ConfigError, ExitCode
from optisync.optimove.client import OptimoveAuthError, OptimoveClient
from optisync.optimove.outcome import Delivery, Endpoint
from tests.support import API_KEY, EVENTS_TOKEN, EVENTS_URL, FakeClock, Recorder, make_settings

MakeClient = Callable[..., OptimoveClient]

ATTRS_BODY = {
    "CustomerNewAttributesValuesList": [
        {"CustomerID": "C1", "Attributes": [{"RealFieldName": "Tier", "Value": "Gold"}]}
    ]
}
MAIL_BODY = {"TemplateID": 7, "Recipients": [{"Email": "zoë@example.com"}], "UniqueMessageID": "m1"}
EVENT_BODY = {
    "tenant": 42,
    "event": "points_earned",
    "customer": "C1",
    "timestamp": "2024-05-27 10:30:00.000000 UTC",
    "context": {"store": "Zürich Hauptbahnhof", "points": 12},
}

# the REST endpoints, by path
ENDPOINTS = [
    Endpoint.UPDATE_CUSTOMER_ATTRIBUTES,
    Endpoint.SEND_TRANSACTIONAL_MAIL,
    Endpoint.ADD_PROMOTIONS,
    Endpoint.ADD_UNSUBSCRIBERS,
    Endpoint.DELETE_UNSUBSCRIBERS,
]


def ok(status: int = 200, **kwargs: Any) -> httpx.Response:
    return httpx.Response(status, **kwargs)


def compact(body: object) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


# -- requests ----------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
def test_rest_calls_send_key_json_headers_and_compact_body(
    make_client: MakeClient, endpoint: Endpoint
) -> None:
    path = endpoint.value
    rec = Recorder(ok())
    client = make_client(rec)
    delivery = client.send(endpoint, MAIL_BODY)
    (request,) = rec.requests
    assert request.method == "POST"
    assert str(request.url) == "https://api4.optimove.test" + path
    assert request.headers["X-API-KEY"] == API_KEY
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept"] == "application/json"
    assert request.content == compact(MAIL_BODY)
    assert "zoë".encode() in request.content  # UTF-8, not \u escapes
    assert delivery == Delivery(
        ok=True,
        status=200,
        outcome="delivered",
        error=None,
        attempts=1,
        endpoint=path,
        body=compact(MAIL_BODY),
    )


def test_trailing_slash_in_api_url_is_tolerated(make_client: MakeClient) -> None:
    rec = Recorder(ok())
    make_client(rec, api_url="https://api4.optimove.test/").send(
        Endpoint.ADD_PROMOTIONS, [{"PromoCode": "A"}]
    )
    assert rec.requests[0].url.path == "/Integrations/AddPromotions"


def test_events_are_signed_over_the_exact_bytes_sent(make_client: MakeClient) -> None:
    rec = Recorder(ok(json={"status": "success", "message": "1"}))
    delivery = make_client(rec).send(Endpoint.EVENTS, [EVENT_BODY])
    (request,) = rec.requests
    assert str(request.url) == EVENTS_URL
    expected = hmac.new(EVENTS_TOKEN.encode(), request.content, hashlib.sha256).hexdigest()
    assert request.headers["X-Optimove-Signature-Version"] == "1"
    assert request.headers["X-Optimove-Signature-Content"] == expected
    assert request.content == compact([EVENT_BODY])
    assert delivery.body == request.content
    assert delivery.ok
    assert delivery.endpoint == "events"


def test_signed_events_do_not_carry_the_api_key(make_client: MakeClient) -> None:
    rec = Recorder(ok())
    make_client(rec).send(Endpoint.EVENTS, EVENT_BODY)
    assert "X-API-KEY" not in rec.requests[0].headers


def test_events_without_token_are_not_sent_rather_than_carry_the_key(
    make_client: MakeClient,
) -> None:
    rec = Recorder(ok())
    with pytest.raises(ConfigError, match="events_token"):
        make_client(rec, events_token=None).send(Endpoint.EVENTS, EVENT_BODY)
    assert rec.requests == []


def test_events_carry_the_key_only_when_the_config_says_the_host_takes_it(
    make_client: MakeClient,
) -> None:
    rec = Recorder(ok())
    make_client(rec, events_token=None, events_auth="api_key_header").send(
        Endpoint.EVENTS, EVENT_BODY
    )
    make_client(rec, events_token=None, events_auth="none").send(Endpoint.EVENTS, EVENT_BODY)
    keyed, bare = rec.requests
    assert keyed.headers["X-API-KEY"] == API_KEY
    assert "X-Optimove-Signature-Content" not in keyed.headers
    assert "X-API-KEY" not in bare.headers
    assert "X-Optimove-Signature-Content" not in bare.headers


def test_bytes_body_is_sent_unchanged(make_client: MakeClient) -> None:
    raw = b'{"a": 1,  "b": "x"}'
    rec = Recorder(ok())
    delivery = make_client(rec).send(Endpoint.EVENTS, raw)
    assert rec.requests[0].content == raw
    expected = hmac.new(EVENTS_TOKEN.encode(), raw, hashlib.sha256).hexdigest()
    assert rec.requests[0].headers["X-Optimove-Signature-Content"] == expected
    assert delivery.json_body() == {"a": 1, "b": "x"}


def test_missing_events_url_is_a_config_error(make_client: MakeClient) -> None:
    rec = Recorder(ok())
    with pytest.raises(ConfigError, match="events_url"):
        make_client(rec, events_url=None).send(Endpoint.EVENTS, EVENT_BODY)
    assert rec.requests == []


def test_missing_api_key_is_a_config_error(make_client: MakeClient) -> None:
    rec = Recorder(ok())
    with pytest.raises(ConfigError, match="api_key"):
        make_client(rec, api_key=None).send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS_BODY)
    assert rec.requests == []


def test_send_dispatches_by_endpoint_value(make_client: MakeClient) -> None:
    rec = Recorder(ok())
    delivery = make_client(rec).send("/Integrations/AddPromotions", [{"PromoCode": "A"}])
    assert delivery.endpoint == "/Integrations/AddPromotions"
    with pytest.raises(ValueError):
        make_client(rec).send("/Nope", {})


# -- classification through the client ---------------------------------------------------


def _raise(exc_type: type[httpx.TransportError], message: str) -> Callable[..., httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type(message, request=request)

    return handler


CASES = [
    # endpoint, answer, outcome, ok, status, error
    pytest.param(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ok(200), "delivered", True, 200, None,
                 id="delivered-200"),
    pytest.param(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ok(202), "delivered", True, 202, None,
                 id="accepted-202"),
    pytest.param(Endpoint.SEND_TRANSACTIONAL_MAIL,
                 ok(206, json={"IsSuccess": True, "SendID": 9, "Error": "Missing tags: FIRST"}),
                 "partial", True, 206, "Missing tags: FIRST", id="partial-206"),
    pytest.param(Endpoint.SEND_TRANSACTIONAL_MAIL,
                 ok(409, json={"Error": "Request for this UniqueMessageID has succeeded before"}),
                 "duplicate", True, 409, "Request for this UniqueMessageID has succeeded before",
                 id="duplicate-409"),
    pytest.param(Endpoint.SEND_TRANSACTIONAL_MAIL,
                 ok(200, json={"IsSuccess": False, "SendID": None, "Error": "Invalid template"}),
                 "fatal", False, 200, "Invalid template", id="invalid-template"),
    pytest.param(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES,
                 ok(429, json={"status": 429, "error": "Too Many Requests", "message": "limit"}),
                 "rate_limited", False, 429, "limit", id="rate-limited-429"),
    pytest.param(Endpoint.ADD_PROMOTIONS, ok(503, text="Service Unavailable"), "transient",
                 False, 503, "Service Unavailable", id="server-5xx"),
    pytest.param(Endpoint.ADD_PROMOTIONS, ok(400, text="PromoCode is required"), "fatal",
                 False, 400, "PromoCode is required", id="bad-request-400"),
    pytest.param(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ok(401, text="Invalid API key"), "auth",
                 False, 401, "Invalid API key", id="auth-401"),
    pytest.param(Endpoint.SEND_TRANSACTIONAL_MAIL, ok(403, text="Forbidden"), "auth", False, 403,
                 "Forbidden", id="auth-403"),
    pytest.param(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, _raise(httpx.ReadTimeout, "timed out"),
                 "transient", False, None, "ReadTimeout: timed out", id="timeout"),
    pytest.param(Endpoint.EVENTS,
                 _raise(httpx.RemoteProtocolError, "Server disconnected without a response."),
                 "transient", False, None,
                 "RemoteProtocolError: Server disconnected without a response.",
                 id="connection-dropped"),
    pytest.param(Endpoint.ADD_UNSUBSCRIBERS, _raise(httpx.ConnectError, "connection refused"),
                 "transient", False, None, "ConnectError: connection refused",
                 id="connect-error"),
]  # fmt: skip


@pytest.mark.parametrize(("endpoint", "answer", "outcome", "is_ok", "status", "error"), CASES)
def test_classification(
    make_client: MakeClient,
    endpoint: Endpoint,
    answer: httpx.Response | Callable[..., httpx.Response],
    outcome: str,
    is_ok: bool,
    status: int | None,
    error: str | None,
) -> None:
    client = make_client(Recorder(answer), retry={"max_attempts": 1})
    body = EVENT_BODY if endpoint is Endpoint.EVENTS else ATTRS_BODY
    if outcome == "auth":
        with pytest.raises(OptimoveAuthError) as info:
            client.send(endpoint, body)
        delivery = info.value.delivery
    else:
        delivery = client.send(endpoint, body)
    assert (delivery.outcome, delivery.ok, delivery.status, delivery.error) == (
        outcome,
        is_ok,
        status,
        error,
    )
    assert delivery.attempts == 1


# -- auth --------------------------------------------------------------------------------


def test_auth_failure_raises_auth_error_with_exit_code_5_and_no_retry(
    make_client: MakeClient, clock: FakeClock
) -> None:
    rec = Recorder(ok(401, text="Invalid API key"))
    with pytest.raises(AuthError) as info:
        make_client(rec).send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS_BODY)
    exc = info.value
    assert isinstance(exc, OptimoveAuthError)
    assert exc.exit_code is ExitCode.REFUSED
    assert exc.delivery.outcome == "auth"
    assert exc.delivery.body == compact(ATTRS_BODY)
    assert "API key" in exc.message
    assert exc.hint is not None
    assert "optimove.api_key" in exc.hint
    assert len(rec.requests) == 1
    assert clock.sleeps == []


def test_auth_failure_on_events_names_the_events_token(make_client: MakeClient) -> None:
    with pytest.raises(OptimoveAuthError) as info:
        make_client(Recorder(ok(403))).send(Endpoint.EVENTS, EVENT_BODY)
    assert "events token" in info.value.message


@pytest.mark.parametrize(
    ("events_auth", "named", "setting"),
    [
        ("api_key_header", "API key in X-API-KEY", "optimove.api_key"),
        ("none", "unauthenticated request", "optimove.events_token"),
    ],
)
def test_auth_failure_on_events_names_the_credential_the_events_host_was_given(
    make_client: MakeClient, events_auth: str, named: str, setting: str
) -> None:
    client = make_client(Recorder(ok(401)), events_auth=events_auth, events_token=None)
    with pytest.raises(OptimoveAuthError) as info:
        client.send(Endpoint.EVENTS, EVENT_BODY)
    assert named in info.value.message and "events token" not in info.value.message
    assert info.value.hint is not None and setting in info.value.hint


# -- retries -----------------------------------------------------------------------------


def test_retries_then_succeeds(make_client: MakeClient, clock: FakeClock) -> None:
    rec = Recorder(ok(503), ok(502), _raise(httpx.ReadTimeout, "slow"), ok(200))
    delivery = make_client(rec, retry={"base_delay": 0.5, "max_delay": 30}).send(
        Endpoint.ADD_PROMOTIONS, []
    )
    assert delivery.ok
    assert delivery.attempts == 4
    assert len(rec.requests) == 4
    assert len(clock.sleeps) == 3
    # Full jitter: attempt n waits uniformly in [0, base * 2**(n-1)].
    for n, slept in enumerate(clock.sleeps, start=1):
        assert 0 <= slept <= 0.5 * 2 ** (n - 1)


def test_backoff_is_capped_by_max_delay(make_client: MakeClient, clock: FakeClock) -> None:
    rec = Recorder(ok(500))
    make_client(rec, retry={"base_delay": 10, "max_delay": 2, "max_attempts": 8}).send(
        Endpoint.ADD_PROMOTIONS, []
    )
    assert len(clock.sleeps) == 7
    assert all(0 <= s <= 2 for s in clock.sleeps)


def test_retry_after_is_honoured(make_client: MakeClient, clock: FakeClock) -> None:
    rec = Recorder(ok(429, headers={"Retry-After": "7"}), ok(503, headers={"Retry-After": "2.5"}),
                   ok(200))  # fmt: skip
    delivery = make_client(rec).send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS_BODY)
    assert delivery.ok
    assert delivery.attempts == 3
    assert clock.sleeps == [7.0, 2.5]


def test_retry_after_is_capped_by_max_delay(make_client: MakeClient, clock: FakeClock) -> None:
    rec = Recorder(ok(429, headers={"Retry-After": "3600"}), ok(200))
    make_client(rec, retry={"max_delay": 30}).send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS_BODY)
    assert clock.sleeps == [30.0]


def test_retry_after_ignored_when_disabled(make_client: MakeClient, clock: FakeClock) -> None:
    rec = Recorder(ok(429, headers={"Retry-After": "20"}), ok(200))
    retry = {"respect_retry_after": False, "base_delay": 0.5}
    make_client(rec, retry=retry).send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS_BODY)
    assert len(clock.sleeps) == 1
    assert clock.sleeps[0] <= 0.5


def test_max_attempts_bounds_retries(make_client: MakeClient, clock: FakeClock) -> None:
    rec = Recorder(ok(503, text="down"))
    delivery = make_client(rec, retry={"max_attempts": 4}).send(Endpoint.ADD_PROMOTIONS, [])
    assert (delivery.ok, delivery.outcome, delivery.status, delivery.error) == (
        False,
        "transient",
        503,
        "down",
    )
    assert delivery.attempts == 4
    assert len(rec.requests) == 4
    assert len(clock.sleeps) == 3


def test_exhausted_rate_limit_reports_rate_limited(make_client: MakeClient) -> None:
    delivery = make_client(Recorder(ok(429)), retry={"max_attempts": 2}).send(
        Endpoint.ADD_PROMOTIONS, []
    )
    assert (delivery.ok, delivery.outcome, delivery.attempts) == (False, "rate_limited", 2)


def test_max_total_seconds_bounds_retries(make_client: MakeClient, clock: FakeClock) -> None:
    def slow_503(request: httpx.Request) -> httpx.Response:
        clock.advance(4.0)  # each answer takes 4 s
        return ok(503, headers={"Retry-After": "6"})

    retry = {"max_attempts": 100, "max_total_seconds": 25}
    delivery = make_client(Recorder(slow_503), retry=retry).send(Endpoint.ADD_PROMOTIONS, [])
    # t=4 first answer, sleep 6 → t=14 second answer, sleep 6 → t=24 third answer;
    # another 6 s wait would end past 25 s, so it stops.
    assert delivery.attempts == 3
    assert clock.sleeps == [6.0, 6.0]
    assert clock() <= 25
    assert delivery.outcome == "transient"


def test_no_retry_on_400(make_client: MakeClient, clock: FakeClock) -> None:
    rec = Recorder(ok(400, json={"Error": "bad body"}), ok(200))
    delivery = make_client(rec).send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS_BODY)
    assert (delivery.outcome, delivery.attempts, delivery.error) == ("fatal", 1, "bad body")
    assert len(rec.requests) == 1
    assert clock.sleeps == []


def test_every_retry_resends_the_same_bytes_and_signature(make_client: MakeClient) -> None:
    rec = Recorder(ok(503), ok(200))
    make_client(rec).send(Endpoint.EVENTS, EVENT_BODY)
    first, second = rec.requests
    assert first.content == second.content
    sig = "X-Optimove-Signature-Content"
    assert first.headers[sig] == second.headers[sig]


def test_each_retry_logs_one_line(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="optisync.optimove")
    rec = Recorder(ok(503, headers={"Retry-After": "1.3"}), _raise(httpx.ConnectError, "x"),
                   ok(200))  # fmt: skip
    make_client(rec).send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS_BODY)
    lines = [r.getMessage() for r in caplog.records if r.name == "optisync.optimove"]
    assert lines[0] == "retry 2/6 in 1.3s after 503 on /Customers/UpdateCustomerAttributes"
    assert lines[1].startswith("retry 3/6 in ")
    assert lines[1].endswith("s after ConnectError on /Customers/UpdateCustomerAttributes")
    assert len(lines) == 2


# -- rate limits -------------------------------------------------------------------------


def test_general_limit_applies_to_rest_calls(make_client: MakeClient, clock: FakeClock) -> None:
    client = make_client(Recorder(ok()), rate_limit={"requests": 2, "per_seconds": 10})
    client.send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS_BODY)
    client.send(Endpoint.ADD_PROMOTIONS, [])
    assert clock.sleeps == []
    client.send(Endpoint.ADD_UNSUBSCRIBERS, {"BrandId": 1, "EmailAddresses": []})
    assert clock.sleeps == [pytest.approx(10.005)]


def test_transactional_limiter_is_separate_from_the_general_one(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = make_client(
        Recorder(ok()),
        rate_limit={"requests": 2, "per_seconds": 10},
        transactional_rate_limit={"requests": 3, "per_seconds": 1},
    )
    client.send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS_BODY)
    client.send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS_BODY)  # general quota now used up
    for _ in range(3):
        client.send(Endpoint.SEND_TRANSACTIONAL_MAIL, MAIL_BODY)
    assert clock.sleeps == []  # transactional calls did not wait on the general quota
    client.send(Endpoint.SEND_TRANSACTIONAL_MAIL, MAIL_BODY)
    assert clock.sleeps == [pytest.approx(1.005)]  # the transactional quota is its own
    client.send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS_BODY)
    # The general quota frees 10.005 s after the first sends; 1.005 s have passed.
    assert clock.sleeps[1] == pytest.approx(9.0)


def test_events_unlimited_unless_configured(make_client: MakeClient, clock: FakeClock) -> None:
    client = make_client(Recorder(ok()), rate_limit={"requests": 1, "per_seconds": 10})
    for _ in range(20):
        client.send(Endpoint.EVENTS, EVENT_BODY)
    assert clock.sleeps == []
    limited = make_client(Recorder(ok()), events_rate_limit={"requests": 2, "per_seconds": 5})
    for _ in range(3):
        limited.send(Endpoint.EVENTS, EVENT_BODY)
    assert clock.sleeps == [pytest.approx(5.005)]


def test_retries_count_against_the_rate_limit(make_client: MakeClient, clock: FakeClock) -> None:
    rec = Recorder(ok(503, headers={"Retry-After": "1"}), ok(200))
    client = make_client(rec, rate_limit={"requests": 1, "per_seconds": 10})
    assert client.send(Endpoint.ADD_PROMOTIONS, []).ok
    # 1 s backoff, then the limiter holds the second send until the window has passed.
    assert clock.sleeps == [1.0, pytest.approx(9.005)]


# -- secrets -----------------------------------------------------------------------------


def test_secrets_never_reach_logs_repr_errors_or_deliveries(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = f"key {API_KEY} rejected; token {EVENTS_TOKEN}"
    client = make_client(Recorder(ok(500, text=echo), ok(400, text=echo)))
    delivery = client.send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, ATTRS_BODY)
    assert delivery.error == "key **** rejected; token ****"
    with pytest.raises(OptimoveAuthError) as info:
        make_client(Recorder(ok(401, text=echo))).send(Endpoint.EVENTS, EVENT_BODY)
    texts = [
        caplog.text,
        repr(client),
        str(client),
        repr(delivery),
        str(info.value),
        repr(info.value),
        info.value.hint or "",
        repr(info.value.delivery),
        repr(make_settings()),
    ]
    for text in texts:
        assert API_KEY not in text
        assert EVENTS_TOKEN not in text
    assert "optimove.test" in repr(client)


def test_delivery_repr_leaves_out_the_body(make_client: MakeClient) -> None:
    delivery = make_client(Recorder(ok())).send(Endpoint.SEND_TRANSACTIONAL_MAIL, MAIL_BODY)
    assert "zoë" not in repr(delivery)


def test_client_is_a_context_manager() -> None:
    with OptimoveClient(make_settings(), transport=httpx.MockTransport(Recorder(ok()))) as client:
        assert client.send(Endpoint.ADD_PROMOTIONS, []).ok
    with pytest.raises(RuntimeError):
        client.send(Endpoint.ADD_PROMOTIONS, [])


# -- reading the account (GET) -----------------------------------------------------------


def test_fetch_gets_with_the_key_and_query_and_decodes_the_answer(
    make_client: MakeClient,
) -> None:
    rec = Recorder(ok(json=[{"Email": "a@example.com", "UnsubscribedTime": "2026-11-01"}]))
    fetched = make_client(rec).fetch(Endpoint.GET_UNSUBSCRIBERS, {"BrandID": 7, "$skip": 10000})
    (request,) = rec.requests
    assert request.method == "GET"
    assert str(request.url) == (
        "https://api4.optimove.test/current/optimail/GetUnsubscribers?BrandID=7&$skip=10000"
    )
    assert request.headers["X-API-KEY"] == API_KEY
    assert request.content == b""
    assert fetched.delivery.ok
    assert fetched.data == [{"Email": "a@example.com", "UnsubscribedTime": "2026-11-01"}]


def test_fetch_retries_and_keeps_the_last_answer(make_client: MakeClient, clock: FakeClock) -> None:
    rec = Recorder(ok(503, json={"message": "busy"}), ok(429), ok(json=[{"RealFieldName": "Tier"}]))
    fetched = make_client(rec).fetch(Endpoint.GET_CUSTOMER_ATTRIBUTE_LIST)
    assert fetched.delivery.attempts == 3
    assert fetched.data == [{"RealFieldName": "Tier"}]
    assert len(clock.sleeps) == 2


def test_fetch_out_of_retries_has_no_data(make_client: MakeClient) -> None:
    rec = Recorder(ok(503))
    fetched = make_client(rec, retry={"max_attempts": 2}).fetch(Endpoint.GET_TEMPLATE_DETAILS)
    assert not fetched.delivery.ok
    assert fetched.delivery.outcome == "transient"
    assert fetched.data is None


def test_fetch_of_an_answer_that_is_not_json_is_fatal(make_client: MakeClient) -> None:
    fetched = make_client(Recorder(ok(text="<html>login</html>"))).fetch(
        Endpoint.GET_TEMPLATE_DETAILS
    )
    assert (fetched.delivery.ok, fetched.delivery.outcome) == (False, "fatal")


def test_fetch_refused_key_raises_auth_error(make_client: MakeClient) -> None:
    with pytest.raises(OptimoveAuthError):
        make_client(Recorder(ok(403))).fetch(Endpoint.GET_TEMPLATE_DETAILS)
