"""optin sync: a member unsubscribed in Optimove is not mailed by an api-mode send."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from optisync.errors import ExitCode
from optisync.sandbox import Faults, Sandbox, SandboxConfig
from tests.support import config_yaml, invoke

KEY = "sandbox-key-optin"
TOKEN = "sandbox-token-optin"
BRAND = 7


@pytest.fixture
def box() -> Iterator[Sandbox]:
    config = SandboxConfig(
        api_key=KEY,
        tenant_id=1234,
        events_token=TOKEN,
        enforce_limits=False,
        templates={21: frozenset({"POINTS"})},
    )
    with Sandbox(config) as sandbox:
        yield sandbox


@pytest.fixture
def config(box: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPTIMOVE_API_KEY", KEY)
    monkeypatch.setenv("OPTIMOVE_EVENTS_TOKEN", TOKEN)
    text = config_yaml(
        box.url,
        dead_letters=tmp_path / "dl",
        # unknown members are mailed: only the synced list can hold one back
        optimove={
            "opt_in": {"method": "unsubscribe_list", "brand_id": BRAND, "unknown_state": "opted_in"}
        },
        templates={
            "reward": {
                "kind": "triggered",
                "delivery": "api",
                "template_id": 21,
                "event": "REDEMPTION",
                "attribute_mappings": {"POINTS": "data.points"},
            }
        },
        routing={
            "rules": [
                {"types": ["REDEMPTION"], "to": ["email:reward"]},
                {"types": ["OPT_IN_EMAIL"], "to": ["opt_in"]},
            ]
        },
    )
    path = tmp_path / "optisync.yaml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("OPTISYNC_CONFIG", str(path))
    return path


def unsubscribe(box: Sandbox, *emails: str) -> None:
    for start in range(0, len(emails), 200):
        response = httpx.post(
            f"{box.url}/Optimail/AddUnsubscribers",
            headers={"X-API-KEY": KEY},
            json={"BrandId": BRAND, "EmailAddresses": list(emails[start : start + 200])},
        )
        assert response.status_code == 200


def redemptions(tmp_path: Path, *members: int, name: str = "events.ndjson") -> Path:
    path = tmp_path / name
    lines = [
        {
            "id": f"r-{name}-{i}",
            "type": "REDEMPTION",
            "member_id": f"M{i}",
            "email": f"m{i}@example.com",
            "occurred_at": "2026-11-25T10:00:00Z",
            "data": {"redemption_id": f"R{i}", "points": i, "reward_name": "Gift"},
        }
        for i in members
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def mailed(box: Sandbox) -> list[str]:
    return [r["Email"] for rec in box.received("transactional") for r in rec["body"]["Recipients"]]


def test_a_member_unsubscribed_in_optimove_is_suppressed_by_the_next_send(
    box: Sandbox, config: Path, tmp_path: Path
) -> None:
    unsubscribe(box, "M1@Example.com")
    result = invoke("--json", "optin", "sync")
    assert json.loads(result.stdout)["fetched"] == 1

    push = invoke("--json", "push-event", "--input", str(redemptions(tmp_path, 1, 2)))
    assert mailed(box) == ["m2@example.com"]
    assert json.loads(push.stdout)["suppressed"] == 1


def test_without_the_sync_the_same_member_is_mailed(
    box: Sandbox, config: Path, tmp_path: Path
) -> None:
    unsubscribe(box, "m1@example.com")
    invoke("push-event", "--input", str(redemptions(tmp_path, 1)))
    assert mailed(box) == ["m1@example.com"]


def test_the_whole_list_is_read_page_by_page_and_a_resubscribed_address_dropped(
    box: Sandbox, config: Path, tmp_path: Path
) -> None:
    emails = [f"u{i}@example.com" for i in range(10_050)]
    unsubscribe(box, *emails, "m1@example.com")
    first = json.loads(invoke("--json", "optin", "sync").stdout)
    assert (first["fetched"], first["pages"], first["listed"]) == (10_051, 2, 10_051)

    response = httpx.post(
        f"{box.url}/Optimail/DeleteUnsubscribers",
        headers={"X-API-KEY": KEY},
        json={"BrandId": BRAND, "EmailAddress": "m1@example.com"},
    )
    assert response.status_code == 200
    second = json.loads(invoke("--json", "optin", "sync").stdout)
    assert (second["listed"], second["dropped"]) == (10_050, 1)

    invoke("push-event", "--input", str(redemptions(tmp_path, 1)))
    assert mailed(box) == ["m1@example.com"]


def test_a_local_opt_in_after_the_unsubscribe_wins(
    box: Sandbox, config: Path, tmp_path: Path
) -> None:
    unsubscribe(box, "m1@example.com")
    invoke("optin", "sync")
    opt_in = tmp_path / "optin.ndjson"
    opt_in.write_text(
        json.dumps(
            {
                "id": "o-1",
                "type": "OPT_IN_EMAIL",
                "member_id": "M1",
                "email": "m1@example.com",
                "occurred_at": (datetime.now(UTC) + timedelta(seconds=1)).isoformat(),
                "data": {"opted_in": True},
            }
        )
        + "\n",
        encoding="utf-8",
    )
    invoke("push-event", "--input", str(opt_in))
    invoke("push-event", "--input", str(redemptions(tmp_path, 1, name="later.ndjson")))
    assert mailed(box) == ["m1@example.com"]


def test_no_brand_is_a_config_error(
    box: Sandbox, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = config.read_text(encoding="utf-8").replace(f"brand_id: {BRAND}", "brand_id: null")
    config.write_text(text.replace("method: unsubscribe_list", "method: event"), encoding="utf-8")
    result = invoke("optin", "sync", expect=ExitCode.CONFIG)
    assert "--brand-id" in result.stderr


def register_rows(tmp_path: Path) -> list[tuple[str, ...]]:
    """Every row of the one opt-in register under ``tmp_path``."""
    (path,) = tmp_path.rglob("opt-in.sqlite3")
    db = sqlite3.connect(path)
    try:
        return sorted(
            (table, *map(str, row))
            for table in ("opt_in", "unsubscribed")
            for row in db.execute(f"SELECT * FROM {table}")
        )
    finally:
        db.close()


def resubscribe(box: Sandbox, email: str) -> None:
    response = httpx.post(
        f"{box.url}/Optimail/DeleteUnsubscribers",
        headers={"X-API-KEY": KEY},
        json={"BrandId": BRAND, "EmailAddress": email},
    )
    assert response.status_code == 200


def test_unreachable_optimove_exits_6_and_leaves_the_register(
    box: Sandbox, config: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    unsubscribe(box, "m1@example.com", "m2@example.com")
    assert json.loads(invoke("--json", "optin", "sync").stdout)["listed"] == 2
    before = register_rows(tmp_path)
    assert [row[1] for row in before] == ["m1@example.com", "m2@example.com"]
    # m1 subscribed again: a sync that read the list would drop it, a failed one must not
    resubscribe(box, "m1@example.com")

    monkeypatch.setenv("OPTISYNC_OPTIMOVE__API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__RETRY__MAX_ATTEMPTS", "2")
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__RETRY__BASE_DELAY", "0.001")
    result = invoke("optin", "sync", expect=ExitCode.UNAVAILABLE)
    assert "GetUnsubscribers" in result.stderr
    assert register_rows(tmp_path) == before


def test_a_list_cut_off_after_its_first_page_leaves_the_register(
    box: Sandbox, config: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from optisync.commands import account

    unsubscribe(box, *(f"u{i}@example.com" for i in range(10_050)), "m1@example.com")
    assert json.loads(invoke("--json", "optin", "sync").stdout)["listed"] == 10_051
    before = register_rows(tmp_path)
    resubscribe(box, "m1@example.com")

    # Optimove answers the first page, then only 503s: half a list must not count as the
    # whole, or every address on the unread pages would be dropped as resubscribed
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__RETRY__MAX_ATTEMPTS", "2")
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__RETRY__BASE_DELAY", "0.001")
    real = account.read
    pages: list[Any] = []

    def first_page_only(*args: Any, **kwargs: Any) -> Any:
        if pages:
            box.set_faults(Faults(error_rate=1.0))
        pages.append(args[3]["$skip"])
        return real(*args, **kwargs)

    monkeypatch.setattr(account, "read", first_page_only)
    invoke("optin", "sync", expect=ExitCode.UNAVAILABLE)
    assert pages == [0, 10_000]
    assert register_rows(tmp_path) == before
