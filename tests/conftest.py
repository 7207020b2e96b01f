from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from optisync.commands import realtime as commands
from optisync.config.models import Config
from optisync.optimove.client import OptimoveClient
from tests.support import EXAMPLES, KEY, SUITE_COUNTS, TOKEN, FakeOptimove, WriteConfig


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


@pytest.fixture
def example_dir(tmp_path: Path) -> Path:
    """A private copy of examples/ so tests may edit it."""
    target = tmp_path / "examples"
    shutil.copytree(EXAMPLES, target)
    return target


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


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeOptimove:
    fake = FakeOptimove()

    def factory(config: Config) -> Callable[[], OptimoveClient]:
        def make() -> OptimoveClient:
            settings = config.optimove
            return OptimoveClient(
                settings, transport=httpx.MockTransport(fake), sleep=lambda _: None
            )

        return make

    monkeypatch.setattr(commands, "client_factory_for", factory)
    monkeypatch.setenv("OPTISYNC_CONFIG", str(EXAMPLES / "optisync.yaml"))
    monkeypatch.setenv("OPTIMOVE_API_KEY", KEY)
    monkeypatch.setenv("OPTIMOVE_EVENTS_TOKEN", TOKEN)
    monkeypatch.setenv("OPTIMOVE_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("OPTIMOVE_EVENTS_URL", "http://127.0.0.1:9/reportEvent")
    monkeypatch.setenv("OPTISYNC_DEAD_LETTER__DIR", str(tmp_path / "dl"))
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__RETRY__MAX_ATTEMPTS", "2")
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__RETRY__BASE_DELAY", "0")
    return fake


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUITE_COUNTS:
        terminalreporter.section("fault, crash and quota suites")
        for line in SUITE_COUNTS:
            terminalreporter.write_line(line)
