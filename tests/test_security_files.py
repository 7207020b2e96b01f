"""Files optisync creates are the owner's alone, and planted symbolic links are refused
rather than written through (docs/security.md)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from optisync.durable import atomic_write, ensure_private_dir, write_new
from optisync.errors import ExitCode, StorageError
from optisync.lock import RunLock
from tests.support import EXAMPLES, invoke

VICTIM_TEXT = "precious: do not touch\n"


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    path.chmod(0o644)
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# --- modes ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("umask_022")
def test_durable_files_are_0600_and_new_folders_0700(tmp_path: Path) -> None:
    folder = ensure_private_dir(tmp_path / "a" / "b" / "c")
    for part in (tmp_path / "a", tmp_path / "a" / "b", folder):
        assert _mode(part) == 0o700, part
    atomic_write(folder / "state.json", b"{}")
    write_new(folder / "new.bin", b"x")
    assert _mode(folder / "state.json") == 0o600
    assert _mode(folder / "new.bin") == 0o600


def test_existing_folders_keep_their_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    ensure_private_dir(shared / "mine")
    assert _mode(shared) == 0o755
    assert _mode(shared / "mine") == 0o700


@pytest.mark.usefixtures("umask_022")
def test_lock_and_log_files_are_private(tmp_path: Path) -> None:
    with RunLock(tmp_path / "locks" / "run.lock"):
        pass
    assert _mode(tmp_path / "locks") == 0o700
    assert _mode(tmp_path / "locks" / "run.lock") == 0o600
    log = tmp_path / "logs" / "run.log"
    invoke("--log-file", str(log), "validate-config", str(EXAMPLES / "optisync.yaml"))
    assert _mode(log.parent) == 0o700
    assert _mode(log) == 0o600


def test_export_under_umask_022_leaves_nothing_readable_by_others(tmp_path: Path) -> None:
    """The whole CLI, as cron runs it: every file it creates is 0600, every folder 0700."""
    work = tmp_path / "work"
    shutil.copytree(EXAMPLES, work / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPTISYNC_", "OPTIMOVE_"))}
    before = {p for p in work.rglob("*")}
    result = subprocess.run(
        [
            sys.executable, "-m", "optisync", "--config", str(work / "examples" / "optisync.yaml"),
            "--log-file", str(work / "logs" / "export.log"), "export-batch",
        ],
        env=env, capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: os.umask(0o022),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    created = {p for p in work.rglob("*")} - before
    assert any(p.name == "manifest.json" for p in created)
    assert any(p.suffix == ".gz" for p in created)
    loose = {
        str(p.relative_to(work)): oct(_mode(p))
        for p in created
        if _mode(p) != (0o700 if p.is_dir() else 0o600)
    }
    assert loose == {}


# --- symbolic links -------------------------------------------------------------------------


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_lock_refuses_a_planted_symlink(tmp_path: Path, victim: Path, dangling: bool) -> None:
    target = tmp_path / "would-be-created" if dangling else victim
    lock = tmp_path / "state" / "export-batch.lock"
    lock.parent.mkdir()
    lock.symlink_to(target)
    with pytest.raises(StorageError, match="symbolic link"), RunLock(lock):
        pass
    assert victim.read_text() == VICTIM_TEXT
    assert not (tmp_path / "would-be-created").exists()
    assert lock.is_symlink()


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_journal_refuses_a_planted_symlink(tmp_path: Path, victim: Path, dangling: bool) -> None:
    from optisync.realtime.journal import Journal

    target = tmp_path / "would-be-created" if dangling else victim
    path = tmp_path / "journals" / "input.journal"
    path.parent.mkdir()
    path.symlink_to(target)
    with pytest.raises(StorageError, match="symbolic link"):
        Journal(path)
    assert victim.read_text() == VICTIM_TEXT
    assert not (tmp_path / "would-be-created").exists()


def test_journal_reads_what_it_wrote_and_appends(tmp_path: Path) -> None:
    from optisync.realtime.journal import Journal

    path = tmp_path / "j.journal"
    first = Journal(path)
    first.record("m1", "events#0")
    first.close()
    second = Journal(path)
    assert second.handled("m1", "events#0") and not second.handled("m2", "events#0")
    second.record("m2", "events#0")
    second.close()
    assert len(Journal(path)) == 2


def test_export_batch_refuses_a_planted_lock_symlink(example_dir: Path, victim: Path) -> None:
    state = example_dir.parent / "var" / "batch-state"
    state.mkdir(parents=True)
    (state / "export-batch.lock").symlink_to(victim)
    result = invoke("--config", str(example_dir / "optisync.yaml"), "export-batch", expect=None)
    assert result.exit_code != ExitCode.OK
    assert "symbolic link" in result.stderr
    assert victim.read_text() == VICTIM_TEXT


def test_log_file_refuses_a_planted_symlink(tmp_path: Path, victim: Path) -> None:
    log = tmp_path / "run.log"
    log.symlink_to(victim)
    result = invoke(
        "--log-file", str(log), "validate-config", str(EXAMPLES / "optisync.yaml"),
        expect=ExitCode.UNAVAILABLE,
    )  # fmt: skip
    assert "is a symbolic link" in result.stderr
    assert victim.read_text() == VICTIM_TEXT


def test_write_new_refuses_a_planted_symlink(tmp_path: Path, victim: Path) -> None:
    planted = tmp_path / ".tmp-manifest.json.1234"
    planted.symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_new(planted, b"overwritten")
    assert victim.read_text() == VICTIM_TEXT
    assert planted.is_symlink()  # not removed either: it was not ours


def test_atomic_write_replaces_a_link_instead_of_writing_through_it(
    tmp_path: Path, victim: Path
) -> None:
    final = tmp_path / "manifest.json"
    final.symlink_to(victim)
    atomic_write(final, b"{}")
    assert victim.read_text() == VICTIM_TEXT
    assert not final.is_symlink() and final.read_bytes() == b"{}"
