from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from optisync.cli import app
from optisync.commands import realtime as commands
from optisync.config.models import Config
from optisync.errors import ExitCode, OptisyncError
from optisync.optimove.client import OptimoveClient
from optisync.realtime.inputs import EventSource
from optisync.realtime.replay import ReplayFilter
from optisync.realtime.summary import RunSummary

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


KEY = "test-key-7f3a9c"
TOKEN = "test-token-51be"


class FakeOptimove:
    """Answers like Optimove and records every request it accepted."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.status: dict[str, int] = {}  # path suffix -> forced status
        self.sent_uids: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        for suffix, status in self.status.items():
            if path.endswith(suffix):
                return httpx.Response(status, json={"Error": f"forced {status}"})
        body = json.loads(request.content)
        self.requests.append((path, body))
        if path.endswith("SendTransactionalMail"):
            uid = body.get("UniqueMessageID")
            if uid in self.sent_uids:
                return httpx.Response(409, json={"IsSuccess": False, "Error": "succeeded before"})
            self.sent_uids.add(uid)
            return httpx.Response(200, json={"IsSuccess": True, "SendID": 1, "Error": None})
        if path.endswith("reportEvent"):
            return httpx.Response(200, json={"status": "success", "message": "1"})
        return httpx.Response(202, json={"requestId": "r"})

    def bodies(self, suffix: str) -> list[Any]:
        return [body for path, body in self.requests if path.endswith(suffix)]

    def client(self, config: Config) -> OptimoveClient:
        """A client factory for the commands: the configured client, answered by this fake."""
        return OptimoveClient(config.optimove, transport=httpx.MockTransport(self), sleep=no_sleep)

    def push(
        self, source: EventSource | Path, *, expect: int = ExitCode.OK, **options: Any
    ) -> Outcome:
        """push-event (a Path is ``--input``) through this fake; fails on another exit code."""
        if isinstance(source, Path):
            source = EventSource(input=str(source))
        summary = commands.push_event(None, source, client_factory=self.client, **options)
        return Outcome.of(summary, expect)

    def replay(self, *, expect: int = ExitCode.OK, **filters: Any) -> Outcome:
        """replay through this fake; fails on another exit code."""
        summary = commands.replay_letters(None, ReplayFilter(**filters), client_factory=self.client)
        return Outcome.of(summary, expect)


def no_sleep(_: float) -> None:
    pass


class Outcome:
    """A command's summary and the error ``raise_for`` makes of it, as the CLI would show."""

    def __init__(self, summary: RunSummary, error: OptisyncError | None) -> None:
        self.summary = summary
        self.error = error
        self.data = summary.as_dict()  # what --json prints

    @property
    def exit_code(self) -> int:
        return int(self.error.exit_code) if self.error else int(ExitCode.OK)

    @property
    def message(self) -> str:
        return self.error.message if self.error else ""

    @classmethod
    def of(cls, summary: RunSummary, expect: int) -> Outcome:
        try:
            commands.raise_for(summary)
            error = None
        except OptisyncError as exc:
            error = exc
        outcome = cls(summary, error)
        if outcome.exit_code != expect:
            raise AssertionError(
                f"{summary.command} ended {outcome.exit_code}, expected {int(expect)}:"
                f" {outcome.message}\n{json.dumps(outcome.data, default=str)}"
            )
        return outcome


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeOptimove:
    """An Optimove stand-in in memory; pass ``fake.client`` (or use ``fake.push``/``replay``)
    as the commands' client factory. The example config and private folders are set up."""
    fake = FakeOptimove()
    monkeypatch.setenv("OPTISYNC_CONFIG", str(EXAMPLES / "optisync.yaml"))
    monkeypatch.setenv("OPTIMOVE_API_KEY", KEY)
    monkeypatch.setenv("OPTIMOVE_EVENTS_TOKEN", TOKEN)
    monkeypatch.setenv("OPTIMOVE_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("OPTIMOVE_EVENTS_URL", "http://127.0.0.1:9/reportEvent")
    monkeypatch.setenv("OPTISYNC_DEAD_LETTER__DIR", str(tmp_path / "dl"))
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__RETRY__MAX_ATTEMPTS", "2")
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__RETRY__BASE_DELAY", "0")
    return fake


def use_sandbox(
    monkeypatch: pytest.MonkeyPatch,
    box: Any,
    tmp_path: Path,
    key: str,
    token: str,
    **settings: str,
) -> None:
    """Point the example config at a live sandbox, with fast retries and private folders.

    ``settings`` are further overrides, e.g. ``OPTIMOVE__RETRY__MAX_ATTEMPTS="2"``.
    """
    env = {
        "OPTISYNC_CONFIG": str(EXAMPLES / "optisync.yaml"),
        "OPTIMOVE_API_KEY": key,
        "OPTIMOVE_EVENTS_TOKEN": token,
        "OPTIMOVE_API_URL": box.url,
        "OPTIMOVE_EVENTS_URL": box.events_url,
        "OPTISYNC_DEAD_LETTER__DIR": str(tmp_path / "dl"),
        "OPTISYNC_OPTIMOVE__RETRY__BASE_DELAY": "0.001",
        "OPTISYNC_OPTIMOVE__RETRY__MAX_DELAY": "0.01",
        **{f"OPTISYNC_{name}": value for name, value in settings.items()},
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)


SUITE_COUNTS: list[str] = []


def report(line: str) -> None:
    """A suite's counts, printed at the end of every run (CI included), not just with -s."""
    SUITE_COUNTS.append(line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUITE_COUNTS:
        terminalreporter.section("fault, crash and quota suites")
        for line in SUITE_COUNTS:
            terminalreporter.write_line(line)


def tier_or_redemption(i: int, redemption: bool) -> dict[str, Any]:
    """Message i: a tier change (events only) or a redemption (an event and a mail)."""
    if not redemption:
        return {
            "id": f"t-{i}",
            "type": "MEMBER_TIER",
            "member_id": f"M{i}",
            "occurred_at": "2026-11-25T10:00:00Z",
            "data": {"tier": "Gold"},
        }
    return {
        "id": f"r-{i}",
        "type": "REDEMPTION",
        "member_id": f"M{i}",
        "email": f"m{i}@example.com",
        "occurred_at": "2026-11-25T10:00:00Z",
        "data": {"redemption_id": f"R{i}", "points": i, "reward_name": "Gift"},
    }
