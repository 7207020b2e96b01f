"""One redaction point: no configured secret, raw or escaped, reaches an error message, a
log line or a dead letter (docs/security.md)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest

from optisync import redact
from optisync.errors import ExitCode
from tests.support import EXAMPLES, FakeOptimove, invoke

# printable ASCII, as a header secret must be, with every character an escape changes
SECRET = "K3y\"with\\odd/chars+&='%"


def written_forms(secret: str) -> list[str]:
    return [
        secret,
        json.dumps(secret)[1:-1],
        repr(secret)[1:-1],
        repr(secret.encode())[2:-1],
        quote(secret, safe=""),
        quote_plus(secret),
        secret.encode("unicode_escape").decode(),
        json.dumps({"k": secret}),
    ]


def test_every_written_form_of_a_secret_is_removed() -> None:
    redact.register(SECRET)
    for form in written_forms(SECRET):
        text = redact.redact(f"before {form} after")
        assert "K3y" not in text, form
        assert text.startswith("before ") and text.endswith(" after")


def test_short_values_are_not_registered() -> None:
    redact.register("abc")
    assert redact.redact("abc def") == "abc def"


def test_log_records_are_redacted_with_their_arguments(tmp_path: Path) -> None:
    from optisync import logs

    redact.register(SECRET)
    log_file = tmp_path / "run.log"
    logs.setup(0, log_file=log_file)
    try:
        logging.getLogger("optisync.test").warning("refused %r (%s)", SECRET, quote(SECRET))
        try:
            raise ValueError(f"Invalid header value {SECRET.encode()!r}")
        except ValueError:
            logging.getLogger("optisync.test").exception("boom")
    finally:
        logs.setup(0)
    text = log_file.read_text(encoding="utf-8")
    assert "refused" in text and "Invalid header value" in text
    assert "K3y" not in text


class EscapingProxy(FakeOptimove):
    """A transport failure whose text quotes the key the way a proxy or the HTTP stack
    would: escaped, not raw."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        key = request.headers.get("X-API-KEY", "")
        if key:
            raise httpx.ProxyError(f"proxy refused header X-API-KEY={key!r} ({quote(key)})")
        return super().__call__(request)


class Crashing(FakeOptimove):
    """An unexpected exception (not a transport error) carrying the key's repr."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        key = request.headers.get("X-API-KEY", "")
        if key:
            raise RuntimeError(f"Invalid header value {key.encode()!r}")
        return super().__call__(request)


@pytest.mark.parametrize("kind", [EscapingProxy, Crashing])
def test_an_escaped_key_in_an_error_reaches_no_letter_log_or_output(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: type[FakeOptimove]
) -> None:
    from optisync.commands import realtime as commands
    from optisync.realtime.inputs import EventSource

    fake = kind()
    monkeypatch.setenv("OPTISYNC_CONFIG", str(EXAMPLES / "optisync.yaml"))
    monkeypatch.setenv("OPTIMOVE_API_KEY", SECRET)
    monkeypatch.setenv("OPTIMOVE_EVENTS_TOKEN", "token-" + "x" * 20)
    monkeypatch.setenv("OPTIMOVE_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("OPTIMOVE_EVENTS_URL", "http://127.0.0.1:9/reportEvent")
    monkeypatch.setenv("OPTISYNC_DEAD_LETTER__DIR", str(tmp_path / "dl"))
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__RETRY__MAX_ATTEMPTS", "1")
    from optisync import logs

    log_file = tmp_path / "run.log"
    logs.setup(0, log_file=log_file)
    try:
        try:
            summary = commands.push_event(
                None, EventSource(input=str(EXAMPLES / "events.ndjson")), client_factory=fake.client
            )
            shown = json.dumps(summary.as_dict(), default=str)
        except RuntimeError as exc:  # a bug surfaces after its letters are written
            shown = redact.redact(str(exc))
    finally:
        logs.setup(0)
    letters = list((tmp_path / "dl").rglob("*.json"))
    assert letters
    everything = [shown, log_file.read_text(encoding="utf-8")]
    everything += [p.read_text(encoding="utf-8") for p in letters]
    assert any("proxy refused" in t or "Invalid header value" in t for t in everything)
    for text in everything:
        assert "K3y" not in text  # in any form, escaped once or twice


def test_internal_error_text_on_stderr_is_redacted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import optisync.commands.validate as validate

    def boom(*args: object, **kwargs: object) -> None:
        raise ValueError(f"Invalid header value {SECRET.encode()!r}")

    redact.register(SECRET)
    monkeypatch.setattr(validate, "validate", boom)
    result = invoke("validate-config", str(EXAMPLES / "optisync.yaml"), expect=ExitCode.INTERNAL)
    assert "internal error: ValueError: Invalid header value" in result.stderr
    assert "K3y" not in result.stdout + result.stderr
