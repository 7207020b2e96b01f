"""Running optisync like a tool: shell completion, and progress only on a terminal."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from optisync.commands.batch import export_batch
from optisync.errors import ExitCode
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


# What makes each script that shell's: how it registers itself, and how it calls back.
SHELL_LINES = {
    "bash": [
        "complete -o default -F _optisync_completion optisync",
        "_OPTISYNC_COMPLETE=complete_bash $1 ) )",
    ],
    "zsh": [
        "#compdef optisync",
        "compdef _optisync_completion optisync",
        "_OPTISYNC_COMPLETE=complete_zsh optisync)",
    ],
    "fish": [
        'complete --command optisync --no-files --arguments "(env'
        " _OPTISYNC_COMPLETE=complete_fish _TYPER_COMPLETE_FISH_ACTION=get-args",
    ],
}


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_a_script_that_calls_back_into_optisync(shell: str) -> None:
    script = invoke("completion", shell).stdout
    for line in SHELL_LINES[shell]:
        assert line in script
    others = {f"complete_{other}" for other in SHELL_LINES if other != shell}
    assert not [other for other in others if other in script]
    if shell == "zsh":
        assert script.startswith("#compdef optisync\n")  # zsh reads it only on the first line


def test_the_bash_script_is_valid_bash() -> None:
    script = invoke("completion", "bash").stdout
    done = subprocess.run(
        ["bash", "-c", script + "\ncomplete -p optisync"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "complete -o default -F _optisync_completion optisync"


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


class FakeStream(io.StringIO):
    """stderr as a terminal (or not) would give it: only ``isatty`` differs."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def export_on(
    tty: bool, config: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, list[Any]]:
    """Run ``export-batch --dry-run`` with stderr a terminal or not: the exit code, what
    stderr received and the progress argument export_batch got."""
    import rich.progress

    from optisync.cli import app
    from optisync.commands import batch

    seen: list[Any] = []
    real = batch.export_batch

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("progress"))
        return real(*args, **kwargs)

    # rich draws on a 10/s timer; drawing on every update shows each dataset whatever the speed
    update = rich.progress.Progress.update

    def drawn(self: Any, *args: Any, **kwargs: Any) -> None:
        update(self, *args, **{**kwargs, "refresh": True})

    monkeypatch.setattr(batch, "export_batch", spy)
    monkeypatch.setattr(rich.progress.Progress, "update", drawn)
    monkeypatch.setenv("TERM", "xterm-256color")
    stderr = FakeStream(tty)
    monkeypatch.setattr(sys, "stderr", stderr)
    code = app(
        ["--config", str(config), "export-batch", "--dry-run"],
        prog_name="optisync",
        standalone_mode=False,
    )
    return int(code or 0), stderr.getvalue(), seen


def test_export_under_cron_shows_no_progress(
    example_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, stderr, seen = export_on(False, example_dir / "optisync.yaml", monkeypatch)
    assert code == ExitCode.OK
    assert seen == [None]  # not a terminal: no progress callback at all
    # the dry run's summary line and its warnings are all cron mails: no bar, no table, and
    # none of the escape codes a bar draws and erases itself with
    assert "\x1b" not in stderr and "\r" not in stderr
    first, *rest = stderr.splitlines()
    assert first == "members=6 partner_links=3 offers=3 emd=3 orders=4", stderr
    assert all(line.startswith("warning: ") for line in rest), stderr


def test_export_on_a_terminal_shows_each_dataset_s_progress(
    example_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, raw, seen = export_on(True, example_dir / "optisync.yaml", monkeypatch)
    stderr = ANSI.sub("", raw)
    assert code == ExitCode.OK
    assert len(seen) == 1 and callable(seen[0])
    for name in ("members", "partner_links", "offers", "emd", "orders"):
        assert f"exporting {name}" in stderr
    assert "5/5" in stderr
    assert "optisync export-batch" in stderr  # then the summary table, as on any terminal
