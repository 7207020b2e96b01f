"""Signals, disk trouble, secrets and PII: the promises an unattended run relies on."""

from __future__ import annotations

import errno
import gzip
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from optisync import logs
from optisync.errors import ExitCode, StorageError
from optisync.realtime import deadletter
from optisync.realtime.deadletter import DeadLetterStore
from optisync.realtime.journal import Journal, journal_path
from optisync.sandbox import Faults, Sandbox, SandboxConfig
from tests import oracle
from tests.support import EXAMPLES, ROOT, FakeOptimove, invoke, use_sandbox

KEY, TOKEN = "SECRET-KEY-3f9a0c", "SECRET-TOKEN-77c1e2"
MEMBER, EMAIL = "M000124", "marc@example.com"


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    config = SandboxConfig(api_key=KEY, tenant_id=1234, events_token=TOKEN, enforce_limits=False)
    with Sandbox(config) as sandbox:
        use_sandbox(monkeypatch, sandbox, tmp_path, KEY, TOKEN, OPTIMOVE__RETRY__MAX_ATTEMPTS="2")
        yield sandbox


def big_input(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "big.ndjson"
    with path.open("w") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "id": f"t{i}",
                        "type": "MEMBER_TIER",
                        "member_id": f"M{i}",
                        "occurred_at": "2026-11-25T10:00:00Z",
                        "data": {"tier": "Gold"},
                    }
                )
                + "\n"
            )
    return path


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_signal_exits_130_and_a_rerun_finishes(
    box: Sandbox, tmp_path: Path, sig: signal.Signals
) -> None:
    box.set_faults(Faults(latency_ms=5))
    source = big_input(tmp_path, 3000)
    cmd = [
        sys.executable,
        "-m",
        "optisync",
        "push-event",
        "--only",
        "events",
        "--input",
        str(source),
    ]
    proc = subprocess.Popen(
        cmd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    # signal once the run is really sending: the sandbox accepted its first event
    deadline = time.monotonic() + 60
    while proc.poll() is None and box.stats["accepted"] < 1:
        assert time.monotonic() < deadline, "no request within 60 s"
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before the signal"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, err.decode()
    assert b"interrupted; nothing lost" in err
    assert b"Traceback" not in err
    before = len(box.received("events"))
    assert 0 < before < 3000, "the signal did not land mid-run"
    # the journal lets a rerun finish exactly the rest
    rerun = subprocess.run(cmd, env=dict(os.environ), capture_output=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert DeadLetterStore(tmp_path / "dl").count() == 0
    messages = [json.loads(line) for line in source.read_text().splitlines()]
    got = oracle.arrived(oracle.Index(messages), box.received())
    expected = oracle.expected_table(messages, {"MEMBER_TIER": ("event:member_tier",)})
    assert oracle.missing(expected, got) == [], "a message was lost"
    # what was settled before the signal is not sent again; only requests still in the
    # air when it came (at most the example's concurrency of 4, one event each) may be
    assert got.duplicated("event:") <= 4, got.duplicated("event:")


def test_unusable_dead_letter_folder_is_a_clear_error(
    fake: FakeOptimove, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("OPTISYNC_DEAD_LETTER__DIR", str(blocker / "dl"))
    result = invoke(
        "push-event", "--input", str(EXAMPLES / "events.ndjson"), expect=ExitCode.UNAVAILABLE
    )
    assert f"{blocker / 'dl'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_full_disk_stops_without_acknowledging(
    fake: FakeOptimove, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.status["UpdateCustomerAttributes"] = 400  # forces letters to be written
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if bytes(data).startswith(b"{") and b'"message_id"' in bytes(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(deadletter.os, "write", full)
    source = tmp_path / "in.ndjson"
    source.write_text((EXAMPLES / "events.ndjson").read_text())
    with pytest.raises(StorageError, match="the disk is full") as info:
        fake.push(source)
    assert info.value.exit_code == ExitCode.UNAVAILABLE
    store = DeadLetterStore(tmp_path / "dl")
    assert store.count() == 0
    assert list(store.tmp_dir.iterdir()) == []
    # nothing whose letter could not be written is in the journal: a rerun retries them
    monkeypatch.setattr(deadletter.os, "write", real_write)
    fake.status.clear()
    state = Path(os.environ["OPTISYNC_OPTIMOVE__STATE_DIR"])
    journal = Journal(journal_path(state, source))
    assert len(journal) < 11
    journal.close()
    summary = fake.push(source).data
    assert summary["dead_lettered"] == 0
    assert summary["sent"] + summary["skipped"] == 11


def _all_files(folder: Path) -> Iterator[Path]:
    yield from (p for p in folder.rglob("*") if p.is_file())


def test_no_secret_or_card_number_anywhere(
    box: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "optisync.log"
    card = "4111 1111 1111 1111"
    bad = {
        "type": "PURCHASE",
        "member_id": MEMBER,
        "occurred_at": "2026-11-25T10:00:00Z",
        "data": {"order_id": card, "amount": {"amount": "1", "currency": "CAD"}},
    }
    source = tmp_path / "in.ndjson"
    source.write_text((EXAMPLES / "events.ndjson").read_text() + json.dumps(bad) + "\n")
    outputs: list[str] = []

    def run(*args: str, expect: int | None = None) -> None:
        result = invoke("-vv", "--log-file", str(log), *args, expect=expect)
        outputs.extend([result.stdout, result.stderr])

    run("validate-config", str(EXAMPLES / "optisync.yaml"), expect=0)
    run("schema", "events", expect=0)
    monkeypatch.setenv("OPTISYNC_BATCH__OUTPUT__DIR", str(tmp_path / "export"))
    monkeypatch.setenv("OPTISYNC_BATCH__STATE_DIR", str(tmp_path / "batch-state"))
    run("--json", "export-batch", "--full", expect=None)
    assert list((tmp_path / "export").rglob("*.csv.gz")), "the export wrote no files"
    run("push-event", "--dry-run", "--input", str(source), expect=4)
    box.set_faults(Faults(error_rate=1.0, seed=1))
    run("--json", "push-event", "--input", str(source), expect=None)
    run("replay", "--dry-run", expect=None)
    box.set_faults(Faults())
    run("--json", "replay", expect=None)
    places = [*outputs, log.read_text()]
    places += [p.read_text() for p in _all_files(tmp_path / "dl")]
    places += [
        p.read_text(errors="replace")
        for p in _all_files(Path(os.environ["OPTISYNC_OPTIMOVE__STATE_DIR"]))
    ]
    places += [p.read_text() for p in _all_files(ROOT / "tests" / "cassettes" / "data")]
    places += [
        gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text()
        for p in _all_files(tmp_path / "export")
    ]
    for text in places:
        assert KEY not in text
        assert TOKEN not in text
        assert card not in text and card.replace(" ", "") not in text
    # logs mask member data unless --log-pii
    assert MEMBER not in log.read_text() and EMAIL not in log.read_text()
    assert "M0****4" in log.read_text()
    # dead letters and state files are owner-only
    for path in [
        *_all_files(tmp_path / "dl"),
        *_all_files(Path(os.environ["OPTISYNC_OPTIMOVE__STATE_DIR"])),
    ]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_unwritable_output_folder_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("OPTISYNC_BATCH__OUTPUT__DIR", str(blocker / "export"))
    monkeypatch.setenv("OPTISYNC_BATCH__STATE_DIR", str(tmp_path / "batch-state"))
    result = invoke(
        "--config", str(EXAMPLES / "optisync.yaml"), "export-batch", expect=ExitCode.UNAVAILABLE
    )
    assert str(blocker / "export") in result.stderr
    assert "Traceback" not in result.stderr
    # nothing was acknowledged: the state did not advance, so the next run is a full one
    monkeypatch.setenv("OPTISYNC_BATCH__OUTPUT__DIR", str(tmp_path / "export"))
    data = json.loads(
        invoke("--config", str(EXAMPLES / "optisync.yaml"), "--json", "export-batch").stdout
    )
    assert {d["mode"] for d in data["datasets"].values()} == {"full"}


def test_log_pii_and_json_format(fake: FakeOptimove, tmp_path: Path) -> None:
    fake.status["UpdateCustomerAttributes"] = 400
    log = tmp_path / "run.log"
    # what --log-file run.log --log-format json --log-pii sets up
    logs.setup(0, log_file=log, log_format="json", log_pii=True)
    try:
        fake.push(EXAMPLES / "events.ndjson", expect=ExitCode.PARTIAL)
    finally:
        logs.setup(0)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert {line["level"] for line in lines} >= {"warning", "info"}
    assert any("M000124" in line["message"] for line in lines)
    assert lines[-1]["message"].startswith("push-event run ")
    invoke("--log-format", "xml", "validate-config", expect=ExitCode.USAGE)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_stop_signal_waits_until_the_answers_in_hand_are_recorded(sig: int) -> None:
    # Once a send leaves the in-flight set only the handler can journal or dead-letter it;
    # a signal landing inside the handler used to drop the rest of that answer.
    from optisync.optimove.outcome import Endpoint
    from optisync.realtime.sender import Sender, sigterm_as_interrupt

    class Echo:
        def send(self, endpoint: Endpoint, body: object) -> object:
            return body

    sender: Sender[str] = Sender(Echo(), workers=1)  # type: ignore[arg-type]
    handled: list[object] = []

    def handle(tag: object, delivery: object, exc: BaseException | None) -> None:
        if not handled:
            os.kill(os.getpid(), sig)  # arrives mid-way through recording
        handled.append(tag)

    try:
        with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
            for i in range(2):  # the worker's room: settle must take an answer
                sender.submit(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, i, f"send-{i}")
            sender.settle(handle)
        assert handled  # the answer being recorded was recorded in full
        assert len(handled) + len(sender.inflight) == 2  # nothing left between the two
    finally:
        sender.close()


def test_an_interrupt_keeps_its_exit_code_whatever_settles_after_it() -> None:
    # push and replay share this rule: the first reason to stop stays, an interrupt shows.
    from optisync.realtime.summary import ReplaySummary

    summary = ReplaySummary(run_id="r")
    summary.stop("unavailable", "Optimove unavailable after 6 attempts")
    summary.stop("auth", "401")
    assert summary.stopped == "unavailable"
    summary.stop("interrupted", "interrupted by a signal")
    summary.stop("auth", "401")  # an answer settling after the signal
    assert summary.exit_code() == ExitCode.INTERRUPTED
