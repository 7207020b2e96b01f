"""The input envelope and typed event data (docs/envelope.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from optisync.events import DATA_MODELS, EventType, has_path, parse_envelope
from tests.support import EXAMPLES, invoke


def sample(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "REDEMPTION",
        "member_id": "M000123",
        "occurred_at": "2026-11-25T10:15:00-05:00",
        "data": {
            "redemption_id": "R9",
            "points": 5000,
            "reward_name": "Gift card",
            "reward_value": {"amount": "25.00", "currency": "CAD"},
        },
    }
    base.update(over)
    return base


def test_examples_hold_every_type_and_all_are_valid() -> None:
    lines = (EXAMPLES / "events.ndjson").read_text().splitlines()
    kinds = {parse_envelope(json.loads(line)).type for line in lines if line.strip()}
    assert kinds == set(EventType)


def test_deterministic_id_when_absent() -> None:
    a = parse_envelope(sample()).message_id
    assert a == parse_envelope(sample()).message_id
    assert a.startswith("sha256-")
    assert a != parse_envelope(sample(member_id="M9")).message_id
    assert parse_envelope(sample(id="evt-1")).message_id == "evt-1"


def test_same_instant_in_another_offset_is_the_same_message() -> None:
    a = parse_envelope(sample(occurred_at="2026-11-25T10:15:00-05:00")).message_id
    b = parse_envelope(sample(occurred_at="2026-11-25T15:15:00+00:00")).message_id
    assert a == b


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"type": "NOPE"}, ("type",)),
        ({"occurred_at": "2026-11-25T10:15:00"}, ("occurred_at",)),  # no offset
        ({"member_id": ""}, ("member_id",)),
        ({"email": "not-an-email"}, ("email",)),
        ({"extra": 1}, ("extra",)),
        ({"data": {"redemption_id": "R", "points": -5, "reward_name": "x"}}, ("data", "points")),
        (
            {
                "data": {
                    "redemption_id": "R",
                    "points": 1,
                    "reward_name": "x",
                    "reward_value": {"amount": "1,5", "currency": "CAD"},
                }
            },
            ("data", "reward_value", "amount"),
        ),
        ({"data": "oops"}, ("data",)),
    ],
)
def test_invalid_envelopes_name_the_field(change: dict[str, Any], loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        parse_envelope(sample(**change))
    assert loc in [tuple(e["loc"]) for e in info.value.errors()]


def test_money_keeps_decimal_string() -> None:
    event = parse_envelope(sample())
    assert event.data.reward_value.amount == "25.00"  # type: ignore[attr-defined]


def test_paths() -> None:
    assert has_path(EventType.REDEMPTION, "data.reward_value.amount")
    assert has_path(EventType.REDEMPTION, "member_id")
    assert not has_path(EventType.REDEMPTION, "data.tier")
    assert has_path(EventType.MEMBER_PROFILE_UPDATE, "data.emd.anything")
    assert not has_path(EventType.REDEMPTION, "data.emd.anything")


def test_schema_command_prints_every_type() -> None:
    schema = json.loads(invoke("schema", "events").stdout)
    assert [b["title"] for b in schema["oneOf"]] == [k.value for k in EventType]
    for model in DATA_MODELS.values():
        assert model.__name__ in schema["$defs"]
    assert schema["required"] == ["type", "member_id", "occurred_at", "data"]


def test_an_unknown_type_is_the_only_error_reported() -> None:
    import pydantic

    from optisync.events import parse_envelope

    with pytest.raises(pydantic.ValidationError) as err:
        parse_envelope(
            {
                "type": "NOPE",
                "member_id": "M1",
                "occurred_at": "2026-01-01T00:00:00Z",
                "data": {"tier": "Gold"},
            }
        )
    assert [e["loc"] for e in err.value.errors()] == [("type",)]


def test_an_envelope_dumps_its_typed_data_whole() -> None:
    """A dead letter stores ``envelope.model_dump``: the data must survive it, not become {}."""
    from optisync.events import parse_envelope

    raw = {
        "type": "REDEMPTION",
        "member_id": "M1",
        "occurred_at": "2026-01-01T00:00:00Z",
        "data": {
            "redemption_id": "R1",
            "points": 250,
            "reward_name": "Free coffee",
            "reward_value": {"amount": "12.50", "currency": "CAD"},
        },
    }
    dumped = parse_envelope(raw).model_dump(mode="json")
    assert dumped["data"]["redemption_id"] == "R1"
    assert dumped["data"]["reward_value"]["currency"] == "CAD"
    assert dumped["data"]["points"] == 250
    assert parse_envelope(dumped) == parse_envelope(raw)
