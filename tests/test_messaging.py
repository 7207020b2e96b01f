"""Messaging (issue 4) end to end against the live sandbox, with the example config:
routing, the six transactional kinds, the welcome email in both modes, opt-in, localized
amounts, 206/409 handling, bulk recipients and promotions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from optisync.commands.realtime import config_hash
from optisync.errors import ExitCode
from optisync.events import parse_envelope
from optisync.realtime.deadletter import DeadLetterStore
from optisync.realtime.localize import MemberLocale, format_value
from optisync.sandbox import Faults, Sandbox, SandboxConfig
from optisync.sandbox.templates import templates_from_config
from tests.support import EXAMPLES, invoke, use_sandbox

KEY, TOKEN = "messaging-key", "messaging-token"
EVENTS = [json.loads(line) for line in (EXAMPLES / "events.ndjson").read_text().splitlines()]


@pytest.fixture
def box(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Sandbox]:
    config = SandboxConfig(
        api_key=KEY,
        tenant_id=1234,
        events_token=TOKEN,
        templates=templates_from_config(EXAMPLES / "optisync.yaml"),
        enforce_limits=False,
    )
    with Sandbox(config) as sandbox:
        use_sandbox(monkeypatch, sandbox, tmp_path, KEY, TOKEN)
        yield sandbox


def push(
    tmp_path: Path, events: list[dict[str, Any]], *args: str, expect: int = ExitCode.OK
) -> dict[str, Any]:
    source = tmp_path / "in.ndjson"
    source.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    result = invoke("--json", "push-event", "--input", str(source), *args, expect=expect)
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def mails(box: Sandbox) -> dict[int, list[dict[str, Any]]]:
    """Accepted recipients by TemplateID, each with its personalizations as a dict."""
    out: dict[int, list[dict[str, Any]]] = {}
    for rec in box.received("transactional"):
        for r in rec["body"]["Recipients"]:
            tags = {p["Tag"]: p["Value"] for p in r.get("Personalizations", [])}
            out.setdefault(rec["body"]["TemplateID"], []).append({"Email": r["Email"], **tags})
    return out


def test_each_transactional_kind_reaches_optimove(box: Sandbox, tmp_path: Path) -> None:
    summary = push(tmp_path, EVENTS)
    assert summary["sent"] == 11
    got = mails(box)
    assert got[1001] == [
        {
            "Email": "marc@example.com",
            "POINTS": "5\xa0000",
            "REWARD_NAME": "Carte-cadeau",
            "REWARD_VALUE": "1\xa0234,50\xa0$",
            "POINTS_BALANCE": "1\xa0200",
            "REDEMPTION_ID": "R9",
            "REDEEMED_ON": "25 novembre 2026",
        }
    ]  # redemption, fr_CA
    assert got[1002] == [
        {
            "Email": "marc@example.com",
            "AMOUNT": "89,99\xa0$",
            "STORE_NAME": "Montréal Centre",
            "POINTS_EARNED": "90",
            "ORDER_ID": "O-991",
        }
    ]  # purchase
    assert got[1003] == [
        {
            "Email": "li@example.com",
            "PARTNER_NAME": "Maple Bank",
            "CARDHOLDER_TYPE": "primary",
            "LINK_ID": "L-77",
        }
    ]  # card linked
    assert got[1004] == [
        {"Email": "li@example.com", "PARTNER_NAME": "Maple Bank", "LINK_ID": "L-77"}
    ]  # card unlinked
    assert got[1005] == [
        {
            "Email": "ann@example.com",
            "DIRECTION": "sent",
            "POINTS": "250",
            "TRANSFER_ID": "T-5",
            "POINTS_BALANCE": "4,750",
        }
    ]  # transfer, en_CA
    assert got[1006] == [
        {"Email": "ann@example.com", "POINTS_BALANCE": "15,200", "BALANCE_VALUE": "$152.00"}
    ]  # household balance
    assert got[1007] == [
        {
            "Email": "marc@example.com",
            "TIER": "Gold",
            "PREVIOUS_TIER": "Silver",
            "TIER_EXPIRY": "31 décembre 2027",
        }
    ]  # tier change
    assert got[1008] == [
        {
            "Email": "li@example.com",
            "PLAYS": "3",
            "GAME_NAME": "Spin & Win",
            "EXPIRES_AT": "Dec 1, 2026, 11:59:59\u202fp.m.",
        }
    ]  # gameplay
    assert box.stats["partial_206"] == 0


def test_welcome_in_event_mode_is_an_event_with_its_tags(box: Sandbox, tmp_path: Path) -> None:
    push(tmp_path, EVENTS[:1])
    (event,) = [
        r["body"] for r in box.received("events") if r["body"]["event"] == "member_registration"
    ]
    assert event["customer"] == "M000123"
    assert event["context"] == {
        "first_name": "Ann",
        "card_type": "digital",
        "tier": "Silver",
        "channel": "web",
    }
    assert 2001 not in mails(box)  # Optimove's campaign sends it, not optisync


def test_welcome_in_api_mode_is_sent_only_to_opted_in_members(
    box: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTISYNC_TEMPLATES__WELCOME__DELIVERY", "api")
    box.config.templates[2001] = frozenset({"FIRST_NAME", "CARD_TYPE", "TIER"})  # type: ignore[index]
    opted_out = {
        **EVENTS[0],
        "id": "reg-2",
        "member_id": "M9",
        "email": "bo@example.com",
        "data": {**EVENTS[0]["data"], "email_opt_in": False, "first_name": "Bo"},
    }
    purchase = {**EVENTS[8], "id": "buy-2", "member_id": "M9", "email": "bo@example.com"}
    unknown = {
        **EVENTS[0],
        "id": "reg-3",
        "member_id": "M10",
        "email": "cy@example.com",
        "data": {"first_name": "Cy"},
    }
    summary = push(tmp_path, [EVENTS[0], opted_out, purchase, unknown])
    got = mails(box)
    assert got[2001] == [
        {"Email": "ann@example.com", "FIRST_NAME": "Ann", "CARD_TYPE": "digital", "TIER": "Silver"}
    ]
    assert [m["Email"] for m in got[1002]] == ["bo@example.com"]  # transactional ignores opt-in
    assert summary["suppressed"] == 2
    assert summary["suppressed_reasons"] == {
        "email:welcome: member has opted out": 1,
        "email:welcome: opt-in state unknown (opted_out)": 1,
    }
    assert DeadLetterStore(tmp_path / "dl").count() == 0  # suppressed is not undelivered
    # the register remembers: a later run still knows Bo opted out and Ann opted in
    box.reset()
    again = {**EVENTS[0], "id": "reg-4", "data": {"first_name": "Ann"}}
    assert push(tmp_path, [again])["suppressed"] == 0
    assert [m["Email"] for m in mails(box)[2001]] == ["ann@example.com"]


def test_lost_response_then_replay_sends_no_second_mail(box: Sandbox, tmp_path: Path) -> None:
    box.set_faults(Faults(lost_response_rate=1.0, seed=3))
    push(tmp_path, [EVENTS[2]], "--only", "email", expect=ExitCode.UNAVAILABLE)
    assert box.stats["accepted_transactional"] == 1  # it went out, the answer was lost
    box.set_faults(Faults())
    result = json.loads(invoke("--json", "replay").stdout)
    assert result["duplicates"] == 1
    assert DeadLetterStore(tmp_path / "dl").count() == 0
    assert box.stats["accepted_transactional"] == 1
    assert box.stats["duplicates_409"] >= 1


def test_missing_tag_is_sent_as_206_with_a_warning(
    box: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box.config.templates[1001] = frozenset({"POINTS", "LOYALTY_NUMBER"})  # type: ignore[index]
    summary = push(tmp_path, [EVENTS[2]], "--only", "email")
    assert summary["sent"] == 1
    assert box.stats["partial_206"] == 1
    assert any("LOYALTY_NUMBER" in w for w in summary["warnings"])


def test_bulk_puts_200_recipients_in_a_call(box: Sandbox, tmp_path: Path) -> None:
    purchases = [
        {**EVENTS[8], "id": f"p{i}", "member_id": f"M{i}", "email": f"m{i}@example.com"}
        for i in range(450)
    ]
    summary = push(tmp_path, purchases, "--only", "email")
    assert summary["sent"] == 450
    calls = box.received("transactional")
    assert sorted(len(c["body"]["Recipients"]) for c in calls) == [50, 200, 200]
    assert len({c["body"]["UniqueMessageID"] for c in calls}) == 3
    # a rerun of the same file skips what its journal says was handled
    summary = push(tmp_path, purchases, "--only", "email")
    assert (summary["skipped"], summary["requests"]) == (450, 0)
    # even forced with --fresh, each call is answered 409: nobody is mailed twice
    summary = push(tmp_path, purchases, "--only", "email", "--fresh")
    assert summary["duplicates"] == 450
    assert box.stats["accepted_transactional"] == 3


def test_offers_become_deduplicated_promotions(
    box: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offers = [{"promo_code": f"P{i % 150}", "name": f"Offer {i % 150}"} for i in range(300)]
    events = [
        {
            "id": f"o{i}",
            "type": "MEMBER_PROFILE_UPDATE",
            "member_id": f"M{i}",
            "occurred_at": "2026-11-25T10:00:00Z",
            "data": {"offers": offers[i : i + 1]},
        }
        for i in range(300)
    ]
    summary = push(tmp_path, events, "--only", "promotions")
    assert summary["sent"] == 300
    calls = box.received("promotions")
    assert sorted(len(c["body"]) for c in calls) == [50, 100]
    codes = [p["PromoCode"] for c in calls for p in c["body"]]
    assert sorted(codes) == sorted(f"P{i}" for i in range(150))


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("fr_CA", "1\xa0234,50\xa0$"),
        ("en_CA", "$1,234.50"),
        ("de_DE", "1.234,50\xa0CA$"),
        (None, "$1,234.50"),
        ("xx_XX", "$1,234.50"),
    ],
)
def test_amounts_read_as_the_member_expects(locale: str | None, expected: str) -> None:
    event = parse_envelope({**EVENTS[2], "locale": locale})
    value = event.data.reward_value  # type: ignore[attr-defined]
    assert format_value(value, "currency", MemberLocale(locale, "en_CA"), "CAD") == expected


def test_letters_carry_the_config_files_hash_with_an_opt_in_register(
    box: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The register's file sits beside the config in push-event's setup; the letter must
    # still name the config that produced it, not the register.
    monkeypatch.setenv("OPTISYNC_TEMPLATES__WELCOME__DELIVERY", "api")
    push(tmp_path, [{**EVENTS[0], "type": "NO_SUCH_TYPE"}], expect=ExitCode.INVALID_INPUT)
    store = DeadLetterStore(tmp_path / "dl")
    letters = [letter for _, letter in store.iter_letters()]
    assert len(letters) == 1
    assert letters[0].config_hash == config_hash(EXAMPLES / "optisync.yaml")


def test_a_run_keeps_consent_in_memory_only_where_mail_depends_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An endless feed must not grow the process by a member for every member it has seen.
    from optisync.config.load import load_config
    from optisync.realtime import plan
    from optisync.realtime.optin import OptInRegister
    from optisync.realtime.push import Push

    def stating(member: str, opted_in: bool, at: str = "2026-11-25T10:00:00Z") -> Any:
        data = {"email_opt_in": opted_in}
        return parse_envelope({**EVENTS[0], "member_id": member, "occurred_at": at, "data": data})

    monkeypatch.setattr(plan, "RECENT_CONSENT", 2)
    register = OptInRegister(tmp_path / "register.sqlite3")
    consent = plan.Consent(register)
    for member, opted_in in [("M1", True), ("M2", False), ("M1", False), ("M3", True)]:
        consent.note(stating(member, opted_in), opted_in)
    assert list(consent.seen) == ["M1", "M3"]  # the two stated last: M1 again outlives M2
    assert consent.known("M2") is False  # older ones are still known, from the register
    assert consent.known("M1") is False and consent.known("M3") is True
    # An opt-out that arrives after an opt-in that occurred later: the register keeps the
    # later opt-in, the run the opt-out it read last, even once the member is evicted.
    consent.note(stating("M4", True, "2026-11-25T11:00:00Z"), True)
    consent.note(stating("M4", False, "2026-11-25T09:00:00Z"), False)
    for member in ("M5", "M6"):
        consent.note(stating(member, True), True)
    assert "M4" not in consent.seen and register.get("M4") is True
    assert consent.known("M4") is False  # never mailed on the evicted member's behalf
    consent.note(stating("M4", True, "2026-11-25T12:00:00Z"), True)  # taken: no longer pinned
    assert consent.pinned == {} and consent.known("M4") is True
    register.close()
    dry = plan.Consent(None, dry_run=True)  # nothing else remembers a dry run's consent
    for member in ("M1", "M2", "M3"):
        dry.note(stating(member, True), True)
    assert len(dry.seen) == 3

    config = load_config(EXAMPLES / "optisync.yaml")  # welcome is mailed on its event
    assert not config.mails_on_consent
    run = Push(config, store=None, client_factory=None, run_id="r", config_hash="h")
    assert run.planner.consent is None
    monkeypatch.setenv("OPTISYNC_TEMPLATES__WELCOME__DELIVERY", "api")
    config = load_config(EXAMPLES / "optisync.yaml")
    run = Push(config, store=None, client_factory=None, run_id="r", config_hash="h")
    assert config.mails_on_consent and run.planner.consent is not None
