"""The dead-letter store (docs/dead-letters.md)."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from optisync import __version__
from optisync.config.models import Target
from optisync.errors import ExitCode, StorageError
from optisync.realtime.deadletter import (
    DeadLetter,
    DeadLetterStore,
    ErrorClass,
    Kind,
    LetterError,
    LetterSource,
    Problem,
)

VISA = "4111111111111111"
T0 = datetime(2026, 11, 25, 15, 15, tzinfo=UTC)


def make_letter(**changes: object) -> DeadLetter:
    fields: dict[str, object] = {
        "message_id": "evt-7f3a",
        "kind": Kind.EVENTS,
        "type": "REDEMPTION",
        "envelope": {
            "id": "evt-7f3a",
            "type": "REDEMPTION",
            "member_id": "M000123",
            "data": {"points": 5000},
        },
        "request": {"tenant": 1, "event": "redemption", "context": {"points": 5000}},
        "endpoint": "https://events.example/report",
        "error": LetterError(error_class=ErrorClass.TRANSIENT, status=503, message="busy"),
        "source": LetterSource(file="events.jsonl", line=3),
        "first_failed_at": T0,
        "last_failed_at": T0,
        "run_id": "run-1",
        "config_hash": "sha256:abc",
    }
    fields.update(changes)
    return DeadLetter.model_validate(fields)


@pytest.fixture
def store(tmp_path: Path) -> DeadLetterStore:
    return DeadLetterStore(tmp_path / "dl")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_folders_are_created_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = DeadLetterStore(tmp_path / "a" / "dl")
    finally:
        os.umask(old)
    assert mode(store.dir) == 0o700
    assert mode(store.tmp_dir) == 0o700
    assert mode(store.new_dir) == 0o700


def test_write_is_atomic_and_owner_only(store: DeadLetterStore) -> None:
    old = os.umask(0)  # a permissive umask must not widen the file mode
    try:
        path = store.write(make_letter())
    finally:
        os.umask(old)
    assert path.parent == store.new_dir
    assert list(store.tmp_dir.iterdir()) == []
    assert mode(path) == 0o600
    assert path.name.endswith(".json")
    assert json.loads(path.read_text())["error"]["class"] == "transient"


def test_round_trip_keeps_every_field(store: DeadLetterStore) -> None:
    letter = make_letter(
        id="letter-1",
        attempts=3,
        first_failed_at=datetime(2026, 11, 25, 10, 15, tzinfo=timezone(timedelta(hours=-5))),
        last_failed_at=T0 + timedelta(hours=1),
        kind="attributes",
        error={"class": "rate_limited", "status": 429, "message": "slow down"},
        source={"file": None, "line": None},
        request=[{"customerId": "M1", "attributes": {"tier": "gold", "n": 1.5, "x": None}}],
    )
    path = store.write(letter)
    [(got_path, got)] = list(store.iter_letters())
    assert got_path == path
    assert got == letter
    assert got.first_failed_at == T0  # stored in UTC
    assert got.first_failed_at.utcoffset() == timedelta(0)
    assert got.tool_version == __version__
    raw = json.loads(path.read_text())
    assert set(raw) == {
        "format_version",
        "id",
        "message_id",
        "kind",
        "type",
        "envelope",
        "request",
        "endpoint",
        "error",
        "source",
        "attempts",
        "first_failed_at",
        "last_failed_at",
        "run_id",
        "tool_version",
        "config_hash",
    }
    assert raw["error"] == {"class": "rate_limited", "status": 429, "message": "slow down"}


def test_invalid_input_letter_has_no_request(store: DeadLetterStore) -> None:
    letter = make_letter(
        kind=Kind.INPUT,
        type=None,
        envelope="{not json",
        request=None,
        endpoint=None,
        error=LetterError(error_class=ErrorClass.INVALID, message="line 3: invalid JSON"),
    )
    store.write(letter)
    [(_, got)] = list(store.iter_letters(kind="input"))
    assert got.request is None and got.envelope == "{not json"


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone"):
        make_letter(first_failed_at=datetime(2026, 1, 1))


def test_card_numbers_are_masked_on_write_whatever_the_caller_passed(
    store: DeadLetterStore,
) -> None:
    letter = make_letter(
        envelope={"data": {"note": f"card {VISA}", "pan": int(VISA)}},
        request={"context": {"note": "4111 1111 1111 1111"}},
        endpoint=f"https://x.example/?q={VISA}",
        error=LetterError(error_class=ErrorClass.FATAL, status=400, message=f"bad {VISA}"),
    )
    path = store.write(letter)
    text = path.read_text()
    assert VISA not in text
    assert "4111 1111" not in text
    [(_, got)] = list(store.iter_letters())
    assert got.envelope == {"data": {"note": "card ************1111", "pan": "************1111"}}
    assert got.request == {"context": {"note": "************1111"}}
    assert got.error.message == "bad ************1111"


def test_names_are_unique_and_sort_in_write_order(store: DeadLetterStore) -> None:
    paths = [store.write(make_letter(message_id=f"m{i}", id=f"l{i}")) for i in range(300)]
    assert len({p.name for p in paths}) == 300
    assert sorted(p.name for p in paths) == [p.name for p in paths]
    assert [letter.id for _, letter in store.iter_letters()] == [f"l{i}" for i in range(300)]
    assert store.count() == 300


def test_names_do_not_contain_the_message_id(store: DeadLetterStore) -> None:
    path = store.write(make_letter(message_id=VISA))
    assert VISA not in path.name


def test_filters(store: DeadLetterStore) -> None:
    store.write(make_letter(id="a", kind=Kind.EVENTS, type="REDEMPTION"))
    store.write(make_letter(id="b", kind=Kind.EMAIL, type="REDEMPTION"))
    store.write(
        make_letter(
            id="c",
            kind=Kind.EVENTS,
            type="MEMBER_TIER",
            first_failed_at=T0 + timedelta(days=2),
            last_failed_at=T0 + timedelta(days=2),
        )
    )
    store.write(make_letter(id="d", kind=Kind.ATTRIBUTES, type=None))

    def ids(**filters: object) -> list[str]:
        return [letter.id for _, letter in store.iter_letters(**filters)]  # type: ignore[arg-type]

    assert ids() == ["a", "b", "c", "d"]
    assert ids(kind="events") == ["a", "c"]
    assert ids(kind=Kind.EMAIL) == ["b"]
    assert ids(type="REDEMPTION") == ["a", "b"]
    assert ids(kind="events", type="REDEMPTION") == ["a"]
    assert ids(since=T0 + timedelta(days=1)) == ["c"]
    assert ids(since=T0) == ["a", "b", "c", "d"]
    assert ids(limit=2) == ["a", "b"]
    assert ids(kind="events", limit=1) == ["a"]
    assert ids(limit=0) == []
    with pytest.raises(ValueError, match="aware"):
        ids(since=datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        ids(kind="nonsense")


def test_corrupt_file_is_reported_and_skipped(
    store: DeadLetterStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.write(make_letter(id="first"))
    bad = store.new_dir / "20000101T000000.000000Z-0000001-000000-events-x.json"
    bad.write_text("{half a lett")
    wrong = store.new_dir / "20000101T000000.000001Z-0000001-000001-events-y.json"
    wrong.write_text(json.dumps({"message_id": "x"}))
    binary = store.new_dir / "20000101T000000.000002Z-0000001-000002-events-z.json"
    binary.write_bytes(b"\xff\xfe\x00")
    store.write(make_letter(id="last"))
    problems: list[Problem] = []
    with caplog.at_level(logging.WARNING, logger="optisync.realtime.deadletter"):
        got = [letter.id for _, letter in store.iter_letters(problems=problems)]
    assert got == ["first", "last"]
    assert [p.path for p in problems] == [bad, wrong, binary]
    assert all("not a valid dead letter" in p.reason for p in problems)
    assert str(bad) in caplog.text
    assert store.count() == 5
    # without a problems list it still does not crash
    assert len(list(store.iter_letters())) == 2


def test_record_failure_counts_attempts_and_keeps_first_failure(store: DeadLetterStore) -> None:
    path = store.write(make_letter(attempts=1))
    [(_, letter)] = list(store.iter_letters())
    later = T0 + timedelta(hours=5)
    new_error = LetterError(error_class=ErrorClass.AUTH, status=401, message=f"no {VISA}")
    updated = store.record_failure(path, letter, new_error, at=later)
    assert updated.attempts == 2
    [(same_path, stored)] = list(store.iter_letters())
    assert same_path == path
    assert stored == updated
    assert stored.attempts == 2
    assert stored.first_failed_at == T0
    assert stored.last_failed_at == later
    assert stored.error.error_class is ErrorClass.AUTH
    assert stored.error.message == "no ************1111"
    assert mode(path) == 0o600
    assert list(store.tmp_dir.iterdir()) == []
    store.record_failure(path, stored, new_error)
    [(_, again)] = list(store.iter_letters())
    assert again.attempts == 3
    assert again.last_failed_at > later


def test_remove_and_archive(store: DeadLetterStore) -> None:
    p1 = store.write(make_letter(id="1"))
    p2 = store.write(make_letter(id="2"))
    assert store.remove(p1) is True
    assert not p1.exists()
    assert store.remove(p1) is False
    assert store.remove(p2, archive=True) is True
    assert not p2.exists()
    archived = store.archive_dir / p2.name
    assert archived.exists()
    assert mode(store.archive_dir) == 0o700
    assert store.count() == 0
    with pytest.raises(ValueError, match="not a letter"):
        store.remove(archived)


def test_purge_older_than(store: DeadLetterStore) -> None:
    now = T0 + timedelta(days=30)
    store.write(make_letter(id="old", last_failed_at=T0))
    store.write(make_letter(id="recent", last_failed_at=now - timedelta(days=1)))
    # an old letter retried recently is kept: retention counts from the last failure
    store.write(make_letter(id="retried", first_failed_at=T0, last_failed_at=now))
    corrupt = store.new_dir / "20000101T000000.000000Z-0000001-000000-events-x.json"
    corrupt.write_text("garbage")
    old_mtime = (now - timedelta(days=20)).timestamp()
    os.utime(corrupt, (old_mtime, old_mtime))
    assert store.purge_older_than(7, now=now) == 2
    assert sorted(letter.id for _, letter in store.iter_letters()) == ["recent", "retried"]
    assert not corrupt.exists()


def test_purge_cleans_old_archive(store: DeadLetterStore) -> None:
    p = store.write(make_letter())
    store.remove(p, archive=True)
    archived = store.archive_dir / p.name
    old = time.time() - 10 * 86400
    os.utime(archived, (old, old))
    assert store.purge_older_than(7) == 1
    assert not archived.exists()


def test_cleanup_tmp_removes_only_stale_files(store: DeadLetterStore) -> None:
    stale = store.tmp_dir / "stale.json"
    stale.write_text("{")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = store.tmp_dir / "fresh.json"
    fresh.write_text("{")
    assert store.cleanup_tmp() == 1
    assert not stale.exists() and fresh.exists()
    assert store.cleanup_tmp(None) == 1
    assert list(store.tmp_dir.iterdir()) == []


def test_tmp_files_never_count_as_letters(store: DeadLetterStore) -> None:
    (store.tmp_dir / "x.json").write_text(make_letter().model_dump_json(by_alias=True))
    assert store.count() == 0
    assert list(store.iter_letters()) == []


@pytest.mark.parametrize(
    ("err", "words"),
    [
        (errno.ENOSPC, "disk is full"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only"),
    ],
)
@pytest.mark.parametrize("fail_in", ["write", "open", "replace", "fsync"])
def test_storage_errors_name_the_folder_and_leave_nothing(
    store: DeadLetterStore,
    monkeypatch: pytest.MonkeyPatch,
    err: int,
    words: str,
    fail_in: str,
) -> None:
    def boom(*args: object, **kwargs: object) -> object:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, fail_in, boom)
    with pytest.raises(StorageError) as info:
        store.write(make_letter())
    monkeypatch.undo()
    assert str(store.dir) in info.value.message
    assert words in info.value.message
    assert info.value.exit_code == ExitCode.UNAVAILABLE
    assert info.value.hint and "dead_letter.dir" in info.value.hint
    assert list(store.tmp_dir.iterdir()) == []
    assert list(store.new_dir.iterdir()) == []


def test_record_failure_storage_error_keeps_the_old_letter(
    store: DeadLetterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = store.write(make_letter())
    before = path.read_bytes()

    def full(*args: object, **kwargs: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    err = LetterError(error_class=ErrorClass.TRANSIENT, message="x")
    with pytest.raises(StorageError, match="disk is full"):
        store.record_failure(path, make_letter(), err)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert list(store.tmp_dir.iterdir()) == []


def test_unwritable_folder_on_creation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(StorageError, match="permission denied"):
        DeadLetterStore(tmp_path / "nope")


def test_a_letter_kind_is_a_routing_target_or_input() -> None:
    # replay --kind and the letter file names spell kinds; a new target must get one
    assert [k.value for k in Kind] == [
        "events",
        "attributes",
        "opt_in",
        "email",
        "promotions",
        "input",
    ]
    assert {k.value for k in Kind} == {t.value for t in Target} | {"input"}
