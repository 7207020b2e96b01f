"""Card-number guard: detection rules and masking."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from optisync.cards import find_card_numbers, is_luhn_valid, mask_card_numbers, mask_text

VISA = "4111111111111111"
VISA_13 = "4222222222222"
MASTERCARD = "5555555555554444"
AMEX = "378282246310005"
DISCOVER = "6011111111111117"
MAESTRO_19 = "6759649826438453003"  # 19 digits, passes Luhn

BLNS = Path(__file__).parent / "data" / "blns.json"  # shipped with the repository


@pytest.mark.parametrize("number", [VISA, VISA_13, MASTERCARD, AMEX, DISCOVER, MAESTRO_19])
def test_known_test_numbers_pass_luhn_and_are_found(number: str) -> None:
    assert is_luhn_valid(number)
    assert find_card_numbers(number) == ["$"]
    assert mask_text(number) == "*" * (len(number) - 4) + number[-4:]


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111 1111-1111 1111",
        "3782 822463 10005",
        "card 4111 1111 1111 1111 thanks",
        "card:4111111111111111.",
        "(4111111111111111)",
        "x4111111111111111y",
        "4111111111111111.00",
        "pay with 5555-5555-5555-4444, exp 12/27",
    ],
)
def test_formatted_and_embedded_numbers_are_found(text: str) -> None:
    assert find_card_numbers({"note": text}) == ["note"]


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("card 4111 1111 1111 1111 thanks", "card ************1111 thanks"),
        ("Amex 3782-822463-10005 ok", "Amex ***********0005 ok"),
        (f"a {VISA} b {MASTERCARD} c", "a ************1111 b ************4444 c"),
        ("nothing to see 1234.56", "nothing to see 1234.56"),
    ],
)
def test_masking_keeps_last_four_and_other_text(text: str, masked: str) -> None:
    assert mask_text(text) == masked


def test_card_followed_by_more_digit_groups_is_still_found() -> None:
    # Number + expiry make a 20-digit grouped run; the card's four groups are checked alone.
    text = "4111 1111 1111 1111 12 27"
    assert find_card_numbers(text) == ["$"]
    assert mask_text(text) == "************1111 12 27"


@pytest.mark.parametrize(
    "text",
    [
        "411111111111",  # 12 digits
        "4111 1111 1111",  # 12 digits with separators
        "4111111111111112",  # 16 digits, Luhn fails
        "4111-1111-1111-1112",
        "12345678901234567890",  # 20 digits
        "4111111111111111000000000",  # 25-digit order number whose first 16 pass Luhn
        "order 1234567890123456789012345",
        "+1 (555) 123-4567",
        "+44 20 7946 0958",
        "555-123-4567 ext 89",
        "2026-11-25",
        "2026-11-25T10:15:00-05:00",
        "25/11/2026 10:15",
        "1234.56",
        "amount 4111111.11 CAD",
        "4111--1111--1111--1111",
        "4111_1111_1111_1111",
        "4111.1111.1111.1111",
        "",
    ],
)
def test_negatives(text: str) -> None:
    assert find_card_numbers(text) == []
    assert mask_text(text) == text


def test_nested_values_report_dotted_paths() -> None:
    value = {
        "id": "evt-1",
        "data": {
            "cards": [{"note": "use 4111 1111 1111 1111"}, {"note": "none"}],
            "pan": int(VISA),
            "points": 5000,
            "ok": True,
        },
        "list": [["x", MASTERCARD]],
    }
    assert find_card_numbers(value) == ["data.cards.0.note", "data.pan", "list.0.1"]


@pytest.mark.parametrize(
    "number", [int(VISA), -int(VISA), float(VISA), Decimal(VISA), Decimal(VISA + ".00")]
)
def test_numbers_are_checked(number: object) -> None:
    assert find_card_numbers({"n": number}) == ["n"]
    assert mask_card_numbers({"n": number}) == {"n": "************1111"}


@pytest.mark.parametrize("number", [True, 5000, 1234.56, float("inf"), float("nan"), None])
def test_non_card_scalars_are_left_alone(number: object) -> None:
    assert find_card_numbers([number]) == []


def test_dict_keys_are_checked_and_masked_without_leaking_the_number() -> None:
    value = {VISA: "x", "outer": {f"k {MASTERCARD}": 1}, int(AMEX): "y"}
    paths = find_card_numbers(value)
    assert paths == ["************1111", "outer.k ************4444", "***********0005"]
    assert all(VISA not in p and MASTERCARD not in p for p in paths)
    masked = mask_card_numbers(value)
    assert masked == {
        "************1111": "x",
        "outer": {"k ************4444": 1},
        "***********0005": "y",
    }


def test_mask_returns_a_deep_copy_and_does_not_touch_the_input() -> None:
    original = {"a": [{"b": VISA}], "t": (MASTERCARD, 1), "keep": {"x": 1}}
    snapshot = json.loads(json.dumps(original))
    masked = mask_card_numbers(original)
    assert masked == {
        "a": [{"b": "************1111"}],
        "t": ("************4444", 1),
        "keep": {"x": 1},
    }
    assert masked["keep"] is not original["keep"]
    assert json.loads(json.dumps(original)) == snapshot
    assert original["t"] == (MASTERCARD, 1)


def test_mask_of_clean_value_is_equal() -> None:
    envelope = {
        "id": "evt-7f3a",
        "type": "REDEMPTION",
        "member_id": "M000123",
        "occurred_at": "2026-11-25T10:15:00-05:00",
        "data": {"points": 5000, "reward_value": {"amount": "25.00", "currency": "CAD"}},
    }
    assert find_card_numbers(envelope) == []
    assert mask_card_numbers(envelope) == envelope


def test_naughty_strings_do_not_crash() -> None:
    strings = json.loads(BLNS.read_text(encoding="utf-8"))
    for s in strings:
        masked = mask_text(s)
        assert find_card_numbers(masked) == []
    assert find_card_numbers(strings) == []


@given(st.text())
def test_masking_is_idempotent_and_leaves_no_card(text: str) -> None:
    masked = mask_text(text)
    assert find_card_numbers(masked) == []
    assert mask_text(masked) == masked


@given(st.integers(min_value=10**11, max_value=10**18 - 1), st.text(alphabet="ab .:/x"))
def test_embedded_luhn_numbers_are_always_found(payload: int, filler: str) -> None:
    digits = str(payload)  # 12 to 18 digits; a check digit makes a 13-19 digit card number
    card = digits + next(d for d in "0123456789" if is_luhn_valid(digits + d))
    text = f"{filler}x{card}x{filler}"
    assert find_card_numbers(text) == ["$"]
    assert mask_text(text).count("*") == len(card) - 4


@pytest.mark.parametrize(
    "text",
    [
        '{"note": "4111 1111 1111 1111"}',
        '{"n": 4111111111111111}',
        '{"n": 4.111111111111111e15}',
        '{"note": "\\u0034111111111111111"}',
        '{"note": "4111\\u00201111\\u002D1111 1111"}',
    ],
)
def test_raw_prefilter_never_misses_a_card(text: str) -> None:
    import json

    from optisync.cards import may_hold_card

    assert find_card_numbers(json.loads(text))
    assert may_hold_card(text)


def test_raw_prefilter_skips_ordinary_events() -> None:
    from optisync.cards import may_hold_card

    assert not may_hold_card('{"id": "e1", "occurred_at": "2026-11-25T10:00:00Z", "n": 5000}')


# A reference of the prefilter as a single regex: the fast screen must answer exactly as it.
_REFERENCE = __import__("re").compile(
    r"[0-9](?:[ -]?[0-9]){12}|\\u00(?:3[0-9]|2[0dD])|[0-9][eE][+-]?[0-9]"
)


@given(
    st.lists(
        st.sampled_from(
            [*'0123456789  --eE+.\\u"xé4dD', "\\u0034", "\\u0020", "\\u002D", "\\u00e9"]
        ),
        max_size=40,
    ).map("".join)
)
def test_prefilter_screen_answers_exactly_as_the_regex(text: str) -> None:
    from optisync.cards import may_hold_card

    expected = _REFERENCE.search(text) is not None
    assert may_hold_card(text) is expected
    assert may_hold_card(text.encode()) is expected


def test_prefilter_skips_escapes_that_write_no_digit_or_separator() -> None:
    from optisync.cards import may_hold_card

    assert not may_hold_card('{"name": "Zo\\u00eb C\\u00f4t\\u00ea", "n": 5000}')
    assert may_hold_card('{"name": "\\u0034"}')
    assert may_hold_card('{"name": "\\u002d"}')
