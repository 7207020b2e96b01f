"""push-event and replay through their command functions, with Optimove replaced by an
httpx.MockTransport injected as the client factory; a few through the CLI where no request
goes out."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from optisync.commands import realtime as commands
from optisync.errors import ExitCode
from optisync.realtime.deadletter import DeadLetterStore
from optisync.realtime.inputs import EventSource
from tests.support import EXAMPLES, KEY, FakeOptimove, invoke

Handler = Callable[[httpx.Request], httpx.Response]


def letters(tmp_path: Path) -> list[dict[str, Any]]:
    store = DeadLetterStore(tmp_path / "dl")
    return [letter.model_dump(mode="json", by_alias=True) for _, letter in store.iter_letters()]


def test_examples_push_every_target(fake: FakeOptimove, tmp_path: Path) -> None:
    summary = fake.push(EXAMPLES / "events.ndjson").data
    assert summary["read"] == 11
    assert summary["sent"] == 11
    assert summary["dead_lettered"] == 0
    assert letters(tmp_path) == []
    events = fake.bodies("reportEvent")
    redemption = next(e for e in events if e["event"] == "redemption")
    assert redemption == {
        "tenant": 1234,
        "event": "redemption",
        "customer": "M000124",
        "timestamp": "2026-11-25 15:15:00.000000 UTC",
        "context": {
            "redemption_id": "R9",
            "points": 5000,
            "reward_name": "Carte-cadeau",
            "reward_value": "1\xa0234,50\xa0$",
        },
    }
    # attribute updates are packed: a call holds each customer once, so a customer seen
    # again starts the next call (6 updates, M000123 three times -> 3 calls)
    calls = fake.bodies("UpdateCustomerAttributes")
    assert len(calls) == 3
    customers: dict[str, list[Any]] = {}
    for call in calls:
        ids = [e["CustomerID"] for e in call["CustomerNewAttributesValuesList"]]
        assert len(ids) == len(set(ids))
        for entry in call["CustomerNewAttributesValuesList"]:
            customers.setdefault(entry["CustomerID"], []).extend(entry["Attributes"])
    assert {"RealFieldName": "TierName", "Value": "Gold"} in customers["M000124"]
    assert {"RealFieldName": "FavouriteStore", "Value": "Queen St"} in customers["M000123"]
    mails = fake.bodies("SendTransactionalMail")
    assert {m["TemplateID"] for m in mails} == {1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008}
    receipt = next(m for m in mails if m["TemplateID"] == 1001)
    assert receipt["Recipients"][0]["Email"] == "marc@example.com"
    assert {"Tag": "REWARD_VALUE", "Value": "1\xa0234,50\xa0$"} in (
        receipt["Recipients"][0]["Personalizations"]
    )
    assert receipt["UniqueMessageID"].startswith("optisync-")


def test_customers_seen_twice_keep_order_in_separate_calls(
    fake: FakeOptimove, tmp_path: Path
) -> None:
    lines = [
        {
            "type": "MEMBER_TIER",
            "member_id": "M1",
            "occurred_at": "2026-11-25T10:00:00Z",
            "data": {"tier": tier},
        }
        for tier in ("Silver", "Gold")
    ]
    path = tmp_path / "in.ndjson"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    fake.push(path, only=["attributes"])
    calls = fake.bodies("UpdateCustomerAttributes")
    assert [c["CustomerNewAttributesValuesList"][0]["Attributes"][0]["Value"] for c in calls] == [
        "Silver",
        "Gold",
    ]
    assert fake.bodies("reportEvent") == []


def test_invalid_lines_are_dead_lettered_and_the_rest_sent(
    fake: FakeOptimove, tmp_path: Path
) -> None:
    good = (EXAMPLES / "events.ndjson").read_text().splitlines()[2]
    path = tmp_path / "in.ndjson"
    path.write_text(
        "\n".join(
            [
                good,
                "",
                "{not json",
                json.dumps(
                    {
                        "type": "REDEMPTION",
                        "member_id": "M1",
                        "occurred_at": "2026-11-25T10:00:00Z",
                        "data": {"points": "many"},
                    }
                ),
                json.dumps(
                    {
                        "type": "PURCHASE",
                        "member_id": "M1",
                        "occurred_at": "2026-11-25T10:00:00Z",
                        "data": {"note": "card 4111 1111 1111 1111"},
                    }
                ),
                '{"type": "REDEMPTION", "n": NaN}',
            ]
        )
        + "\n"
    )
    result = fake.push(path, expect=ExitCode.INVALID_INPUT)
    summary = result.data
    assert (summary["read"], summary["valid"], summary["invalid"], summary["sent"]) == (5, 1, 4, 1)
    found = {letter["source"]["line"]: letter for letter in letters(tmp_path)}
    assert sorted(found) == [3, 4, 5, 6]
    assert all(x["kind"] == "input" and x["error"]["class"] == "invalid" for x in found.values())
    assert found[3]["error"]["message"].startswith("bad JSON: Expecting property name")
    assert "data.redemption_id: Field required" in found[4]["error"]["message"]
    assert found[5]["error"]["message"] == (
        "data.note: holds a card-number-like value; such messages are never sent"
    )
    # (not a bare "4111": the letter's random hex ids may contain it by chance)
    text = json.dumps(found[5])
    assert "4111 1111" not in text and "4111111111111111" not in text
    assert "************1111" in text
    assert "NaN is not valid JSON" in found[6]["error"]["message"]
    assert result.message.startswith(f"4 invalid record(s) kept in {tmp_path / 'dl'} ")


def test_dry_run_sends_and_writes_nothing(fake: FakeOptimove, tmp_path: Path) -> None:
    result = invoke("push-event", "--dry-run", "--input", str(EXAMPLES / "events.ndjson"))
    assert fake.requests == []
    assert not (tmp_path / "dl").exists()
    first = result.stdout.splitlines()[0]
    assert first == (
        "line 1 evt-0001 MEMBER_REGISTRATION -> events, attributes, opt_in,"
        " email:welcome (rules: registration)"
    )
    assert "/TransactionalMail/SendTransactionalMail" in result.stdout


def test_single_event_from_flags(fake: FakeOptimove) -> None:
    source = EventSource(
        type="MEMBER_TIER",
        member="M7",
        event_id="e1",
        occurred_at="2026-11-25T10:00:00+01:00",
        data='{"tier": "Gold"}',
    )
    fake.push(source, only=["events"])
    assert fake.bodies("reportEvent") == [
        {
            "tenant": 1234,
            "event": "member_tier",
            "customer": "M7",
            "timestamp": "2026-11-25 09:00:00.000000 UTC",
            "context": {"tier": "Gold"},
        }
    ]


def test_usage_errors(fake: FakeOptimove) -> None:
    invoke("push-event", expect=ExitCode.USAGE)
    invoke("push-event", "--input", "x", "--only", "webhooks", expect=ExitCode.USAGE)
    invoke("push-event", "--type", "MEMBER_TIER", expect=ExitCode.USAGE)


def test_a_refused_request_is_dead_lettered_and_run_goes_on(
    fake: FakeOptimove, tmp_path: Path
) -> None:
    fake.status["UpdateCustomerAttributes"] = 400
    result = fake.push(EXAMPLES / "events.ndjson", expect=ExitCode.PARTIAL)
    summary = result.data
    # the six messages that update attributes; the registration creates its customer
    assert summary["dead_lettered"] == 6
    found = letters(tmp_path)
    assert {x["kind"] for x in found} == {"attributes"}
    assert all(
        x["error"] == {"class": "fatal", "status": 400, "message": "forced 400"} for x in found
    )
    # each letter holds that message's own request, ready to replay
    assert all(len(x["request"]["CustomerNewAttributesValuesList"]) == 1 for x in found)
    assert len(fake.bodies("SendTransactionalMail")) == 8
    # the error says where the letters are
    assert (
        result.message
        == f"6 message(s) dead-lettered in {tmp_path / 'dl'} (5 sent, 6 dead-lettered)"
    )


def test_bad_key_stops_the_run_and_keeps_everything(fake: FakeOptimove, tmp_path: Path) -> None:
    fake.status["Mail"] = 401
    fake.status["Attributes"] = 401
    result = fake.push(EXAMPLES / "events.ndjson", expect=ExitCode.REFUSED)
    summary = result.data
    assert summary["stopped"] == "auth"
    assert summary["sent"] + summary["dead_lettered"] == 11
    assert any(x["error"]["class"] == "auth" for x in letters(tmp_path))
    assert result.message.endswith(f"undelivered messages were dead-lettered in {tmp_path / 'dl'}")
    assert KEY not in json.dumps(summary) + result.message + str(result.error.hint)
    assert KEY not in json.dumps(letters(tmp_path))


def test_unavailable_after_retries_exits_6(fake: FakeOptimove, tmp_path: Path) -> None:
    fake.status["reportEvent"] = 503
    result = fake.push(EXAMPLES / "events.ndjson", expect=ExitCode.UNAVAILABLE)
    summary = result.data
    assert summary["stopped"] == "unavailable"
    assert summary["sent"] + summary["dead_lettered"] == 11
    assert {x["error"]["class"] for x in letters(tmp_path)} == {"transient"}
    assert result.message == (
        "Optimove unavailable after 2 attempts on events: forced 503;"
        f" undelivered messages were dead-lettered in {tmp_path / 'dl'}"
    )


def test_replay_drains_after_the_cause_is_fixed(fake: FakeOptimove, tmp_path: Path) -> None:
    fake.status["UpdateCustomerAttributes"] = 503
    fake.push(EXAMPLES / "events.ndjson", expect=ExitCode.UNAVAILABLE)
    before = letters(tmp_path)
    assert before
    # still failing: letters stay, attempts raised
    failed = fake.replay(limit=1, expect=ExitCode.UNAVAILABLE)
    # replay stops by the same rule, and says so in the same words, as push-event
    assert failed.message == (
        "Optimove unavailable after 2 attempts on /Customers/UpdateCustomerAttributes:"
        f" forced 503; undelivered messages were dead-lettered in {tmp_path / 'dl'}"
    )
    after = letters(tmp_path)
    assert len(after) == len(before)
    assert sorted(x["attempts"] for x in after)[-1] == before[0]["attempts"] + 1
    fake.status.clear()
    fake.requests.clear()
    summary = fake.replay().data
    assert summary["sent"] == len(before)
    assert letters(tmp_path) == []
    # the exact bodies that failed went out again
    resent = [json.dumps(b, sort_keys=True) for _, b in fake.requests]
    assert sorted(resent) == sorted(json.dumps(x["request"], sort_keys=True) for x in before)


def test_replaying_a_delivered_email_is_not_sent_twice(fake: FakeOptimove, tmp_path: Path) -> None:
    """A lost response: Optimove sent the mail, we dead-lettered it; replay gets 409."""
    path = tmp_path / "one.ndjson"
    path.write_text((EXAMPLES / "events.ndjson").read_text().splitlines()[2])
    fake.status["SendTransactionalMail"] = 502
    fake.push(path, only=["email"], expect=ExitCode.UNAVAILABLE)
    (letter,) = letters(tmp_path)
    fake.sent_uids.add(letter["request"]["UniqueMessageID"])  # it did go out, unseen
    fake.status.clear()
    assert fake.replay().data["duplicates"] == 1
    assert letters(tmp_path) == []


def test_replay_skips_invalid_input_letters(fake: FakeOptimove, tmp_path: Path) -> None:
    path = tmp_path / "bad.ndjson"
    path.write_text("[1, 2]\n")
    fake.push(path, expect=ExitCode.INVALID_INPUT)
    summary = fake.replay().data
    assert (summary["letters"], summary["not_replayable"], summary["sent"]) == (1, 1, 0)
    assert len(letters(tmp_path)) == 1


def test_overlapping_run_exits_75(fake: FakeOptimove, tmp_path: Path) -> None:
    from optisync.lock import RunLock

    (tmp_path / "dl").mkdir()
    with RunLock(tmp_path / "dl" / "run.lock", command="replay"):
        result = invoke("replay", expect=ExitCode.LOCKED)
        assert "another optisync run" in result.stderr
        invoke("push-event", "--input", str(EXAMPLES / "events.ndjson"), expect=ExitCode.LOCKED)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("event", {"reportEvent"}),
        ("unsubscribe_list", {"AddUnsubscribers"}),
        ("both", {"reportEvent", "AddUnsubscribers"}),
    ],
)
def test_opt_out_reaches_optimove_by_the_configured_method(
    fake: FakeOptimove,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    expected: set[str],
) -> None:
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__OPT_IN__METHOD", method)
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__OPT_IN__BRAND_ID", "7")
    event = {
        "id": "p1",
        "type": "MEMBER_PROFILE_UPDATE",
        "member_id": "M1",
        "email": "ann@example.com",
        "occurred_at": "2026-11-25T10:00:00Z",
        "data": {"emd": {"email_opt_in": "N"}},
    }
    path = tmp_path / "one.ndjson"
    path.write_text(json.dumps(event))
    fake.push(path, only=["opt_in"])
    paths = {p.rsplit("/", 1)[-1] for p, _ in fake.requests}
    assert paths == expected
    if "AddUnsubscribers" in expected:
        assert fake.bodies("AddUnsubscribers") == [
            {"BrandId": 7, "EmailAddresses": ["ann@example.com"]}
        ]
    if "reportEvent" in expected:
        (body,) = fake.bodies("reportEvent")
        assert (body["event"], body["context"]) == ("opt_in_email", {"opted_in": False})


UNROUTED_CONFIG = """
optimove:
  api_url: http://127.0.0.1:9
  events_url: http://127.0.0.1:9/reportEvent
  tenant_id: 1234
  events_token: ${OPTIMOVE_EVENTS_TOKEN}
events:
  MEMBER_TIER: {name: member_tier, context: {tier: data.tier}}
routing:
  rules:
    - {types: [MEMBER_TIER], where: [{field: data.tier, op: eq, value: Gold}], to: [events]}
  unrouted: dead_letter
"""


def test_an_unrouted_message_is_kept_as_an_input_letter(
    fake: FakeOptimove, tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    config = write_config(UNROUTED_CONFIG)
    path = tmp_path / "in.ndjson"
    path.write_text(
        "\n".join(
            json.dumps(
                {
                    "id": f"t-{tier}",
                    "type": "MEMBER_TIER",
                    "member_id": "M1",
                    "occurred_at": "2026-11-25T10:00:00Z",
                    "data": {"tier": tier},
                }
            )
            for tier in ("Gold", "Silver")
        )
    )
    # a dry run writes no letter, and shows the message going nowhere
    dry = invoke("-c", str(config), "push-event", "--dry-run", "--input", str(path))
    assert "line 2 t-Silver MEMBER_TIER -> nothing (rules: )" in dry.stdout
    assert letters(tmp_path) == []
    summary = commands.push_event(
        config, EventSource(input=str(path)), client_factory=fake.client
    ).as_dict()
    assert (summary["sent"], summary["unrouted"], summary["dead_lettered"]) == (1, 1, 1)
    (letter,) = letters(tmp_path)
    assert (letter["kind"], letter["message_id"], letter["error"]["message"]) == (
        "input",
        "t-Silver",
        "no routing rule matches",
    )
    # a rerun of the same file skips what the journal says was kept
    again = commands.push_event(config, EventSource(input=str(path)), client_factory=fake.client)
    assert again.skipped == 2
    assert len(letters(tmp_path)) == 1


@pytest.mark.parametrize(
    "line",
    [
        {"id": "4111111111111111", "type": "MEMBER_TIER", "member_id": "M1"},
        {"id": "e1", "type": "NOPE 4111111111111111", "member_id": "M1"},
        {"id": "e1", "type": "MEMBER_TIER", "member_id": "4111-1111-1111-1111"},
    ],
    ids=["id", "type", "member_id"],
)
def test_no_card_number_reaches_a_letter_file_from_any_field(
    fake: FakeOptimove, tmp_path: Path, line: dict[str, str]
) -> None:
    path = tmp_path / "in.ndjson"
    path.write_text(json.dumps({**line, "occurred_at": "2026-11-25T10:00:00Z", "data": {}}) + "\n")
    fake.push(path, expect=ExitCode.INVALID_INPUT)
    written = [p.read_text() for p in (tmp_path / "dl").rglob("*.json")]
    assert len(written) == 1
    assert not re.search(r"4111.?1111.?1111.?1111", written[0])
    assert "1111" in written[0]  # masked, last four kept, so the record stays identifiable
