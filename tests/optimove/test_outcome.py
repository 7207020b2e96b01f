"""The single classifier, exercised directly on responses (the client table is in test_client)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from optisync.optimove.outcome import classify, classify_exception, error_text, parse_retry_after

TRANSACTIONAL = "https://api4.optimove.test/TransactionalMail/SendTransactionalMail"
ATTRIBUTES = "https://api4.optimove.test/Customers/UpdateCustomerAttributes"


def response(status: int, url: str = ATTRIBUTES, **kwargs: object) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", url), **kwargs)  # type: ignore[arg-type]


def test_transactional_is_detected_from_the_request_path() -> None:
    assert classify(response(206, TRANSACTIONAL, json={"Error": "Missing tags: NAME"})).kind == (
        "partial"
    )
    assert classify(response(409, TRANSACTIONAL)).kind == "duplicate"


def test_206_and_409_outside_transactional_mail() -> None:
    assert classify(response(206)).kind == "delivered"
    assert classify(response(409, text="conflict")).kind == "fatal"


def test_events_gateway_validation_error_in_a_200_is_fatal() -> None:
    body = {"status": "error", "message": "Failed to validate the event - unknown param"}
    outcome = classify(response(200, json=body))
    assert outcome.kind == "fatal"
    assert outcome.error == body["message"]


def test_events_gateway_success_is_delivered() -> None:
    assert classify(response(200, json={"status": "success", "message": "123"})).kind == (
        "delivered"
    )


def test_error_text_in_a_200_without_is_success_is_fatal() -> None:
    outcome = classify(response(200, json={"Error": "Invalid email"}))
    assert (outcome.kind, outcome.error) == ("fatal", "Invalid email")
    assert classify(response(200, json={"Error": None})).kind == "delivered"


def test_408_is_transient_and_other_statuses_are_fatal() -> None:
    assert classify(response(408)).kind == "transient"
    assert classify(response(404, json={"Error": "Invalid BrandId"})).kind == "fatal"
    assert classify(response(302, headers={"Location": "https://elsewhere"})).kind == "fatal"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"json": {"Error": "Invalid template"}}, "Invalid template"),
        (
            {"json": {"status": 429, "error": "Too Many Requests", "message": "slow down"}},
            "slow down",
        ),
        ({"json": "Authorization-Token Expired"}, "Authorization-Token Expired"),
        ({"text": "plain failure\n"}, "plain failure"),
        ({"json": {"errors": [{"error": "INVALID_FIELD"}]}}, '[{"error":"INVALID_FIELD"}]'),
        ({"content": b""}, None),
    ],
    ids=["json-Error", "json-message", "json-string", "plain-text", "errors-list", "empty"],
)
def test_error_text_sources(kwargs: dict[str, Any], expected: str | None) -> None:
    assert error_text(response(400, **kwargs)) == expected


def test_error_text_is_truncated() -> None:
    text = error_text(response(500, text="x" * 5000))
    assert text is not None
    assert len(text) == 500


def test_error_text_never_comes_from_headers() -> None:
    outcome = classify(response(500, headers={"X-Debug": "header-secret"}))
    assert outcome.error == "HTTP 500 Internal Server Error"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7", 7.0), ("1.5", 1.5), ("0", None), ("-3", None), ("soon", None), ("nan", None)],
)
def test_retry_after_seconds(value: str, expected: float | None) -> None:
    assert parse_retry_after(response(429, headers={"Retry-After": value})) == expected


def test_retry_after_http_date() -> None:
    now = datetime(2024, 5, 27, 10, 30, 0, tzinfo=UTC)
    r = response(503, headers={"Retry-After": "Mon, 27 May 2024 10:30:12 GMT"})
    assert parse_retry_after(r, now=now) == 12.0
    assert classify(r, now=now).retry_after == 12.0
    past = response(503, headers={"Retry-After": "Mon, 27 May 2024 10:00:00 GMT"})
    assert parse_retry_after(past, now=now) is None


def test_malformed_request_errors_are_fatal_not_retried() -> None:
    assert classify_exception(httpx.UnsupportedProtocol("ftp not supported")).kind == "fatal"
    assert classify_exception(httpx.ReadTimeout("")).error == "ReadTimeout"
