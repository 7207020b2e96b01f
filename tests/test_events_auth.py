"""The events host gets only the credential the config says it takes: the API key never
goes there by default, and a config routing to events without an events token is refused."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from optisync.errors import ExitCode
from tests.support import invoke

KEY = "key-events-auth-4d1c"
TOKEN = "token-events-auth-9e2a"


class HeaderRecorder(ThreadingHTTPServer):
    """A loopback Optimove that answers every call with success and keeps each request's
    path and headers."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def events(self) -> list[dict[str, str]]:
        with self.lock:
            return [headers for path, headers in self.seen if path == "/reportEvent"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HeaderRecorder

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        answer = b'{"status": "success", "message": "1"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture
def host() -> Iterator[HeaderRecorder]:
    server = HeaderRecorder()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    thread.join()
    server.server_close()


def write(tmp_path: Path, url: str, **optimove: Any) -> Path:
    config = {
        "optimove": {
            "api_url": url,
            "events_url": f"{url}/reportEvent",
            "tenant_id": 1234,
            "api_key": "${OPTIMOVE_API_KEY}",
            **optimove,
        },
        "events": {"MEMBER_TIER": {"name": "member_tier", "context": {"tier": "data.tier"}}},
        "attributes": {
            "realtime": [
                {"name": "Tier", "type": "string", "source": "data.tier", "events": ["MEMBER_TIER"]}
            ],
            "emd": {"opt_in_key": "email_opt_in"},
        },
        "routing": {"rules": [{"types": ["MEMBER_TIER"], "to": ["events", "attributes"]}]},
        "dead_letter": {"dir": str(tmp_path / "dl")},
    }
    path = tmp_path / "optisync.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def push(config: Path, expect: int = ExitCode.OK) -> str:
    event = {
        "id": "t-1",
        "type": "MEMBER_TIER",
        "member_id": "M1",
        "occurred_at": "2026-11-25T10:00:00Z",
        "data": {"tier": "Gold"},
    }
    source = config.parent / "event.json"
    source.write_text(json.dumps(event), encoding="utf-8")
    return invoke("-c", str(config), "push-event", "--file", str(source), expect=expect).stderr


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIMOVE_API_KEY", KEY)


def test_without_an_events_token_the_config_is_refused_and_nothing_is_sent(
    host: HeaderRecorder, tmp_path: Path
) -> None:
    stderr = push(write(tmp_path, host.url), expect=ExitCode.CONFIG)
    assert "no events token is set" in stderr
    for key in ("optimove.events_token", "events_token_file", "OPTISYNC_OPTIMOVE__EVENTS_TOKEN"):
        assert key in stderr
    assert KEY not in stderr
    assert host.seen == []


def test_signed_events_never_carry_the_api_key(
    host: HeaderRecorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTIMOVE_EVENTS_TOKEN", TOKEN)
    push(write(tmp_path, host.url, events_token="${OPTIMOVE_EVENTS_TOKEN}"))
    (event,) = host.events()
    assert "x-api-key" not in event
    assert event["x-optimove-signature-version"] == "1"
    rest = [headers for path, headers in host.seen if path != "/reportEvent"]
    assert [headers["x-api-key"] for headers in rest] == [KEY]  # the attribute update


def test_the_key_goes_to_the_events_host_only_when_the_config_says_so(
    host: HeaderRecorder, tmp_path: Path
) -> None:
    push(write(tmp_path, host.url, events_auth="api_key_header"))
    (event,) = host.events()
    assert event["x-api-key"] == KEY
    assert "x-optimove-signature-content" not in event


def test_an_events_host_without_credentials_gets_none(host: HeaderRecorder, tmp_path: Path) -> None:
    push(write(tmp_path, host.url, events_auth="none"))
    (event,) = host.events()
    assert "x-api-key" not in event
    assert "x-optimove-signature-content" not in event


@pytest.mark.parametrize(
    ("optimove", "extra"),
    [
        (
            {"opt_in": {"method": "event"}},
            {"routing": {"rules": [{"types": ["OPT_IN_EMAIL"], "to": ["opt_in"]}]}},
        ),
        (
            {},
            {
                "templates": {
                    "welcome": {
                        "kind": "triggered",
                        "delivery": "event",
                        "template_id": 5,
                        "event": "MEMBER_TIER",
                    }
                },
                "routing": {"rules": [{"types": ["MEMBER_TIER"], "to": ["email:welcome"]}]},
            },
        ),
    ],
    ids=["consent-as-event", "triggered-template-on-its-event"],
)
def test_anything_reaching_the_events_host_needs_its_credential(
    host: HeaderRecorder, tmp_path: Path, optimove: dict[str, Any], extra: dict[str, Any]
) -> None:
    path = write(tmp_path, host.url, **optimove)
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config.update(extra)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    result = invoke("--json", "validate-config", str(path), expect=ExitCode.CONFIG)
    assert "no events token is set" in result.stdout + result.stderr
    config["optimove"]["events_token_file"] = str(tmp_path / "token")
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    result = invoke("--json", "validate-config", str(path), expect=None)
    assert "no events token is set" not in result.stdout + result.stderr


def test_a_token_that_is_not_used_is_a_warning(host: HeaderRecorder, tmp_path: Path) -> None:
    path = write(tmp_path, host.url, events_auth="none", events_token="unused-token")
    result = invoke("--json", "validate-config", str(path), expect=None)
    problems = json.loads(result.stdout)["problems"]
    assert any(
        p["severity"] == "warning" and "not signed" in p["message"] for p in problems
    ), problems
