"""Time-bounded packing and per-member order: partial packs go once they have waited the
linger or the input is idle, a feed that never closes gets everything out, and a member's
later update never overtakes an earlier one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from optisync.config import find_config, load_config
from optisync.config.models import Config
from optisync.errors import ExitCode
from optisync.optimove.outcome import Endpoint
from optisync.realtime.batching import (
    ORDERED,
    RECORDED_MAX,
    RECORDED_WAIT,
    Batcher,
    Outbox,
    Pack,
)
from optisync.realtime.deadletter import DeadLetterStore, Kind
from optisync.realtime.inputs import Record, check
from optisync.realtime.journal import Journal, RecordedCall
from optisync.realtime.plan import Part
from optisync.realtime.push import Push
from optisync.realtime.sender import Inbox
from optisync.sandbox import Sandbox, SandboxConfig
from tests.support import (
    EXAMPLES,
    FakeClock,
    FakeOptimove,
    tier_or_redemption,
    tier_or_redemption_config,
    use_sandbox,
)

KEY, TOKEN = "linger-key-5d1e", "linger-token-9a0b"


def attributes(customer: str, value: str) -> Part:
    body = {
        "CustomerNewAttributesValuesList": [
            {"CustomerID": customer, "Attributes": [{"RealFieldName": "Tier", "Value": value}]}
        ]
    }
    return Part(Kind.ATTRIBUTES, Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, body, "attributes")


def mail(template: int, uid: str) -> Part:
    body = {"TemplateID": template, "UniqueMessageID": uid, "Recipients": [{"Email": "a@b.c"}]}
    return Part(Kind.EMAIL, Endpoint.SEND_TRANSACTIONAL_MAIL, body, f"email:t{template}")


# -- the linger rule ---------------------------------------------------------------------


def test_a_partial_pack_goes_once_its_oldest_part_has_waited_the_linger() -> None:
    clock = FakeClock(100.0)
    batcher: Batcher[int] = Batcher(1, linger=0.5, clock=clock)
    assert batcher.add(1, attributes("A", "1")) == []
    # input keeps arriving every 0.1 s (never idle): only the linger sends the pack
    for n, customer in enumerate("BCD", 2):
        clock.advance(0.1)
        assert batcher.due(clock(), clock()) == []
        batcher.add(n, attributes(customer, "1") if customer != "D" else mail(7, "u1"))
    last_input = clock()  # 100.3
    assert batcher.deadline(last_input) == pytest.approx(100.425)  # idle comes first...
    clock.advance(0.1)
    batcher.add(5, attributes("E", "1"))
    last_input = clock()  # 100.4: ...unless input goes on
    assert batcher.deadline(last_input) == pytest.approx(100.5)  # the attributes' linger
    clock.advance(0.1 + 1e-9)  # (0.1 five times falls short of 0.5 in binary)
    due = batcher.due(clock(), last_input)
    assert [(p.endpoint, len(p.items)) for p in due] == [(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, 4)]
    assert list(batcher.pending) == ["email:7"]  # 0.2 s old: still collecting
    assert batcher.deadline(last_input) == pytest.approx(100.525)  # idle from 100.4


def test_every_pending_pack_goes_once_the_input_is_idle() -> None:
    clock = FakeClock()
    batcher: Batcher[int] = Batcher(2, linger=0.5, clock=clock)
    batcher.add(1, attributes("A", "1"))
    batcher.add(2, mail(7, "u1"))
    batcher.add(3, Part(Kind.EVENTS, Endpoint.EVENTS, {"event": "e"}, "events"))
    last_input = clock()
    idle = 0.5 * 0.25
    assert batcher.deadline(last_input) == pytest.approx(idle)  # before the linger
    clock.advance(idle - 0.01)
    assert batcher.due(clock(), last_input) == []
    clock.advance(0.01)
    assert sorted(p.endpoint.value for p in batcher.due(clock(), last_input)) == sorted(
        [Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, Endpoint.SEND_TRANSACTIONAL_MAIL, Endpoint.EVENTS]
    )
    assert batcher.pending == {} and batcher.deadline(last_input) is None


def test_a_recorded_mail_waits_for_its_recipients_past_the_linger_and_idle_input() -> None:
    clock = FakeClock()
    batcher: Batcher[int] = Batcher(1, linger=0.5, clock=clock)
    assert batcher.add_recorded("optisync-b3-x", 3, 1, mail(7, "u1")) == []
    for n in (2, 3):  # each part a second apart: the linger passes, the input idles
        clock.advance(1.0)
        assert batcher.due(clock(), clock() - 1.0) == []
        ready = batcher.add_recorded("optisync-b3-x", 3, n, mail(7, f"u{n}"))
    [pack] = ready
    assert pack.seal()["UniqueMessageID"] == "optisync-b3-x" and len(pack.items) == 3
    # a new mail beside a recorded one: idle input sends the new one only
    batcher.add_recorded("optisync-b2-y", 2, 4, mail(7, "u4"))
    batcher.add(5, mail(7, "u5"))
    assert batcher.deadline(clock()) == pytest.approx(clock() + 0.125)
    [new] = batcher.due(clock() + 1, clock())
    assert new.uid is None and new.seal()["UniqueMessageID"] == "u5"
    # ...then nothing falls due until the recorded one has waited its time
    assert batcher.deadline(clock()) == pytest.approx(clock() + RECORDED_WAIT)
    # input waiting on the run (sends full) starts the wait again
    clock.advance(RECORDED_WAIT - 1)
    batcher.hold_recorded()
    clock.advance(2)
    assert batcher.due(clock(), clock() - 5) == []
    # ...but not past RECORDED_MAX since it was formed: busy input cannot hold it forever
    clock.advance(RECORDED_MAX)
    batcher.hold_recorded()
    [short] = batcher.due(clock(), clock())
    assert short.seal()["UniqueMessageID"] == "optisync-b2-y" and len(short.items) == 1
    assert batcher.forming == 0
    # the end of the input sends one short too, still under its id
    batcher.add_recorded("optisync-b2-z", 2, 6, mail(7, "u6"))
    [short] = batcher.drain()
    assert short.seal()["UniqueMessageID"] == "optisync-b2-z" and len(short.items) == 1
    assert batcher.forming == 0


def test_a_recorded_mail_is_cut_by_time_only_after_the_longer_wait() -> None:
    clock = FakeClock()
    batcher: Batcher[int] = Batcher(1, linger=0.5, clock=clock)
    batcher.add_recorded("optisync-b2-z", 2, 1, mail(7, "u1"))
    clock.advance(RECORDED_WAIT - 1)
    assert batcher.due(clock(), clock()) == []  # input never idle, the linger long past
    clock.advance(1)
    [pack] = batcher.due(clock(), clock())
    assert pack.uid == "optisync-b2-z"


def test_a_full_pack_goes_at_once_whatever_the_linger() -> None:
    batcher: Batcher[int] = Batcher(2, linger=60, clock=FakeClock())
    event = Part(Kind.EVENTS, Endpoint.EVENTS, {"event": "e"}, "events")
    assert batcher.add(1, event) == []
    assert [len(p.items) for p in batcher.add(2, event)] == [2]


# -- per-member order ----------------------------------------------------------------------


def pack_of(*customers: str) -> Pack[int]:
    pack: Pack[int] = Pack(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES)
    for n, customer in enumerate(customers):
        pack.items.append((n, attributes(customer, "x")))
        pack.customers.add(customer)
    return pack


def test_a_pack_waits_for_an_earlier_pack_of_the_same_customer_and_blocks_no_one_else() -> None:
    outbox: Outbox[int] = Outbox()
    first, second, other, third = pack_of("A", "B"), pack_of("A"), pack_of("C"), pack_of("B")
    mail_pack: Pack[int] = Pack(Endpoint.SEND_TRANSACTIONAL_MAIL, [(9, mail(1, "u"))])
    for pack in (first, second, other, mail_pack, third):
        outbox.put(pack)
    assert outbox.take() is first
    # A and B are in flight: "second" and "third" wait, the others do not
    assert outbox.take() is other
    assert outbox.take() is mail_pack
    assert outbox.take() is None
    assert len(outbox) == 2
    outbox.settled(first)
    assert outbox.take() is second
    assert outbox.take() is third
    assert outbox.busy == {"A": 1, "B": 1, "C": 1}


def test_a_later_pack_never_overtakes_an_earlier_waiting_one_of_its_customer() -> None:
    outbox: Outbox[int] = Outbox()
    outbox.put(pack_of("A"))
    first = outbox.take()
    assert first is not None
    waiting, later = pack_of("A", "B"), pack_of("B")
    outbox.put(waiting)
    outbox.put(later)
    assert outbox.take() is None  # "later" holds B, which waits in "waiting" ahead of it
    outbox.settled(first)
    assert outbox.take() is waiting


def test_attribute_updates_are_in_the_ordered_family() -> None:
    assert Endpoint.UPDATE_CUSTOMER_ATTRIBUTES in ORDERED
    assert ORDERED[Endpoint.UPDATE_CUSTOMER_ATTRIBUTES](attributes("M7", "x").body) == "M7"


class SlowFirstAttributes(FakeOptimove):
    """The first attribute call answers late; every attribute call's start and end kept."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, float, float, list[str]]] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("UpdateCustomerAttributes"):
            return super().__call__(request)
        start = time.monotonic()
        with self.lock:
            first = not self.calls and not getattr(self, "started", False)
            self.started = True
        if first:
            time.sleep(0.6)
        response = super().__call__(request)
        body = json.loads(request.content)
        ids = [e["CustomerID"] for e in body["CustomerNewAttributesValuesList"]]
        with self.lock:
            self.calls.append(
                (
                    body["CustomerNewAttributesValuesList"][0]["Attributes"][0]["Value"],
                    start,
                    time.monotonic(),
                    ids,
                )
            )
        return response


def tier(n: int, member: str, value: str) -> dict[str, Any]:
    return {
        "id": f"tier-{n}",
        "type": "MEMBER_TIER",
        "member_id": member,
        "occurred_at": "2026-11-25T10:00:00Z",
        "data": {"tier": value},
    }


def test_a_members_later_update_waits_for_the_earlier_slow_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = SlowFirstAttributes()
    monkeypatch.setenv("OPTISYNC_CONFIG", str(EXAMPLES / "optisync.yaml"))
    monkeypatch.setenv("OPTIMOVE_API_KEY", KEY)
    monkeypatch.setenv("OPTIMOVE_EVENTS_TOKEN", TOKEN)
    monkeypatch.setenv("OPTIMOVE_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("OPTIMOVE_EVENTS_URL", "http://127.0.0.1:9/reportEvent")
    monkeypatch.setenv("OPTISYNC_DEAD_LETTER__DIR", str(tmp_path / "dl"))
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__CONCURRENCY", "4")
    source = tmp_path / "in.ndjson"
    lines = [tier(1, "M1", "Silver"), tier(2, "M1", "Gold"), tier(3, "M2", "Gold")]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    fake.push(source, only=["attributes"])
    by_value = {ids[0] + value: (start, end) for value, start, end, ids in fake.calls}
    silver, gold = by_value["M1Silver"], by_value["M1Gold"]
    assert gold[0] >= silver[1], "M1's Gold update went out before its Silver one was answered"
    # the second call is sent at all only after the slow one: M2 rides with M1's Gold
    assert len(fake.calls) == 2


# -- a feed that never closes, against the sandbox -----------------------------------------


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    config = SandboxConfig(api_key=KEY, tenant_id=1234, events_token=TOKEN, enforce_limits=False)
    with Sandbox(config) as sandbox:
        use_sandbox(monkeypatch, sandbox, tmp_path, KEY, TOKEN, OPTIMOVE__LINGER_MS="300")
        yield sandbox


def wait_for(check: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return bool(check())


def delivered(box: Sandbox) -> dict[str, list[Any]]:
    """Each attribute update (customer, attribute, value) and each mail recipient the sandbox
    accepted, however they were packed."""
    updates = sorted(
        (entry["CustomerID"], item["RealFieldName"], json.dumps(item["Value"]))
        for rec in box.received("attributes")
        for entry in rec["body"]["CustomerNewAttributesValuesList"]
        for item in entry["Attributes"]
    )
    mails = sorted(
        (rec["body"]["TemplateID"], r["Email"])
        for rec in box.received("transactional")
        for r in rec["body"]["Recipients"]
    )
    return {"attributes": updates, "transactional": mails}


def test_a_feed_that_never_closes_gets_every_mail_and_attribute_update_out(
    box: Sandbox, tmp_path: Path
) -> None:
    # what the example input sends, measured with a closed input first
    lines = (EXAMPLES / "events.ndjson").read_text().splitlines()
    cmd = [sys.executable, "-m", "optisync", "push-event", "--input", "-"]
    done = subprocess.run(
        cmd, input="\n".join(lines) + "\n", text=True, capture_output=True, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr
    expected = delivered(box)
    assert expected["attributes"] and expected["transactional"]
    box.reset()

    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    assert proc.stdin is not None
    try:
        for line in lines:
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
        sent_at = time.monotonic()

        # the pipe stays open: only the linger (300 ms) can send these
        assert wait_for(lambda: delivered(box) == expected, 10), delivered(box)
        assert time.monotonic() - sent_at < 5
        assert proc.poll() is None, "the run ended though its input is still open"
        mails = [r["body"]["TemplateID"] for r in box.received("transactional")]
        assert len(mails) == len(set(mails))  # nothing mailed twice
    finally:
        proc.stdin.close()
    assert proc.wait(timeout=30) == ExitCode.OK, proc.stderr.read().decode() if proc.stderr else ""
    assert delivered(box) == expected


# -- the run's one queue -------------------------------------------------------------------


def test_the_reader_stays_at_most_its_bound_ahead_of_the_run() -> None:
    produced: list[int] = []

    def items() -> Iterator[int]:
        for n in range(10_000):
            produced.append(n)
            yield n

    inbox: Inbox[int] = Inbox(bound=8)
    inbox.start(items())
    time.sleep(0.2)
    assert len(produced) <= 9  # the bound, plus the one it holds while waiting
    for _ in range(3):
        event = inbox.get(1)
        assert event is not None and event[0] == Inbox.ITEM
        inbox.took()
    time.sleep(0.2)
    assert len(produced) <= 12
    inbox.close()


def test_an_answer_is_settled_while_the_input_waits(fake: FakeOptimove, tmp_path: Path) -> None:
    config = load_config(find_config(None))
    push = Push(
        config,
        store=DeadLetterStore(tmp_path / "dl"),
        client_factory=lambda: fake.client(config),
        run_id="r",
        config_hash="h",
        only={"events", "attributes"},
    )
    release = threading.Event()

    def records() -> Iterator[Record]:
        yield check(tier(1, "M1", "Gold"), 1, "feed")
        release.wait(30)  # a feed that has nothing more for now

    result: list[Any] = []
    runner = threading.Thread(target=lambda: result.append(push.run(records())), daemon=True)
    runner.start()
    try:
        # the event and the attribute update (packed, then cut by the linger) are answered
        # and counted while the input is still open
        assert wait_for(lambda: push.summary.sent == 1, 10), push.summary.counts()
        assert runner.is_alive()
        assert len(fake.bodies("UpdateCustomerAttributes")) == 1
    finally:
        release.set()
    runner.join(10)
    assert result and result[0].exit_code() == ExitCode.OK


def test_a_members_update_waits_until_the_call_creating_them_is_settled() -> None:
    batcher: Batcher[int] = Batcher(1, linger=None)
    create = Part(
        Kind.ATTRIBUTES,
        Endpoint.INSERT_OR_UPDATE_CUSTOMERS,
        {"Customers": [{"CustomerId": "M1", "Attributes": []}]},
        "attributes",
    )
    outbox: Outbox[int] = Outbox()
    for n, part in enumerate([create, attributes("M1", "Gold"), attributes("M2", "Gold")]):
        for pack in batcher.add(n, part):
            outbox.put(pack)
    for pack in batcher.drain():
        outbox.put(pack)
    creating = outbox.take()
    assert creating is not None and creating.endpoint is Endpoint.INSERT_OR_UPDATE_CUSTOMERS
    # M1's update (packed with M2's) may not go while M1 is being created
    assert outbox.take() is None
    outbox.settled(creating)
    update = outbox.take()
    assert update is not None and update.customers == {"M1", "M2"}


# -- a bulk mail formed again after a crash --------------------------------------------------


def redemptions(*numbers: int) -> list[Record]:
    return [check(tier_or_redemption(n, True), n, "spool") for n in numbers]


def stream_push(
    config: Config, fake: FakeOptimove, journal: Journal, tmp_path: Path, *, stream: bool = True
) -> Push:
    """A run sending mail only: serve's (a stream), or with ``stream=False`` a file's."""
    return Push(
        config,
        store=DeadLetterStore(tmp_path / "dl"),
        client_factory=lambda: fake.client(config),
        run_id="r",
        config_hash="h",
        only={"email"},
        journal=journal,
        stream=stream,
    )


@pytest.fixture
def receipts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """A config sending redemptions' receipt mail (to a fake Optimove)."""
    monkeypatch.setenv("OPTIMOVE_API_KEY", KEY)
    path = tmp_path / "optisync.yaml"
    path.write_text(tier_or_redemption_config("http://127.0.0.1:9", tmp_path))
    return load_config(path)


def test_a_bulk_mail_in_the_air_at_a_crash_goes_again_as_the_same_call(
    tmp_path: Path, receipts: Config
) -> None:
    config = receipts
    fake = FakeOptimove()
    journal_file = tmp_path / "serve.journal"

    first = Journal(journal_file)
    stream_push(config, fake, first, tmp_path).run(redemptions(1, 3, 5))
    first.close()
    [call] = fake.bodies("SendTransactionalMail")
    assert len(call["Recipients"]) == 3
    # The process died once Optimove took the call but before more than one of its
    # recipients was journalled: the call's record and that one entry survive.
    lines = journal_file.read_text().splitlines(keepends=True)
    assert lines[0].startswith("P ") and call["UniqueMessageID"] in lines[0]
    journal_file.write_text(lines[0] + lines[1])

    # The restart is fed those messages among new ones, so a pack cut by time alone
    # would hold other recipients, and carry another id.
    second = Journal(journal_file)
    summary = stream_push(config, fake, second, tmp_path).run(redemptions(7, 3, 1, 9, 5, 11))
    second.close()
    calls = fake.bodies("SendTransactionalMail")[1:]
    again = [c for c in calls if c["UniqueMessageID"] == call["UniqueMessageID"]]
    assert len(again) == 1 and len(again[0]["Recipients"]) == 2  # the two not journalled
    mailed = [r["Email"] for c in fake.bodies("SendTransactionalMail") for r in c["Recipients"]]
    assert sorted({*mailed}) == sorted(f"m{n}@example.com" for n in (1, 3, 5, 7, 9, 11))
    # Optimove refused the repeated id (409): nobody is mailed twice, and it counts as sent
    assert len(fake.sent_uids) == 2
    assert summary.duplicates == 2 and summary.sent == 5 and summary.skipped == 1
    assert summary.dead_lettered == 0


def test_serve_does_not_mail_a_resent_message_again(tmp_path: Path, receipts: Config) -> None:
    fake = FakeOptimove()
    journal = Journal(tmp_path / "serve.journal")
    # the caller got no answer and posted message 3 again
    summary = stream_push(receipts, fake, journal, tmp_path).run(redemptions(1, 3, 3, 5))
    journal.close()
    mailed = [r["Email"] for c in fake.bodies("SendTransactionalMail") for r in c["Recipients"]]
    assert sorted(mailed) == ["m1@example.com", "m3@example.com", "m5@example.com"]
    assert summary.sent == 3 and summary.skipped == 1


def test_a_journal_line_cut_short_by_a_kill_stays_apart_from_the_next_runs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "serve.journal"
    first = Journal(path)
    first.record_pack("optisync-b2-a", [("r-1", "email:receipt"), ("r-3", "email:receipt")])
    first.close()
    path.write_text(path.read_text()[:-20])  # the kill: the line cut short, no newline
    second = Journal(path)
    assert second.recorded_pack("r-1", "email:receipt") is None  # a torn record is no record
    second.record_pack("optisync-b1-b", [("r-5", "email:receipt")])
    second.close()
    third = Journal(path)
    assert third.recorded_pack("r-5", "email:receipt") == RecordedCall("optisync-b1-b", 1)
    assert third.recorded_pack("r-1", "email:receipt") is None


def crashed_with_a_recorded_call(
    tmp_path: Path, config: Config, fake: FakeOptimove, numbers: tuple[int, ...]
) -> tuple[Path, str]:
    """A serve journal left by a kill once a bulk mail's record was written and its call
    was in the air: no recipient journalled. Returns the journal and the call's id."""
    path = tmp_path / "serve.journal"
    journal = Journal(path)
    stream_push(config, fake, journal, tmp_path).run(redemptions(*numbers))
    journal.close()
    [call] = fake.bodies("SendTransactionalMail")
    path.write_text(path.read_text().splitlines(keepends=True)[0])  # the record alone
    return path, call["UniqueMessageID"]


def mailed(*fakes: FakeOptimove) -> list[str]:
    """Every address mailed: a call Optimove refused (a repeated id) mailed nobody."""
    out: list[str] = []
    for fake in fakes:
        seen: set[str] = set()
        for body in fake.bodies("SendTransactionalMail"):
            if body["UniqueMessageID"] not in seen:
                seen.add(body["UniqueMessageID"])
                out += [r["Email"] for r in body["Recipients"]]
    return sorted(out)


@pytest.mark.parametrize("went", [True, False], ids=["call-went", "call-lost"])
def test_a_recorded_call_sent_short_tells_later_runs_where_the_others_go(
    tmp_path: Path, receipts: Config, went: bool
) -> None:
    fake = FakeOptimove()
    path, uid = crashed_with_a_recorded_call(tmp_path, receipts, fake, (1, 3, 5))
    if not went:  # the call never reached Optimove
        fake = FakeOptimove()
    # the restart gets only message 1 as mail (say the config changed): at the end of the
    # input its call goes short, under the recorded id
    journal = Journal(path)
    stream_push(receipts, fake, journal, tmp_path).run(redemptions(1))
    journal.close()
    assert [c["UniqueMessageID"] for c in fake.bodies("SendTransactionalMail")][-1] == uid
    # messages 3 and 5 come back later: mailed now if the call never went, not at all if
    # it did (Optimove refused it: it mailed all three)
    before = len(fake.bodies("SendTransactionalMail"))
    journal = Journal(path)
    summary = stream_push(receipts, fake, journal, tmp_path).run(redemptions(3, 5))
    journal.close()
    later = fake.bodies("SendTransactionalMail")[before:]
    if went:
        assert later == [] and summary.duplicates == 2 and summary.sent == 2
        assert mailed(fake) == ["m1@example.com", "m3@example.com", "m5@example.com"]
    else:
        assert [c["UniqueMessageID"] != uid for c in later] == [True]
        assert summary.duplicates == 0 and summary.sent == 2
        assert mailed(fake) == ["m1@example.com", "m3@example.com", "m5@example.com"]


def test_a_call_formed_again_is_journalled_spent_or_gone(tmp_path: Path) -> None:
    path = tmp_path / "serve.journal"
    slot = "email:receipt"
    first = Journal(path)
    first.record_pack("optisync-b3-a", [("r-1", slot), ("r-3", slot), ("r-5", slot)])
    first.record_pack("optisync-b2-b", [("r-7", slot), ("r-9", slot)])
    first.record_pack("optisync-b2-c", [("r-11", slot), ("r-13", slot)])
    first.record_spent("optisync-b3-a", [("r-1", slot)])  # formed again short: r-1 only
    first.record_went("optisync-b2-b")  # refused: the first call went, with both
    first.record_spent("optisync-b2-c", [("r-11", slot)])
    first.record_went("optisync-b2-c")  # the short call's first try refused: both went
    first.close()
    second = Journal(path)
    assert second.spent("optisync-b3-a") and not second.spent("optisync-b2-b")
    assert second.recorded_pack("r-1", slot) == RecordedCall("optisync-b3-a", 1)
    assert second.recorded_pack("r-3", slot) is None  # never under that id: new mail
    assert second.recorded_pack("r-9", slot) == RecordedCall("optisync-b2-b", 0, went=True)
    assert second.recorded_pack("r-13", slot) == RecordedCall("optisync-b2-c", 0, went=True)
    second.record_pack("optisync-b2-d", [("r-15", slot), ("r-17", slot)])
    second.record_spent("optisync-b2-d", [("r-15", slot)])
    second.close()
    path.write_text(path.read_text()[:-5])  # a kill cut that line short: nothing spent
    third = Journal(path)
    assert not third.spent("optisync-b2-d")
    assert third.recorded_pack("r-17", slot) == RecordedCall("optisync-b2-d", 2)
    assert third.recorded_pack("r-3", slot) is None


def test_a_stop_holds_a_recorded_call_for_the_next_run_whole(
    tmp_path: Path, receipts: Config
) -> None:
    fake = FakeOptimove()
    path, uid = crashed_with_a_recorded_call(tmp_path, receipts, fake, (1, 3, 5))
    fake = FakeOptimove()  # the call never reached Optimove
    fake.status["SendTransactionalMail"] = 401  # the key was revoked meanwhile: a stop

    def feed() -> Iterator[Record]:
        yield from redemptions(1, 3, 7)  # 1 and 3 wait for 5; 7 goes, and is refused
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and push.summary.stopped is None:
            time.sleep(0.01)
        yield from redemptions(5)  # read after the stop

    journal = Journal(path)
    push = stream_push(receipts, fake, journal, tmp_path)
    summary = push.run(feed())
    journal.close()
    assert summary.stopped == "auth" and summary.held == 3 and summary.dead_lettered == 1
    letters = [letter.message_id for _, letter in DeadLetterStore(tmp_path / "dl").iter_letters()]
    assert letters == ["r-7"]  # no letter for 1, 3 and 5
    # the next run finds the call as recorded, all three unsettled (7's part alone is
    # journalled), and forms it whole
    journal = Journal(path)
    assert len(journal) == 1
    fake.status.clear()
    summary = stream_push(receipts, fake, journal, tmp_path).run(redemptions(5, 3, 1))
    journal.close()
    [again] = [c for c in fake.bodies("SendTransactionalMail") if c["UniqueMessageID"] == uid]
    assert len(again["Recipients"]) == 3 and summary.sent == 3


class AnswerLost(FakeOptimove):
    """Takes the first try of call ``uid`` (and mails it) but its answer is lost (503)."""

    def __init__(self, uid: str) -> None:
        super().__init__()
        self.uid, self.lost = uid, False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        response = super().__call__(request)
        body = json.loads(request.content)
        if not self.lost and isinstance(body, dict) and body.get("UniqueMessageID") == self.uid:
            self.lost = True
            return httpx.Response(503, json={"Error": "answer lost"})
        return response


def test_a_409_to_the_retry_of_a_short_call_is_its_own_try_not_the_first_call(
    tmp_path: Path, receipts: Config
) -> None:
    path, uid = crashed_with_a_recorded_call(tmp_path, receipts, FakeOptimove(), (1, 3, 5))
    fake = AnswerLost(uid)  # the first call never reached Optimove
    journal = Journal(path)
    summary = stream_push(receipts, fake, journal, tmp_path).run(redemptions(1))
    journal.close()
    assert fake.lost and summary.duplicates == 1  # its retry was refused: its own first try
    journal = Journal(path)
    stream_push(receipts, fake, journal, tmp_path).run(redemptions(3, 5))
    journal.close()
    assert mailed(fake) == ["m1@example.com", "m3@example.com", "m5@example.com"]


def test_a_recorded_call_waits_on_while_input_waits_on_the_run(
    tmp_path: Path, receipts: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sends full for longer than the recorded wait, input read ahead to the bound: the
    call formed again still gets the recipients behind that input."""
    from optisync.realtime import batching

    monkeypatch.setattr(batching, "RECORDED_WAIT", 1.0)
    path, uid = crashed_with_a_recorded_call(tmp_path, receipts, FakeOptimove(), (1, 3, 5))
    gate = threading.Event()

    class Blocked(FakeOptimove):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            gate.wait(10)
            return super().__call__(request)

    fake = Blocked()

    def feed() -> Iterator[Record]:
        for n in (7, 1, 9):  # 7 and 9 go alone (idle input) and stay in the air, filling
            yield from redemptions(n)  # the sends; 1 opens the call formed again
            time.sleep(0.2)
        threading.Timer(2.0, gate.set).start()  # sends full for twice the recorded wait
        yield from redemptions(11, 13, 15, 17, 3, 5)

    journal = Journal(path)
    config = receipts.model_copy(
        update={"optimove": receipts.optimove.model_copy(update={"concurrency": 1})}
    )
    push = stream_push(config, fake, journal, tmp_path)
    push.inbox = Inbox(bound=2)
    summary = push.run(feed())
    journal.close()
    [again] = [c for c in fake.bodies("SendTransactionalMail") if c["UniqueMessageID"] == uid]
    assert len(again["Recipients"]) == 3 and summary.sent == 9


def test_a_repeated_line_in_a_rerun_loses_no_recipient_of_a_call_formed_again(
    tmp_path: Path, receipts: Config
) -> None:
    path, uid = crashed_with_a_recorded_call(tmp_path, receipts, FakeOptimove(), (1, 3, 5))
    fake = FakeOptimove()  # the call never reached Optimove
    journal = Journal(path)
    # a rerun of the file, whose line for message 1 appears twice: the call formed again
    # fills with 1, 1, 3 and goes; 5 comes after it, and must still be mailed
    stream_push(receipts, fake, journal, tmp_path, stream=False).run(redemptions(1, 1, 3, 5))
    journal.close()
    assert fake.bodies("SendTransactionalMail")[0]["UniqueMessageID"] == uid
    assert "m5@example.com" in mailed(fake)
