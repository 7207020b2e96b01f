"""Running optisync like a tool: shell completion, and progress only on a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from optisync.commands.batch import export_batch
from tests.support import invoke


def complete(words: str, cword: int) -> list[str]:
    env = {
        **os.environ,
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword),
        "_OPTISYNC_COMPLETE": "complete_bash",
    }
    done = subprocess.run(
        [sys.executable, "-m", "optisync"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_a_script_that_calls_back_into_optisync(shell: str) -> None:
    script = invoke("completion", shell).stdout
    assert f"_OPTISYNC_COMPLETE=complete_{shell}" in script
    assert "optisync" in script


def test_completion_refuses_an_unknown_shell() -> None:
    result = invoke("completion", "tcsh", expect=2)
    assert "'tcsh' is not one of 'bash', 'zsh', 'fish'" in result.stderr


def test_the_script_s_callback_completes_commands_and_subcommands() -> None:
    assert complete("optisync exp", 1) == ["export-batch"]
    assert complete("optisync optin ", 2) == ["sync"]
    assert "--online" in complete("optisync validate-config --on", 2)


def test_export_reports_progress_per_dataset(
    example_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    calls: list[tuple[str, int, int]] = []
    export_batch(
        example_dir / "optisync.yaml",
        dry_run=True,
        progress=lambda name, done, total: calls.append((name, done, total)),
    )
    names = [name for name, _, _ in calls[:-1]]
    assert names == ["members", "partner_links", "offers", "emd", "orders"]
    assert [done for _, done, _ in calls] == [0, 1, 2, 3, 4, 5]
    assert {total for _, _, total in calls} == {5}


def test_export_under_cron_shows_no_progress(
    example_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optisync.commands import batch

    seen: list[Any] = []
    real = batch.export_batch

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("progress"))
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "export_batch", spy)
    monkeypatch.chdir(tmp_path)
    result = invoke(
        "--config", str(example_dir / "optisync.yaml"), "export-batch", "--dry-run", expect=None
    )
    assert seen == [None]  # not a terminal: no progress callback at all
    assert "exporting" not in result.stderr


def test_export_on_a_terminal_passes_a_progress_callback(
    example_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optisync.commands import batch
    from optisync.console import Output

    seen: list[Any] = []
    real = batch.export_batch

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("progress"))
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "export_batch", spy)
    monkeypatch.setattr(Output, "interactive", property(lambda self: True))
    monkeypatch.chdir(tmp_path)
    invoke("--config", str(example_dir / "optisync.yaml"), "export-batch", "--dry-run", expect=None)
    assert len(seen) == 1 and callable(seen[0])
