"""Card numbers never leave: every outgoing body is checked inside the client (push,
replay, every target), Unicode digits and spaces are read as the digits and spaces they
are, and batch never prints or stores an EMD key name holding one (docs/security.md)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from optisync.cards import find_card_numbers, mask_text, may_hold_card
from optisync.errors import ExitCode
from optisync.optimove.client import OptimoveClient
from optisync.realtime.deadletter import DeadLetterStore
from tests.support import EXAMPLES, FakeOptimove, make_settings

PAN = "4111111111111111"


def digits_from(zero: int, text: str = PAN) -> str:
    """``text`` with its ASCII digits written in the script whose zero is ``zero``."""
    return text.translate({48 + d: zero + d for d in range(10)})


DISGUISED = [
    digits_from(0xFF10),  # full-width digits
    digits_from(0x0660),  # Arabic-Indic digits
    digits_from(0x06F0),  # Extended Arabic-Indic (Persian) digits
    "4111\u00a01111\u00a01111\u00a01111",  # no-break spaces
    "4111\u202f1111\u20091111\u30001111",  # narrow no-break, thin, ideographic spaces
    "4111  1111   1111  1111",  # double and triple spaces
    "4111\u20131111\u20131111\u20131111",  # en dashes
    "4111\u200b1111\u200b1111\u200b1111",  # zero-width spaces
]


@pytest.mark.parametrize("text", DISGUISED)
def test_disguised_card_numbers_are_caught_and_masked(text: str) -> None:
    value = {"note": f"card {text} thanks"}
    assert find_card_numbers(value) == ["note"]
    masked = mask_text(value["note"])
    assert masked == "card ************1111 thanks"
    # the prefilters send it to the full check, as text, as bytes and as escaped JSON
    assert may_hold_card(json.dumps(value, ensure_ascii=False))
    assert may_hold_card(json.dumps(value, ensure_ascii=False).encode())
    assert may_hold_card(json.dumps(value))  # \uff14 ... escapes


def test_ordinary_unicode_text_is_not_flagged() -> None:
    for text in ["José Müller", digits_from(0xFF10, "2026-11-25"), "Tel ٠١٢ ٣٤٥", "1234\u00a05678"]:
        assert find_card_numbers({"t": text}) == []
        assert mask_text(text) == text


def test_client_refuses_a_body_holding_a_card_number_on_every_target() -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200, json={}))
    client = OptimoveClient(make_settings(), transport=transport)
    for endpoint in (
        "events",
        "/Customers/UpdateCustomerAttributes",
        "/Integrations/AddPromotions",
    ):
        for body in (
            {"data": {"note": PAN}},
            {"data": {"note": DISGUISED[0]}},
            json.dumps([{"v": DISGUISED[3]}]).encode(),
        ):
            delivery = client.send(endpoint, body)
            assert (delivery.ok, delivery.outcome, delivery.attempts) == (False, "invalid", 0)
            assert delivery.error is not None and "card-number-like" in delivery.error
            assert PAN not in delivery.error
    assert seen == []
    assert client.send("events", {"data": {"n": 1}}).ok
    assert len(seen) == 1


def test_replay_does_not_send_an_edited_letter_holding_a_card_number(
    fake: FakeOptimove, tmp_path: Path
) -> None:
    fake.status["UpdateCustomerAttributes"] = 503
    fake.push(EXAMPLES / "events.ndjson", expect=ExitCode.UNAVAILABLE)
    store = DeadLetterStore(tmp_path / "dl")
    (path, letter), *_ = [
        (p, x)
        for p, x in store.iter_letters()
        if x.endpoint == "/Customers/UpdateCustomerAttributes"
    ]
    stored = json.loads(path.read_text())
    _set_first_string(stored["request"], PAN)  # an operator's edit, or an attacker's
    assert PAN in json.dumps(stored["request"])
    path.write_text(json.dumps(stored))
    fake.status.clear()
    fake.requests.clear()
    outcome = fake.replay(expect=ExitCode.PARTIAL)
    assert all(PAN not in json.dumps(body) for _, body in fake.requests)
    assert outcome.data["dead_lettered"] >= 1
    kept = json.loads(path.read_text())  # the letter stays, saying why
    assert kept["error"]["class"] == "invalid"
    assert "card-number-like" in kept["error"]["message"]
    assert PAN not in path.read_text()


def _set_first_string(value: object, text: str) -> bool:
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else []
    )
    for key, item in list(items):
        if isinstance(item, str):
            value[key] = text  # type: ignore[index]
            return True
        if _set_first_string(item, text):
            return True
    return False


def test_the_generated_idempotency_key_is_not_mistaken_for_a_card_number() -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200, json={}))
    client = OptimoveClient(make_settings(), transport=transport)
    # a digest whose digits happen to hold a Luhn-valid run, as one of the examples does
    digest = "f8532724446797e" + PAN + "e225ee728"
    body = {"TemplateID": 1, "UniqueMessageID": f"optisync-{digest}", "Recipients": []}
    assert len(digest) == 40 and find_card_numbers(body) == ["UniqueMessageID"]
    assert client.send("/TransactionalMail/SendTransactionalMail", body).ok
    # any other shape there is checked like every other field
    body["UniqueMessageID"] = f"optisync-{PAN}"
    assert client.send("/TransactionalMail/SendTransactionalMail", body).outcome == "invalid"
    assert len(seen) == 1
