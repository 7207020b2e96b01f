"""push-event and replay against the live sandbox with injected faults: nothing is lost."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from optisync.errors import ExitCode
from optisync.realtime.deadletter import DeadLetterStore
from optisync.sandbox import Faults, Sandbox, SandboxConfig
from tests.support import (
    RECEIPT_TEMPLATE,
    accepted_messages,
    config_yaml,
    invoke,
    tier_or_redemption,
)

KEY = "sandbox-key-integration"
TOKEN = "sandbox-token-integration"


def make_events(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [tier_or_redemption(i, redemption=rng.random() >= 0.5) for i in range(n)]


@pytest.fixture
def sandbox() -> Any:
    config = SandboxConfig(
        api_key=KEY,
        tenant_id=1234,
        events_token=TOKEN,
        enforce_limits=False,
        templates={11: frozenset({"POINTS"})},
    )
    with Sandbox(config) as box:
        yield box


@pytest.fixture
def setup(sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "optisync.yaml"
    path.write_text(
        config_yaml(
            sandbox.url,
            dead_letters=tmp_path / "dl",
            optimove={
                "concurrency": 4,
                "rate_limit": {"requests": 1000, "per_seconds": 1},
                "transactional_rate_limit": {"requests": 1000, "per_seconds": 1},
                # generous: only the injected late answers (3 s) outlast it
                "timeouts": {"connect": 2, "read": 1.5},
                "retry": {
                    "max_attempts": 8,
                    "base_delay": 0.001,
                    "max_delay": 0.01,
                    "max_total_seconds": 30,
                },
            },
            attributes={"emd": {"opt_in_key": "email_opt_in"}},
            events={
                "MEMBER_TIER": {
                    "name": "member_tier",
                    "context": {"message_id": "id", "tier": "data.tier"},
                },
                "REDEMPTION": {
                    "name": "redemption",
                    "context": {"message_id": "id", "points": "data.points"},
                },
            },
            templates=RECEIPT_TEMPLATE,
            routing={
                "rules": [
                    {"types": ["MEMBER_TIER"], "to": ["events"]},
                    {"types": ["REDEMPTION"], "to": ["events", "email:receipt"]},
                ]
            },
        )
    )
    monkeypatch.setenv("OPTISYNC_CONFIG", str(path))
    monkeypatch.setenv("OPTIMOVE_API_KEY", KEY)
    monkeypatch.setenv("OPTIMOVE_EVENTS_TOKEN", TOKEN)
    return tmp_path


@pytest.mark.parametrize("seed", [1, 2])
def test_faults_lose_nothing_and_replay_drains(sandbox: Sandbox, setup: Path, seed: int) -> None:
    messages = make_events(300, seed)
    source = setup / "in.ndjson"
    source.write_text("\n".join(json.dumps(m) for m in messages) + "\n")
    sandbox.set_faults(
        Faults(
            error_rate=0.15,
            burst_429=0.03,
            burst_length=3,
            drop_rate=0.05,
            lost_response_rate=0.05,
            slow_rate=0.01,
            slow_ms=3000,
            seed=seed,
        )
    )
    result = invoke("--json", "push-event", "--input", str(source), expect=None)
    summary = json.loads(result.stdout)
    assert result.exit_code in {ExitCode.OK, ExitCode.PARTIAL, ExitCode.UNAVAILABLE}
    store = DeadLetterStore(setup / "dl")
    lettered = {letter.message_id for _, letter in store.iter_letters()}
    events, mails = accepted_messages(sandbox)
    # every message is accepted by the sandbox or kept as a dead letter: none lost
    for m in messages:
        assert m["id"] in set(events) | lettered, m["id"]
    # a transactional mail is never accepted twice (the UniqueMessageID guards it)
    assert len(mails) == len(set(mails))
    # events are duplicated only where a response was lost (or came too late) after processing
    duplicated = len(events) - len(set(events))
    stats = sandbox.stats
    assert stats["slow_responses"] > 0, (stats, summary)
    assert duplicated <= stats["lost_responses"] + stats["slow_responses"]
    assert summary["read"] == 300
    # replay with the faults gone drains the folder, sending no mail twice
    sandbox.set_faults(Faults())
    invoke("replay")
    assert store.count() == 0
    events, mails = accepted_messages(sandbox)
    assert {m["id"] for m in messages} <= set(events)
    assert len(mails) == len(set(mails))
    redemptions = [m for m in messages if m["type"] == "REDEMPTION"]
    assert len(set(mails)) == len(redemptions)


def test_server_down_then_replay(sandbox: Sandbox, setup: Path) -> None:
    messages = make_events(40, 3)
    source = setup / "in.ndjson"
    source.write_text("\n".join(json.dumps(m) for m in messages))
    sandbox.set_faults(Faults(error_rate=1.0, seed=1))
    result = invoke("--json", "push-event", "--input", str(source), expect=ExitCode.UNAVAILABLE)
    summary = json.loads(result.stdout)
    assert summary["sent"] == 0
    assert summary["dead_lettered"] == 40
    sandbox.set_faults(Faults())
    invoke("replay")
    events, mails = accepted_messages(sandbox)
    assert sorted(events) == sorted(m["id"] for m in messages)


def test_wrong_key_exits_5(sandbox: Sandbox, setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIMOVE_API_KEY", "wrong")
    monkeypatch.setenv("OPTIMOVE_EVENTS_TOKEN", "wrong")
    source = setup / "in.ndjson"
    source.write_text("\n".join(json.dumps(m) for m in make_events(10, 4)))
    result = invoke("push-event", "--input", str(source), expect=ExitCode.REFUSED)
    # the error names the dead-letter folder, whose path holds this test's name
    stderr = result.stderr.replace(str(setup / "dl"), "<dl>")
    assert "undelivered messages were dead-lettered in <dl>" in stderr
    assert "wrong" not in stderr.replace("wrong, revoked", "")
    assert DeadLetterStore(setup / "dl").count() >= 10
