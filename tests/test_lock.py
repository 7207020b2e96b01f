"""The run lock (docs/exit-codes.md: exit 75 when another run holds the lock)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from optisync.errors import ExitCode, LockedError, StorageError
from optisync.lock import RunLock

# Takes the lock, says so, then holds it until stdin closes (or the process is killed).
HOLDER = """
import sys
from pathlib import Path
from optisync.lock import RunLock
with RunLock(Path(sys.argv[1]), command="push-event"):
    print("locked", flush=True)
    sys.stdin.read()
"""


class Holder:
    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "locked", line

    @property
    def pid(self) -> int:
        return self.proc.pid

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=10) == 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Holder]:
    h = Holder(tmp_path / "run.lock")
    yield h
    if h.proc.poll() is None:
        h.kill()
    if h.proc.stdin and not h.proc.stdin.closed:
        h.proc.stdin.close()
    if h.proc.stdout:
        h.proc.stdout.close()


def test_lock_and_release(tmp_path: Path) -> None:
    path = tmp_path / "state" / "run.lock"
    with RunLock(path, command="replay") as lock:
        assert lock.held
        info = json.loads(path.read_text())
        assert info["pid"] == os.getpid()
        assert info["command"] == "replay"
        assert info["started_at"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not lock.held
    assert path.exists()  # never deleted
    assert path.read_text() == ""
    with RunLock(path):  # free again
        pass


def test_overlap_in_another_process_raises_locked_error(tmp_path: Path, holder: Holder) -> None:
    with pytest.raises(LockedError) as info:
        RunLock(tmp_path / "run.lock").acquire()
    err = info.value
    assert err.exit_code is ExitCode.LOCKED
    assert int(err.exit_code) == 75
    assert f"pid {holder.pid}" in err.message
    assert "push-event" in err.message
    assert "since " in err.message
    assert str(tmp_path / "run.lock") in err.message
    assert err.hint and "--wait" in err.hint
    holder.release()


def test_overlap_within_one_process(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    with RunLock(path), pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        RunLock(path).acquire()


def test_lock_of_a_killed_process_is_taken_over(tmp_path: Path, holder: Holder) -> None:
    holder.kill()
    path = tmp_path / "run.lock"
    assert str(holder.pid) in path.read_text()  # the dead holder's record is still there
    with RunLock(path, command="replay"):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_wait_acquires_after_release(tmp_path: Path, holder: Holder) -> None:
    timer = threading.Timer(0.5, holder.release)
    timer.start()
    started = time.monotonic()
    try:
        with RunLock(tmp_path / "run.lock", wait=True, timeout=20, poll_interval=0.05):
            waited = time.monotonic() - started
    finally:
        timer.join()
    assert 0.3 < waited < 20


def test_wait_gives_up_after_timeout(tmp_path: Path, holder: Holder) -> None:
    started = time.monotonic()
    lock = RunLock(tmp_path / "run.lock", wait=True, timeout=0.3, poll_interval=0.05)
    with pytest.raises(LockedError, match=rf"gave up after 0.3s.*pid {holder.pid}"):
        lock.acquire()
    assert not lock.held
    assert time.monotonic() - started < 5
    holder.release()


def test_wait_without_timeout_blocks_until_free(tmp_path: Path, holder: Holder) -> None:
    timer = threading.Timer(0.3, holder.release)
    timer.start()
    try:
        with RunLock(tmp_path / "run.lock", wait=True, poll_interval=0.05) as lock:
            assert lock.held
    finally:
        timer.join()


def test_empty_lock_file_held_by_someone(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    with RunLock(path):
        path.write_text("")  # as if the holder had not written its record yet
        with pytest.raises(LockedError, match="pid unknown"):
            RunLock(path).acquire()


def test_reacquiring_the_same_object_is_a_bug(tmp_path: Path) -> None:
    lock = RunLock(tmp_path / "run.lock")
    with lock, pytest.raises(RuntimeError):
        lock.acquire()


def test_unopenable_lock_file_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(StorageError, match="lock file"):
        RunLock(tmp_path / "run.lock").acquire()
