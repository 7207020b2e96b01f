from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optisync.cli import app
from optisync.errors import ExitCode

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never see the developer's own optisync settings or secrets, and keep their
    state (journals, opt-in register) apart from each other and from the checkout."""
    import os

    for name in list(os.environ):
        if name.startswith(("OPTISYNC_", "OPTIMOVE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__STATE_DIR", str(tmp_path / "state"))


class Result:
    def __init__(self, exit_code: int, stdout: str, stderr: str) -> None:
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


def invoke(*args: str, expect: int | None = ExitCode.OK, input: str | None = None) -> Result:
    """Run the CLI in-process and fail loudly, with its output, on an unexpected exit code."""
    result = CliRunner().invoke(app, list(args), input=input)
    if expect is not None and result.exit_code != expect:
        raise AssertionError(
            f"optisync {' '.join(args)} exited {result.exit_code}, expected {int(expect)}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}\n"
            f"--- exception\n{result.exception!r}"
        )
    return Result(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def example_dir(tmp_path: Path) -> Path:
    """A private copy of examples/ so tests may edit it."""
    target = tmp_path / "examples"
    shutil.copytree(EXAMPLES, target)
    return target


WriteConfig = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write a config (dedented YAML) and any template files next to it."""

    def write(text: str, templates: dict[str, str] | None = None) -> Path:
        for name, body in (templates or {}).items():
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(body), encoding="utf-8")
        path = tmp_path / "optisync.yaml"
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write
