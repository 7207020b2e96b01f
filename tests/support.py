"""What tests share besides fixtures: running the CLI, fakes, constants and config builders.

Test modules import these as ``from tests.support import ...``; conftest.py files hold
the fixtures (and pytest hooks) and may use what is here.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from optisync.cli import app
from optisync.commands import realtime as commands
from optisync.config.models import Config, OptimoveSettings
from optisync.errors import ExitCode, OptisyncError
from optisync.optimove.client import OptimoveClient
from optisync.realtime.inputs import EventSource
from optisync.realtime.replay import ReplayFilter
from optisync.realtime.summary import RunSummary
from optisync.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# -- running the CLI -----------------------------------------------------------------------


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


# The type of the ``write_config`` fixture: (dedented YAML, {name: template body}) -> path.
WriteConfig = Callable[..., Path]

# -- suite counts --------------------------------------------------------------------------

SUITE_COUNTS: list[str] = []


def report(line: str) -> None:
    """A suite's counts, printed at the end of every run (CI included), not just with -s."""
    SUITE_COUNTS.append(line)


# -- configs -------------------------------------------------------------------------------

ALL_TYPES = (
    "[MEMBER_REGISTRATION, OPT_IN_EMAIL, REDEMPTION, MEMBER_PROFILE_UPDATE, MEMBER_TIER,"
    " PARTNER_CARD_LINKED, PARTNER_CARD_UNLINKED, POINTS_TRANSFERRED, PURCHASE,"
    " HOUSEHOLD_BALANCE_UPDATED, GAMEPLAY_QUALIFIED]"
)
# A minimal valid config as text whose lines are fixed: validate-config tests assert line
# numbers and append sections after line 10.
VALID_CONFIG = f"""\
optimove: {{callback_url: "https://optisync.example.com/v1/optimove/callback",
  api_key: "${{OPTIMOVE_API_KEY:-}}"}}
attributes:
  emd:
    opt_in_key: email_opt_in
routing:
  rules:
    - types: {ALL_TYPES}
      to: [attributes]
locale: {{default_locale: en_CA, default_currency: CAD}}
"""

SANDBOX_TENANT = 1234

# The transactional template the live-sandbox suites mail a redemption receipt with.
RECEIPT_TEMPLATE = {
    "receipt": {
        "kind": "transactional",
        "template_id": 11,
        "event": "REDEMPTION",
        "attribute_mappings": {"POINTS": "data.points"},
    }
}


def config_yaml(
    url: str,
    *,
    dead_letters: Path,
    events_token: bool = True,
    optimove: dict[str, Any] | None = None,
    **sections: Any,
) -> str:
    """YAML text of a config that sends to a live sandbox at ``url``.

    The ``optimove`` section holds the sandbox's two endpoints, its tenant, the API key
    (and, unless ``events_token`` is false, the events token) read from the environment,
    and then the given ``optimove`` settings; dead letters go to ``dead_letters``. Every
    other keyword is a whole top-level section (``events=``, ``routing=`` ...).
    """
    settings: dict[str, Any] = {
        "api_url": url,
        "events_url": f"{url}/reportEvent",
        "tenant_id": SANDBOX_TENANT,
        "api_key": "${OPTIMOVE_API_KEY}",
    }
    if events_token:
        settings["events_token"] = "${OPTIMOVE_EVENTS_TOKEN}"
    settings.update(optimove or {})
    config = {"optimove": settings, **sections, "dead_letter": {"dir": str(dead_letters)}}
    return yaml.safe_dump(config, sort_keys=False)


# -- messages ------------------------------------------------------------------------------


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


def accepted_messages(box: Sandbox) -> tuple[list[str], list[str]]:
    """Message ids of the events a sandbox accepted, and the recipients of its accepted
    mails (bulk calls carry up to 200 recipients under one UniqueMessageID)."""
    events = [
        event["context"]["message_id"]
        for rec in box.received("events")
        for event in (rec["body"] if isinstance(rec["body"], list) else [rec["body"]])
    ]
    mails = [r["Email"] for rec in box.received("transactional") for r in rec["body"]["Recipients"]]
    return events, mails


# -- a fake Optimove behind the CLI --------------------------------------------------------

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


# -- time ----------------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that only moves when something sleeps on it (or a test advances it).

    Callable as the clock, ``sleep`` as the sleep function; ``sleeps`` keeps every wait.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


# -- the Optimove client on a scripted transport -------------------------------------------

API_KEY = "key-SECRET-0123456789abcdef"
EVENTS_TOKEN = "token-SECRET-fedcba9876543210"
API_URL = "https://api4.optimove.test"
EVENTS_URL = "https://gateway.optimove.test/reportEvent"

Handler = Callable[[httpx.Request], httpx.Response]


def make_settings(**overrides: Any) -> OptimoveSettings:
    data: dict[str, Any] = {
        "api_url": API_URL,
        "events_url": EVENTS_URL,
        "tenant_id": 42,
        "api_key": API_KEY,
        "events_token": EVENTS_TOKEN,
    }
    data.update(overrides)
    return OptimoveSettings.model_validate(data)


class Recorder:
    """A MockTransport handler that replays scripted answers and keeps every request."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        request.read()
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer


# -- Optimove's verdicts ---------------------------------------------------------------------


class CallbackReceiver:
    """A loopback HTTP listener standing in for ``optisync serve``'s callback route: each
    POST goes to ``handler(params, body)``; its answers are kept in ``answers``."""

    def __init__(self, handler: Callable[[dict[str, str], bytes], tuple[int, Any]]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qsl, urlsplit

        receiver = self
        self.handler = handler
        self.answers: list[tuple[int, Any]] = []

        class Handle(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                params = dict(parse_qsl(urlsplit(self.path).query))
                status, answer = receiver.handler(params, body)
                receiver.answers.append((status, answer))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handle)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/optimove/callback"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Until ``count`` callbacks were answered (fails the test after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while len(self.answers) < count:
            assert time.monotonic() < deadline, f"{len(self.answers)} of {count} callbacks came"
            time.sleep(0.02)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- optisync serve ------------------------------------------------------------------------


def serve_config(url: str, tmp_path: Path) -> str:
    """YAML of :func:`tier_or_redemption_config` for ``optisync serve``, with its spool
    under ``tmp_path``."""
    text = tier_or_redemption_config(url, tmp_path)
    return text + yaml.safe_dump({"serve": {"spool_dir": str(tmp_path / "spool")}})


def tier_or_redemption_config(url: str, tmp_path: Path) -> str:
    """YAML of a config for :func:`tier_or_redemption` messages against a sandbox at
    ``url``: tier changes to events and attributes, redemptions to events and the receipt
    mail, fast retries, dead letters and state under ``tmp_path``."""
    return config_yaml(
        url,
        dead_letters=tmp_path / "dl",
        optimove={
            "concurrency": 4,
            "rate_limit": {"requests": 10000, "per_seconds": 1},
            "transactional_rate_limit": {"requests": 10000, "per_seconds": 1},
            "timeouts": {"connect": 2, "read": 2},
            "retry": {"max_attempts": 3, "base_delay": 0.001, "max_delay": 0.01},
            "state_dir": str(tmp_path / "st"),
        },
        attributes={
            "realtime": [
                {
                    "name": "TierName",
                    "type": "string",
                    "source": "data.tier",
                    "events": ["MEMBER_TIER"],
                }
            ],
            "emd": {"opt_in_key": "email_opt_in"},
        },
        events={
            "MEMBER_TIER": {"name": "member_tier", "context": {"message_id": "id"}},
            "REDEMPTION": {"name": "redemption", "context": {"message_id": "id"}},
        },
        templates=RECEIPT_TEMPLATE,
        routing={
            "rules": [
                {"types": ["MEMBER_TIER"], "to": ["events", "attributes"]},
                {"types": ["REDEMPTION"], "to": ["events", "email:receipt"]},
            ]
        },
    )
