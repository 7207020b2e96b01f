"""Contract tests: the Optimove client against recorded sandbox answers (vcrpy cassettes).

CI plays the cassettes (record_mode "none": a request not in the cassette fails the test).
To re-record against a live sandbox: ``OPTISYNC_RECORD=1 .venv/bin/pytest tests/cassettes``.
Secrets never reach the cassettes: the API key and the event signature are replaced by
verdicts on them (the test key or another one; a signature that verifies against the test
token or not), and playing matches those verdicts, so a request without its key or with a
bad signature finds no answer.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import vcr

from optisync.config.models import OptimoveSettings
from optisync.optimove.client import OptimoveAuthError, OptimoveClient
from optisync.optimove.outcome import Endpoint

HERE = Path(__file__).parent / "data"
RECORD = os.environ.get("OPTISYNC_RECORD") == "1"
PORT = 18765
URL = f"http://127.0.0.1:{PORT}"
# The secrets used when recording; only their scrubbed stand-ins reach the cassettes.
KEY = os.environ.get("OPTISYNC_RECORD_KEY", "contract-key")
TOKEN = os.environ.get("OPTISYNC_RECORD_TOKEN", "contract-token")
TEST_KEY, OTHER_KEY = "the-test-key", "another-key"
SIGNED, BAD_SIGNATURE = "signed-with-the-test-token", "not-signed-with-the-test-token"


def auth_verdicts(request: Any) -> Any:
    """The request with its secrets replaced by what they prove (recording and playing)."""
    request = copy.deepcopy(request)
    key = request.headers.get("X-API-KEY")
    if key is not None and key not in {TEST_KEY, OTHER_KEY}:  # applied once per request
        request.headers["X-API-KEY"] = TEST_KEY if key == KEY else OTHER_KEY
    signature = request.headers.get("X-Optimove-Signature-Content")
    if signature is not None and signature not in {SIGNED, BAD_SIGNATURE}:
        body = request.body or b""
        body = body.encode() if isinstance(body, str) else body
        good = hmac.new(TOKEN.encode(), body, hashlib.sha256).hexdigest()
        request.headers["X-Optimove-Signature-Content"] = (
            SIGNED if hmac.compare_digest(signature.lower(), good) else BAD_SIGNATURE
        )
    return request


def auth(r1: Any, r2: Any) -> None:
    """Same key verdict (or both without a key) and same signature verdict."""
    for name in ("X-API-KEY", "X-Optimove-Signature-Content", "X-Optimove-Signature-Version"):
        assert r1.headers.get(name) == r2.headers.get(name), name


recorder = vcr.VCR(
    cassette_library_dir=str(HERE),
    record_mode="all" if RECORD else "none",
    match_on=["method", "scheme", "host", "port", "path", "query", "body", "auth"],
    before_record_request=auth_verdicts,
    decode_compressed_response=True,
)
recorder.register_matcher("auth", auth)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[None]:
    if not RECORD:
        yield
        return
    from optisync.sandbox import Sandbox, SandboxConfig

    config = SandboxConfig(
        api_key=KEY,
        tenant_id=1234,
        events_token=TOKEN,
        templates={11: frozenset({"POINTS", "NAME"})},
    )
    with Sandbox(config, port=PORT):
        yield


class ViaHttpxClient(httpx.BaseTransport):
    """vcrpy hooks httpx.Client; the optisync client drives a transport directly, so the
    contract tests route through an httpx.Client that vcrpy can record and play."""

    def __init__(self) -> None:
        self.client = httpx.Client()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.client.send(request)

    def close(self) -> None:
        self.client.close()


def client(key: str = KEY) -> OptimoveClient:
    settings = OptimoveSettings.model_validate(
        {
            "api_url": URL,
            "events_url": f"{URL}/reportEvent",
            "tenant_id": 1234,
            "api_key": key,
            "events_token": TOKEN,
            "retry": {"max_attempts": 1},
        }
    )
    return OptimoveClient(settings, transport=ViaHttpxClient(), sleep=lambda _: None)


def mail(uid: str, personalizations: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "TemplateID": 11,
        "UniqueMessageID": uid,
        "Recipients": [{"Email": "ann@example.com", "Personalizations": personalizations}],
    }


EVENT = {
    "tenant": 1234,
    "event": "member_tier",
    "customer": "M1",
    "timestamp": "2026-11-25 15:00:00.000000 UTC",
    "context": {"tier": "Gold"},
}


@pytest.mark.usefixtures("sandbox")
def test_cassette_is_really_played() -> None:
    with recorder.use_cassette("events.yaml") as cassette, client() as c:
        delivery = c.send(Endpoint.EVENTS, EVENT)
    assert delivery.ok and delivery.status == 200
    if not RECORD:
        assert cassette.play_count == 1
        assert cassette.all_played


@pytest.mark.usefixtures("sandbox")
def test_transactional_mail_contract() -> None:
    tags = [{"Tag": "POINTS", "Value": "5 000"}, {"Tag": "NAME", "Value": "Ann"}]
    with recorder.use_cassette("transactional.yaml"), client() as c:
        first = c.send(Endpoint.SEND_TRANSACTIONAL_MAIL, mail("uid-1", tags))
        again = c.send(Endpoint.SEND_TRANSACTIONAL_MAIL, mail("uid-1", tags))
        missing = c.send(Endpoint.SEND_TRANSACTIONAL_MAIL, mail("uid-2", tags[:1]))
        unknown = c.send(
            Endpoint.SEND_TRANSACTIONAL_MAIL, {**mail("uid-3", tags), "TemplateID": 99}
        )
    assert (first.outcome, first.status) == ("delivered", 200)
    assert (again.outcome, again.status) == ("duplicate", 409)
    assert (missing.outcome, missing.status) == ("partial", 206)
    assert missing.error is not None and "NAME" in missing.error
    assert unknown.outcome == "fatal" and unknown.error == "Invalid template"


@pytest.mark.usefixtures("sandbox")
def test_attributes_and_promotions_contract() -> None:
    body = {
        "CustomerNewAttributesValuesList": [
            {"CustomerID": "M1", "Attributes": [{"RealFieldName": "TierName", "Value": "Gold"}]}
        ]
    }
    with recorder.use_cassette("attributes.yaml"), client() as c:
        attrs = c.send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, body)
        too_many = c.send(
            Endpoint.UPDATE_CUSTOMER_ATTRIBUTES,
            {
                "CustomerNewAttributesValuesList": [
                    {"CustomerID": f"M{i}", "Attributes": [{"RealFieldName": "A", "Value": 1}]}
                    for i in range(1001)
                ]
            },
        )
        promos = c.send(
            Endpoint.ADD_PROMOTIONS, [{"PromoCode": "P1", "PromotionName": "Double points"}]
        )
    assert attrs.ok and attrs.status == 202
    assert too_many.outcome == "fatal" and too_many.status == 400
    assert promos.ok and promos.status == 200


@pytest.mark.usefixtures("sandbox")
def test_bad_key_contract() -> None:
    with (
        recorder.use_cassette("auth.yaml"),
        client("not-the-key") as c,
        pytest.raises(OptimoveAuthError) as info,
    ):
        c.send(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, {"CustomerNewAttributesValuesList": []})
    assert info.value.delivery.status == 403


def test_cassettes_hold_no_secret() -> None:
    text = "".join(p.read_text() for p in sorted(HERE.glob("*.yaml")))
    assert text, "no cassettes recorded"
    for secret in (KEY, TOKEN, "not-the-key"):
        assert secret not in text
    assert f"- {TEST_KEY}" in text and f"- {SIGNED}" in text and f"- {OTHER_KEY}" in text
