"""``optisync serve`` as a real process against the sandbox on loopback: the lock, a clean
SIGTERM, and SIGKILL at random moments while a client keeps posting."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from optisync.sandbox import Sandbox, SandboxConfig
from tests.support import serve_config, tier_or_redemption

KEY, TOKEN, CALLER = "serve-key", "serve-token", "caller-token-9"
AUTH = {"Authorization": f"Bearer {CALLER}"}
OPTISYNC = [sys.executable, "-m", "optisync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Env:
    def __init__(self, box: Sandbox, tmp: Path) -> None:
        self.box = box
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        path = tmp / "optisync.yaml"
        path.write_text(serve_config(box.url, tmp))
        self.environ = {
            **os.environ,
            "OPTISYNC_CONFIG": str(path),
            "OPTIMOVE_API_KEY": KEY,
            "OPTIMOVE_EVENTS_TOKEN": TOKEN,
            "OPTISYNC_SERVE__TOKENS": CALLER,
            "OPTISYNC_SERVE__LISTEN": f"127.0.0.1:{self.port}",
        }

    def start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [*OPTISYNC, "serve"],
            env=self.environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.05)
        proc.kill()
        raise AssertionError("serve did not start within 30 s")

    def post(self, events: list[dict[str, Any]]) -> list[str]:
        answer = httpx.post(self.url + "/v1/events", json=events, headers=AUTH, timeout=5)
        assert answer.status_code == 202, answer.text
        return [r["id"] for r in answer.json()["results"]]


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err, err.decode()
    return proc.returncode


def delivered(box: Sandbox) -> tuple[Counter[str], Counter[str], list[str]]:
    """Event message ids and mail recipients the sandbox accepted (each with its count),
    and the UniqueMessageID of every mail call it took as new."""
    events: Counter[str] = Counter()
    mails: Counter[str] = Counter()
    uniques: list[str] = []
    for rec in box.received():
        body = rec["body"]
        if rec["kind"] == "events":
            for event in body if isinstance(body, list) else [body]:
                events[event["context"]["message_id"]] += 1
        elif rec["kind"] == "transactional":
            uniques.append(rec["unique_message_id"])
            mails.update(r["Email"] for r in body["Recipients"])
    return events, mails, uniques


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    config = SandboxConfig(
        api_key=KEY, tenant_id=1234, events_token=TOKEN, enforce_limits=False, keep_received=None
    )
    with Sandbox(config) as box:
        yield Env(box, tmp_path)


def test_sigterm_delivers_everything_accepted_and_exits_0(env: Env) -> None:
    proc = env.start()
    messages = [tier_or_redemption(i, i % 3 == 0) for i in range(30)]
    try:
        accepted = env.post(messages[:20]) + env.post(messages[20:])
        assert httpx.post(env.url + "/v1/events", json=messages[0]).status_code == 401
    finally:
        code = stop(proc)
    assert code == 0
    events, mails, uniques = delivered(env.box)
    assert set(events) == set(accepted) == {m["id"] for m in messages}
    assert set(mails) == {m["email"] for m in messages if "email" in m}
    assert len(uniques) == len(set(uniques))
    assert len(env.box.received("attributes")) >= 1
    assert not list((env.tmp / "spool").glob("*.ndjson"))
    assert not list((env.tmp / "dl" / "new").glob("*"))


def test_a_second_serve_on_the_same_spool_exits_75(env: Env) -> None:
    first = env.start()
    try:
        other = {**env.environ, "OPTISYNC_SERVE__LISTEN": f"127.0.0.1:{free_port()}"}
        second = subprocess.run(
            [*OPTISYNC, "serve"], env=other, capture_output=True, timeout=60, check=False
        )
        assert second.returncode == 75, second.stderr.decode()
        assert httpx.get(env.url + "/healthz").status_code == 200
    finally:
        assert stop(first) == 0


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing_and_mails_nothing_twice(env: Env) -> None:
    rng = random.Random(20261204)
    accepted: list[str] = []
    sent: dict[str, dict[str, Any]] = {}
    done = threading.Event()

    def client() -> None:
        i = 0
        while not done.is_set():
            batch = [tier_or_redemption(i + k, (i + k) % 2 == 0) for k in range(5)]
            i += 5
            for m in batch:
                sent[m["id"]] = m
            try:
                answer = httpx.post(env.url + "/v1/events", json=batch, headers=AUTH, timeout=2)
            except httpx.HTTPError:  # the server was killed mid-request: not acknowledged
                time.sleep(0.02)
                continue
            if answer.status_code == 202:
                accepted.extend(r["id"] for r in answer.json()["results"])
            time.sleep(0.005)

    poster = threading.Thread(target=client, daemon=True)
    started = time.monotonic()
    proc = env.start()
    poster.start()
    kills = 0
    for _ in range(10):
        time.sleep(rng.uniform(0.1, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
        proc = env.start()
    time.sleep(0.3)
    done.set()
    poster.join(10)
    assert stop(proc) == 0
    assert time.monotonic() - started < 90
    events, mails, uniques = delivered(env.box)
    assert kills == 10 and len(accepted) > 50
    missing = [m for m in accepted if m not in events]
    assert missing == [], "an accepted message was lost"
    assert len(uniques) == len(set(uniques)), "a mail UniqueMessageID was taken as new twice"
    redemptions = {sent[m]["email"] for m in accepted if "email" in sent[m]}
    assert redemptions <= set(mails)
    assert [e for e, n in mails.items() if n > 1] == [], "someone was mailed twice"
    # An event whose answer was not yet journalled when the process died is sent again:
    # events carry no id Optimove deduplicates by, so only those few may repeat.
    repeated = sum(n - 1 for n in events.values())
    assert repeated <= kills * 16
    assert not list((env.tmp / "spool").glob("*.ndjson"))


def wait_until(check: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_a_quiet_feed_gets_its_mail_and_attribute_updates_out_while_serve_runs(
    env: Env,
) -> None:
    proc = env.start()
    messages = [tier_or_redemption(i, i % 2 == 0) for i in range(6)]
    try:
        env.post(messages)
        # nothing more arrives: the partial packs must go after the linger, not at the end
        mails = {m["email"] for m in messages if "email" in m}
        tiers = {m["member_id"] for m in messages if m["type"] == "MEMBER_TIER"}

        def all_out() -> bool:
            _, sent, _ = delivered(env.box)
            updated = {
                entry["CustomerID"]
                for rec in env.box.received("attributes")
                for entry in rec["body"]["CustomerNewAttributesValuesList"]
            }
            return set(sent) == mails and tiers <= updated

        assert wait_until(all_out, 10), "mail or attribute updates waited for more input"
        assert proc.poll() is None
    finally:
        code = stop(proc)
    assert code == 0
    _, sent, uniques = delivered(env.box)
    assert all(n == 1 for n in sent.values())
    assert len(uniques) == len(set(uniques))


def test_optimove_rejections_reach_serve_as_rejected_letters(env: Env) -> None:
    # the sandbox knows no customer, so it refuses each tier update in its verdict
    config = env.tmp / "optisync.yaml"
    callback_url = f"{env.url}/v1/optimove/callback"
    config.write_text(
        config.read_text().replace(
            "concurrency: 4", f"concurrency: 4\n  callback_url: {callback_url}"
        )
    )
    assert callback_url in config.read_text()
    proc = env.start()
    letters = env.tmp / "dl" / "new"
    try:
        env.post([tier_or_redemption(1, False), tier_or_redemption(3, False)])

        def rejected() -> list[dict[str, Any]]:
            found = [json.loads(p.read_text()) for p in letters.glob("*.json")]
            return [f for f in found if f["error"]["class"] == "rejected"]

        assert wait_until(lambda: len(rejected()) == 2, 20), "no rejected letters came"
        customers = {
            entry["CustomerID"]
            for letter in rejected()
            for entry in letter["request"]["CustomerNewAttributesValuesList"]
        }
        assert customers == {"M1", "M3"}
        assert all("INVALID_CUSTOMER" in letter["error"]["message"] for letter in rejected())
        metrics = httpx.get(env.url + "/metrics", timeout=5).text
        assert "optisync_serve_messages_rejected_by_optimove_total 2.0" in metrics
        forged = httpx.post(f"{callback_url}?call=x&sig=y", json={"isSuccess": True})
        assert forged.status_code == 403
    finally:
        code = stop(proc)
    assert code == 0
