"""One test per documented exit code (docs/exit-codes.md): the codes are a public API."""

from __future__ import annotations

import gc
import sys

import pytest
import typer

from optisync import errors
from optisync.cli import OptisyncGroup, app
from optisync.errors import ExitCode
from tests.support import EXAMPLES, ROOT, VALID_CONFIG, WriteConfig, invoke


def test_table_matches_design() -> None:
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0,
        "INTERNAL": 1,
        "USAGE": 2,
        "CONFIG": 3,
        "INVALID_INPUT": 4,
        "REFUSED": 5,
        "UNAVAILABLE": 6,
        "PARTIAL": 7,
        "LOCKED": 75,
        "INTERRUPTED": 130,
    }


def test_0_ok(write_config: WriteConfig) -> None:
    invoke("validate-config", str(write_config(VALID_CONFIG)), expect=ExitCode.OK)


def test_1_internal_error_hides_traceback_unless_verbose(
    monkeypatch: pytest.MonkeyPatch, write_config: WriteConfig
) -> None:
    from optisync import config

    def boom(*_: object, **__: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(config, "validate_config", boom)
    path = str(write_config("{}"))
    result = invoke("validate-config", path, expect=ExitCode.INTERNAL)
    assert "internal error: ZeroDivisionError: division by zero" in result.stderr
    assert "Traceback" not in result.stderr
    result = invoke("-v", "validate-config", path, expect=ExitCode.INTERNAL)
    assert "Traceback" in result.stderr


def test_2_usage_error() -> None:
    result = invoke("validate-config", "--no-such-flag", expect=ExitCode.USAGE)
    assert "No such option" in result.stderr


def test_3_config_invalid_or_missing(tmp_path: object) -> None:
    result = invoke("validate-config", "/nonexistent/optisync.yaml", expect=ExitCode.CONFIG)
    assert "config file /nonexistent/optisync.yaml not found" in result.stderr


# Codes 4-7, 75 and 130 come from push, replay and export runs; their end-to-end tests live
# with those commands. Here: each error class reaches its code through the one mapping.
@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidInputError("2 invalid records"), ExitCode.INVALID_INPUT),
        (errors.AuthError("Optimove refused the API key (401)"), ExitCode.REFUSED),
        (errors.UnavailableError("Optimove unavailable after 6 attempts"), ExitCode.UNAVAILABLE),
        (errors.StorageError("dead-letter folder is full"), ExitCode.UNAVAILABLE),
        (errors.PartialFailure("3 of 10 dead-lettered"), ExitCode.PARTIAL),
        (errors.LockedError("another optisync run holds the lock"), ExitCode.LOCKED),
        (errors.Interrupted("interrupted"), ExitCode.INTERRUPTED),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
    ],
    ids=[
        "4-invalid",
        "5-refused",
        "6-unavailable",
        "6-storage",
        "7-partial",
        "75-locked",
        "130-interrupted",
        "130-ctrl-c",
    ],
)
def test_error_classes_map_to_codes(exc: BaseException, code: ExitCode) -> None:
    from typer.testing import CliRunner

    probe = typer.Typer(cls=OptisyncGroup)

    @probe.command()
    def fail() -> None:
        raise exc

    @probe.command()
    def other() -> None:  # a second command keeps Typer from flattening the group
        pass

    result = CliRunner().invoke(probe, ["fail"])
    assert result.exit_code == code
    assert result.stderr.startswith("optisync: error: ")


def test_every_command_has_help_with_an_example() -> None:
    from typer.main import get_command

    group = get_command(app)
    assert isinstance(group, OptisyncGroup)

    def walk(cmd: object, path: list[str]) -> list[list[str]]:
        import click

        assert isinstance(cmd, click.Command)
        if isinstance(cmd, click.Group):
            return [p for name, sub in cmd.commands.items() for p in walk(sub, [*path, name])]
        return [path]

    commands = walk(group, [])
    assert ["validate-config"] in commands
    for path in commands:
        result = invoke(*path, "--help")
        assert "Example: optisync " in result.stdout, path


def test_readme_mentions_every_command() -> None:
    from typer.main import get_command

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    group = get_command(app)
    import click

    assert isinstance(group, click.Group)
    for name in group.commands:
        assert f"optisync {name}" in readme, name


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["optisync", "--version"], 0),
        (["optisync", "validate-config", "/nonexistent/optisync.yaml"], ExitCode.CONFIG),
    ],
    ids=["succeeded", "failed"],
)
def test_console_entry_keeps_the_exit_code_and_skips_the_last_collection(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], code: int
) -> None:
    # The console script (cli.main) freezes the heap on the way out so the interpreter's
    # final collections are skipped (a quarter of a cold push-event); it must not change
    # the code the run exits with, whether it succeeded or failed.
    from optisync.cli import main

    monkeypatch.setattr(sys, "argv", argv)
    gc.unfreeze()
    try:
        with pytest.raises(SystemExit) as exited:
            main()
        assert (exited.value.code or 0) == code
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


@pytest.mark.parametrize(
    "args",
    [
        ["--json", "validate-config", "examples/optisync.yaml"],
        ["--json", "--config", "examples/optisync.yaml", "export-batch", "--dry-run"],
    ],
)
def test_a_reader_that_went_away_does_not_change_the_exit_code(args: list[str]) -> None:
    import os
    import subprocess

    cwd = EXAMPLES.parent
    cmd = [sys.executable, "-m", "optisync", *args]
    expected = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, check=False)
    read, write = os.pipe()
    os.close(read)  # every write to stdout now fails with EPIPE
    try:
        got = subprocess.run(cmd, cwd=cwd, stdout=write, stderr=subprocess.PIPE, check=False)
    finally:
        os.close(write)
    assert got.returncode == expected.returncode
    assert b"internal error" not in got.stderr and b"Traceback" not in got.stderr


def test_unknown_replay_kind_is_a_usage_error(write_config: WriteConfig) -> None:
    config = write_config("attributes: {emd: {opt_in_key: email_opt_in}}\n")
    result = invoke("--config", str(config), "replay", "--kind", "foo", expect=ExitCode.USAGE)
    assert "--kind foo: not a kind" in result.stderr and "email" in result.stderr


def test_unwritable_log_file_names_the_file(write_config: WriteConfig) -> None:
    config = write_config("attributes: {emd: {opt_in_key: email_opt_in}}\n")
    result = invoke(
        "--config", str(config), "--log-file", "/proc/nope/x.log", "validate-config",
        expect=ExitCode.UNAVAILABLE,
    )  # fmt: skip
    assert "cannot write the log file /proc/nope/x.log" in result.stderr
