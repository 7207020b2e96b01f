"""Fault suite (issue 7): thousands of messages of all eleven types through the sandbox with
injected 5xx, 429 bursts, timeouts after processing, dropped connections and lost answers.

Every part of every message must end accepted by the sandbox or in the dead-letter folder;
no member may receive a transactional mail twice; events are duplicated only where an
answer was lost or came too late, and counted; replay then drains the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from optisync.config import load_config
from optisync.events import parse_envelope
from optisync.realtime.deadletter import DeadLetterStore
from optisync.realtime.payloads import plan_message
from optisync.realtime.routing import route
from optisync.sandbox import Faults, Sandbox, SandboxConfig
from optisync.sandbox.templates import templates_from_config
from tests.support import EXAMPLES, invoke, report, use_sandbox

KEY, TOKEN = "fault-key", "fault-token"
N = 3300  # 300 of each of the eleven types


def make_messages() -> list[dict[str, Any]]:
    base = [json.loads(x) for x in (EXAMPLES / "events.ndjson").read_text().splitlines()]
    out = []
    for i in range(N):
        event = json.loads(json.dumps(base[i % len(base)]))
        event.update(id=f"f{i}", member_id=f"F{i:05d}", email=f"f{i}@example.com")
        out.append(event)
    return out


def part_key(endpoint: str, body: Any) -> tuple[str, str]:
    """Who a request part is for: the member (or promo code) and which call."""
    if endpoint == "events":
        return f"events:{body['event']}", body["customer"]
    if "Attributes" in endpoint:
        return "attributes", body["CustomerNewAttributesValuesList"][0]["CustomerID"]
    if "TransactionalMail" in endpoint:
        return "mail", body["Recipients"][0]["Email"]
    if "Unsubscribers" in endpoint:
        return "unsubscribe", body.get("EmailAddress") or body["EmailAddresses"][0]
    return "promotion", body[0]["PromoCode"]


def accepted(box: Sandbox) -> tuple[list[tuple[str, str]], list[str]]:
    keys: list[tuple[str, str]] = []
    for rec in box.received():
        body = rec["body"]
        if rec["kind"] == "events":
            keys += [
                (f"events:{e['event']}", e["customer"])
                for e in (body if isinstance(body, list) else [body])
            ]
        elif rec["kind"] == "attributes":
            keys += [
                ("attributes", c["CustomerID"]) for c in body["CustomerNewAttributesValuesList"]
            ]
        elif rec["kind"] == "transactional":
            keys += [("mail", r["Email"]) for r in body["Recipients"]]
        elif rec["kind"] in {"unsubscribe", "resubscribe"}:
            keys += [
                ("unsubscribe", e) for e in body.get("EmailAddresses", [body.get("EmailAddress")])
            ]
        elif rec["kind"] == "promotions":
            keys += [("promotion", p["PromoCode"]) for p in body]
    mails = [k[1] for k in keys if k[0] == "mail"]
    return keys, mails


@pytest.mark.slow
def test_fault_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    messages = make_messages()
    source = tmp_path / "in.ndjson"
    source.write_text("\n".join(json.dumps(m) for m in messages) + "\n")
    config = SandboxConfig(
        api_key=KEY,
        tenant_id=1234,
        events_token=TOKEN,
        enforce_limits=False,
        templates=templates_from_config(EXAMPLES / "optisync.yaml"),
    )
    with Sandbox(config) as box:
        use_sandbox(
            monkeypatch,
            box,
            tmp_path,
            KEY,
            TOKEN,
            OPTIMOVE__TIMEOUTS__READ="0.4",
            OPTIMOVE__RATE_LIMIT__REQUESTS="100000",
            OPTIMOVE__TRANSACTIONAL_RATE_LIMIT__REQUESTS="100000",
            OPTIMOVE__RETRY__MAX_ATTEMPTS="8",
        )
        config_obj = load_config(None)
        expected: dict[tuple[str, str], str] = {}
        for m in messages:
            envelope = parse_envelope(m)
            plan = plan_message(
                envelope, route(envelope, config_obj.routing.rules).targets, config_obj
            )
            for part in plan.parts:
                expected[part_key(part.endpoint.value, part.body)] = m["id"]
        faults = Faults(
            error_rate=0.08,
            burst_429=0.01,
            burst_length=3,
            drop_rate=0.03,
            lost_response_rate=0.03,
            slow_rate=0.01,
            slow_ms=600,
            seed=2026,
        )
        box.set_faults(faults)
        result = invoke("--json", "push-event", "--input", str(source), expect=None)
        summary = json.loads(result.stdout)
        stats = box.stats
        store = DeadLetterStore(tmp_path / "dl")
        lettered = {(x.message_id, x.kind.value) for _, x in store.iter_letters()}
        lettered_ids = {mid for mid, _ in lettered}
        keys, mails = accepted(box)
        got = set(keys)
        lost = [k for k, mid in expected.items() if k not in got and mid not in lettered_ids]
        assert lost == [], f"{len(lost)} parts lost, e.g. {lost[:3]}"
        assert len(mails) == len(set(mails)), "a member was mailed twice"
        event_keys = [k for k in keys if k[0].startswith("events:")]
        duplicated_events = len(event_keys) - len(set(event_keys))
        assert duplicated_events <= stats["lost_responses"] + stats["slow_responses"]
        faults_injected = (
            stats["faults_503"]
            + stats["faults_429"]
            + stats["dropped"]
            + stats["lost_responses"]
            + stats["slow_responses"]
        )
        letters_before = store.count()
        box.set_faults(Faults())
        invoke("replay", expect=0)
        assert store.count() == 0
        keys, mails = accepted(box)
        assert set(expected) <= set(keys)
        assert len(mails) == len(set(mails))
        report(
            f"fault suite: messages={summary['read']} parts={len(expected)}"
            f" faults_injected={faults_injected} (503={stats['faults_503']}"
            f" 429={stats['faults_429']} dropped={stats['dropped']}"
            f" lost_answers={stats['lost_responses']} late_answers={stats['slow_responses']})"
            f" dead_lettered={letters_before} lost=0 duplicated_transactional=0"
            f" duplicated_events={duplicated_events} replay_drained=yes"
        )
