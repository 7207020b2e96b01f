"""Inputs that must not stop a run: deep nesting and non-finite numbers become one invalid
letter each, and the lines around them are delivered (docs/security.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from optisync.errors import ExitCode
from optisync.realtime.deadletter import DeadLetterStore
from optisync.realtime.inputs import EventSource
from tests.support import EXAMPLES, FakeOptimove

LINES = (EXAMPLES / "events.ndjson").read_text(encoding="utf-8").splitlines()


def letters(tmp_path: Path) -> list[dict[str, Any]]:
    store = DeadLetterStore(tmp_path / "dl")
    return [letter.model_dump(mode="json", by_alias=True) for _, letter in store.iter_letters()]


def deep(depth: int) -> str:
    """A 300-deep line is about 700 bytes: the attack is cheap."""
    return '{"id": "evt-deep", "type": "REDEMPTION", "data": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize("depth", [300, 5000, 100_000])
def test_deeply_nested_line_is_one_invalid_letter_and_the_rest_is_delivered(
    fake: FakeOptimove, tmp_path: Path, depth: int
) -> None:
    path = tmp_path / "in.ndjson"
    path.write_text("\n".join([LINES[0], deep(depth), LINES[1]]) + "\n", encoding="utf-8")
    summary = fake.push(path, expect=ExitCode.INVALID_INPUT).data
    assert (summary["read"], summary["invalid"], summary["sent"]) == (3, 1, 2)
    (letter,) = letters(tmp_path)
    assert letter["error"]["class"] == "invalid"
    assert "nested too deeply" in letter["error"]["message"]
    assert letter["source"]["line"] == 2


def test_deeply_nested_file_is_one_invalid_letter(fake: FakeOptimove, tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(deep(300), encoding="utf-8")
    fake.push(EventSource(file=path), expect=ExitCode.INVALID_INPUT)
    (letter,) = letters(tmp_path)
    assert "nested too deeply" in letter["error"]["message"]


def emd_line(value: str, member: str = "M000123", n: int = 0) -> str:
    return (
        f'{{"id": "evt-emd-{n}", "type": "MEMBER_PROFILE_UPDATE", "member_id": "{member}",'
        f' "occurred_at": "2026-11-25T11:00:00Z", "data": {{"emd": {{"shoe_size": {value},'
        f' "favourite_store": "Queen St"}}}}}}'
    )


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1" + "0" * 400 + ".5", "1E+400"])
def test_non_finite_emd_number_is_one_invalid_letter_and_the_rest_is_delivered(
    fake: FakeOptimove, tmp_path: Path, number: str
) -> None:
    path = tmp_path / "in.ndjson"
    lines = [
        emd_line("8", "M000123", 1),
        emd_line(number, "M000124", 2),
        emd_line("9", "M000125", 3),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = fake.push(path, expect=ExitCode.INVALID_INPUT).data
    assert (summary["read"], summary["invalid"], summary["sent"]) == (3, 1, 2)
    (letter,) = letters(tmp_path)
    assert letter["error"]["class"] == "invalid"
    assert "out of range" in letter["error"]["message"]
    sent = json.dumps(fake.bodies("UpdateCustomerAttributes"))
    assert "M000123" in sent and "M000125" in sent and "M000124" not in sent


def test_the_client_refuses_a_non_finite_body_instead_of_failing_the_run() -> None:
    import httpx

    from optisync.optimove.client import OptimoveClient
    from tests.support import make_settings

    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200, json={}))
    client = OptimoveClient(make_settings(), transport=transport)
    delivery = client.send("/Customers/UpdateCustomerAttributes", [{"Value": float("inf")}])
    assert (delivery.ok, delivery.outcome) == (False, "invalid")
    assert seen == []
