"""Fault suite: thousands of messages of all eleven types through the sandbox with injected
5xx, 429 bursts, dropped connections, lost and late answers, then replays under faults
until the dead-letter folder drains.

What must arrive comes from the input and the hand-written table in ``tests/oracle.py``,
never from optisync's planner or its counters; what did arrive is read from the sandbox's
records and the letters' files. Retries are few, so the run really gives up on some calls
and writes letters; replay must then deliver exactly those.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from optisync.sandbox import Faults, Sandbox, SandboxConfig
from optisync.sandbox.templates import templates_from_config
from tests import oracle
from tests.support import EXAMPLES, invoke, report, use_sandbox

KEY, TOKEN = "fault-key", "fault-token"
PER_TYPE = 150
FAULTS = Faults(
    error_rate=0.08,
    burst_429=0.01,
    burst_length=3,
    drop_rate=0.03,
    lost_response_rate=0.03,
    slow_rate=0.003,
    slow_ms=4000,
    seed=2026,
)


def make_messages() -> list[dict[str, Any]]:
    """PER_TYPE messages of each of the eleven types, each with its own member, email and
    promotion codes; consent alternates so both unsubscribe calls are needed."""
    base = [json.loads(x) for x in (EXAMPLES / "events.ndjson").read_text().splitlines()]
    assert len({b["type"] for b in base}) == len(oracle.EXPECTED) == 11
    out = []
    for i in range(PER_TYPE * len(base)):
        event = json.loads(json.dumps(base[i % len(base)]))
        event.update(id=f"f{i}", member_id=f"F{i:05d}", email=f"f{i}@example.com")
        data = event["data"]
        yes = (i // len(base)) % 2 == 0
        if event["type"] == "MEMBER_REGISTRATION":
            data["email_opt_in"] = yes
        elif event["type"] == "OPT_IN_EMAIL":
            data["opted_in"] = yes
        elif event["type"] == "MEMBER_PROFILE_UPDATE":
            data["emd"]["email_opt_in"] = "Y" if yes else "N"
            data["offers"] = [
                {"promo_code": f"P{i}-{n}", "name": f"Offer {n}"} for n in range(1 + i % 2)
            ]
        out.append(event)
    return out


def faults_injected(stats: dict[str, int]) -> int:
    return sum(
        stats[k]
        for k in ("faults_503", "faults_429", "dropped", "lost_responses", "slow_responses")
    )


@pytest.mark.slow
def test_fault_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    messages = make_messages()
    source = tmp_path / "in.ndjson"
    source.write_text("\n".join(json.dumps(m) for m in messages) + "\n")
    expected = oracle.expected_table(messages)
    index = oracle.Index(messages)
    kinds = {call.split(":")[0] for _, call in expected}
    assert kinds >= {"event", "attributes", "mail", "unsubscribe", "resubscribe", "promotion"}
    config = SandboxConfig(
        api_key=KEY,
        tenant_id=1234,
        events_token=TOKEN,
        enforce_limits=False,
        templates=templates_from_config(EXAMPLES / "optisync.yaml"),
        faults=FAULTS,
    )
    with Sandbox(config) as box:
        use_sandbox(
            monkeypatch,
            box,
            tmp_path,
            KEY,
            TOKEN,
            # the late answers come after the read timeout: a timeout after processing
            OPTIMOVE__TIMEOUTS__READ="2.5",
            OPTIMOVE__RATE_LIMIT__REQUESTS="100000",
            OPTIMOVE__TRANSACTIONAL_RATE_LIMIT__REQUESTS="100000",
            # few tries, so some calls fail for good and the run writes letters
            OPTIMOVE__RETRY__MAX_ATTEMPTS="4",
            **oracle.BOTH_OPT_IN,
        )
        result = invoke("--json", "push-event", "--input", str(source), expect=None)
        summary = json.loads(result.stdout)
        pushed_stats = box.stats
        kept = oracle.letters(tmp_path / "dl")
        assert summary["read"] == len(messages)
        assert faults_injected(pushed_stats) > 0
        assert kept, "no call failed for good: the dead-letter half would go untested"
        # gave up on Optimove: exit 6; the letters name what was not delivered
        assert result.exit_code == 6, result.stderr
        first = oracle.arrived(index, box.received())
        lost = oracle.missing(expected, first, oracle.lettered(index, kept))
        assert lost == [], f"{len(lost)} calls neither arrived nor kept, e.g. {lost[:5]}"
        assert oracle.unexpected(expected, first) == []
        assert first.duplicated_mail() == 0, "a member was mailed twice"
        letters_written = len(kept)

        # replay, still under faults (with more tries now), until the folder drains
        monkeypatch.setenv("OPTISYNC_OPTIMOVE__RETRY__MAX_ATTEMPTS", "8")
        rounds, replay_codes = 0, []
        while oracle.letters(tmp_path / "dl") and rounds < 5:
            rounds += 1
            code = invoke("replay", expect=None).exit_code
            replay_codes.append(code)
            left = oracle.letters(tmp_path / "dl")
            assert code == (0 if not left else 6), (code, len(left))
        assert oracle.letters(tmp_path / "dl") == [], f"not drained after {rounds} replays"
        stats = box.stats
        final = oracle.arrived(index, box.received())
        assert oracle.missing(expected, final) == []
        assert oracle.unexpected(expected, final) == []
        assert final.duplicated_mail() == 0, "a member was mailed twice"
        # events and attributes are sent again only where an answer was lost or late
        duplicated = final.duplicated("event:") + final.duplicated("attributes")
        answers_lost = stats["lost_responses"] + stats["slow_responses"]
        assert duplicated <= answers_lost
    report(
        f"fault suite: messages={summary['read']} calls_expected={sum(expected.values())}"
        f" faults_injected={faults_injected(stats)} (503={stats['faults_503']}"
        f" 429={stats['faults_429']} dropped={stats['dropped']}"
        f" lost_answers={stats['lost_responses']} late_answers={stats['slow_responses']})"
        f" push_exit={result.exit_code} dead_lettered={letters_written}"
        f" replays={rounds} replay_exits={replay_codes} lost=0 duplicated_mail=0"
        f" duplicated_events_or_attributes={duplicated} (answers lost or late={answers_lost})"
        " replay_drained=yes"
    )


def test_a_rerun_without_its_journal_mails_no_one_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every call the table asks for arrives (no faults: the quick check of the oracle),
    and the same messages planned again (their journal lost) give the same
    UniqueMessageIDs, so Optimove refuses the second mails: each member is mailed once."""
    messages = make_messages()[:110]
    source = tmp_path / "in.ndjson"
    source.write_text("\n".join(json.dumps(m) for m in messages) + "\n")
    index = oracle.Index(messages)
    expected = oracle.expected_table(messages)
    config = SandboxConfig(
        api_key=KEY,
        tenant_id=1234,
        events_token=TOKEN,
        enforce_limits=False,
        templates=templates_from_config(EXAMPLES / "optisync.yaml"),
    )
    with Sandbox(config) as box:
        use_sandbox(monkeypatch, box, tmp_path, KEY, TOKEN, **oracle.BOTH_OPT_IN)
        summary = json.loads(invoke("--json", "push-event", "--input", str(source)).stdout)
        assert summary["read"] == len(messages)
        once = oracle.arrived(index, box.received())
        assert oracle.missing(expected, once) == []
        assert oracle.unexpected(expected, once) == []
        assert sorted(once.calls.elements()) == sorted(expected.elements())
        monkeypatch.setenv("OPTISYNC_OPTIMOVE__STATE_DIR", str(tmp_path / "state-again"))
        invoke("push-event", "--input", str(source))
        got = oracle.arrived(index, box.received())
    mails = sum(n for (_, call), n in expected.items() if call.startswith("mail:"))
    assert mails > 0
    assert sum(n for (_, call), n in got.calls.items() if call.startswith("mail:")) == mails
    assert got.duplicated_mail() == 0, "the rerun mailed members again"
    assert box.stats["duplicates_409"] > 0  # the resends were refused, not skipped
