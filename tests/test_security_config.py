"""Attacks on the config file and its secrets: each one is refused at load, naming the key
and never the value (docs/security.md)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from optisync.config import load_config, validate_config
from optisync.config.models import OptimoveSettings
from optisync.errors import ConfigError, ExitCode
from tests.support import FakeOptimove, WriteConfig, invoke

SECRET = "REST-KEY-abc123"


def _problems(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    return "\n".join([exc.value.message, *exc.value.problems])


# --- secrets: control characters and whitespace -------------------------------------------


@pytest.mark.parametrize(
    "value",
    [SECRET + "\n", SECRET + "\r\n", " " + SECRET, SECRET + "\t", "REST\x00KEY", "KEY\u2028X"],
    ids=["newline", "crlf", "leading-space", "tab", "nul", "line-separator"],
)
def test_unusable_api_key_is_refused_naming_the_key_only(
    write_config: WriteConfig, value: str
) -> None:
    path = write_config("optimove:\n  api_key: ${K}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={"K": value})
    text = _problems(exc)
    assert "optimove.api_key" in text
    assert "control character" in text or "whitespace" in text
    assert "REST" not in text and "KEY" not in text.replace("api_key", "")


def test_events_token_and_snowflake_password_are_checked_too(write_config: WriteConfig) -> None:
    path = write_config(
        """
        optimove:
          events_token: ${T}
        batch:
          snowflake: {account: a, user: u, database: D, password: "${P}"}
        """
    )
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={"T": "tok\n", "P": "pass word\n"})
    text = _problems(exc)
    assert "optimove.events_token" in text and "batch.snowflake.password" in text
    assert "tok" not in text.replace("token", "") and "pass word" not in text
    # a password may hold inner spaces and non-ASCII letters; only the edges and controls count
    assert load_config(path, environ={"T": "tok", "P": "pâss wörd"}).batch.snowflake


def test_api_key_from_an_env_override_is_checked(write_config: WriteConfig) -> None:
    path = write_config("optimove: {}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={"OPTISYNC_OPTIMOVE__API_KEY": SECRET + "\n"})
    text = _problems(exc)
    assert "env OPTISYNC_OPTIMOVE__API_KEY" in text and SECRET not in text


def test_header_secrets_must_be_printable_ascii(write_config: WriteConfig) -> None:
    path = write_config("optimove:\n  api_key: ${K}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={"K": "clé-secrète"})
    assert "printable ASCII" in _problems(exc) and "clé" not in _problems(exc)


def test_key_file_may_end_in_one_newline(write_config: WriteConfig, tmp_path: Path) -> None:
    key = tmp_path / "key.txt"
    path = write_config(f"optimove:\n  api_key_file: {key}\n")
    for content in (SECRET + "\n", SECRET + "\r\n", SECRET):
        key.write_text(content, newline="")
        assert load_config(path, environ={}).optimove.secret("api_key") == SECRET


@pytest.mark.parametrize(
    "content", [SECRET + "\n\n", "REST\nKEY\n", " " + SECRET + "\n", SECRET + " \n"]
)
def test_key_file_with_more_than_one_final_newline_is_refused(
    write_config: WriteConfig, tmp_path: Path, content: str
) -> None:
    key = tmp_path / "key.txt"
    key.write_text(content, newline="")
    path = write_config(f"optimove:\n  api_key_file: {key}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    text = _problems(exc)
    assert "optimove.api_key_file" in text and "REST" not in text
    report = validate_config(path)
    bad_file = [p for p in report.errors if p.key == "optimove.api_key_file"]
    assert len(bad_file) == 1 and "REST" not in bad_file[0].render()
    # the lazy read a client makes is guarded the same way
    settings = OptimoveSettings(api_key_file=key)
    with pytest.raises(ConfigError, match="optimove.api_key_file") as lazy:
        settings.secret("api_key")
    assert "REST" not in lazy.value.message


def test_missing_key_file_is_reported_only_when_needed(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    path = write_config(f"optimove:\n  api_key_file: {tmp_path / 'absent.txt'}\n")
    load_config(path, environ={})  # export-batch on a host without the key: fine
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={}, need=("api_key",))
    assert ":2: optimove.api_key_file: cannot read" in _problems(exc)


def test_push_event_with_a_newline_in_the_key_exits_3_and_shows_it_nowhere(
    fake: FakeOptimove, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPTIMOVE_API_KEY", SECRET + "\n")
    log = tmp_path / "run.log"
    result = invoke(
        "--log-file", str(log), "push-event", "--input",
        str(Path(__file__).parent.parent / "examples" / "events.ndjson"),
        expect=ExitCode.CONFIG,
    )  # fmt: skip
    assert "optimove.api_key" in result.stderr
    for text in (result.stdout, result.stderr, log.read_text()):
        assert SECRET not in text and "REST-KEY" not in text
    assert fake.requests == []
    dead = tmp_path / "dl"
    letters = [p.read_text() for p in dead.rglob("*") if p.is_file()] if dead.exists() else []
    assert not any("REST-KEY" in letter for letter in letters)


# --- secrets a command needs -----------------------------------------------------------


def test_unset_secret_is_a_warning_for_validate_config(write_config: WriteConfig) -> None:
    path = write_config("optimove:\n  events_token: ${OPTIMOVE_EVENTS_TOKEN}\n")
    report = validate_config(path)
    problems = [p for p in report.problems if p.key == "optimove.events_token"]
    assert [p.severity for p in problems] == ["warning"]
    assert load_config(path, environ={}).unset_secrets == {
        "optimove.events_token": "OPTIMOVE_EVENTS_TOKEN"
    }


def test_unset_secret_is_an_error_for_a_command_that_needs_it(write_config: WriteConfig) -> None:
    path = write_config(
        "optimove:\n  api_key: ${OPTIMOVE_API_KEY}\n  events_token: ${OPTIMOVE_EVENTS_TOKEN}\n"
    )
    env = {"OPTIMOVE_API_KEY": "k"}
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ=env, need_if_configured=("events_token",))
    text = _problems(exc)
    assert ":3: optimove.events_token" in text and "OPTIMOVE_EVENTS_TOKEN is not set" in text
    config = load_config(path, environ=env)
    with pytest.raises(ConfigError, match="OPTIMOVE_EVENTS_TOKEN is not set"):
        config.require_secret("events_token")
    assert config.require_secret("optimove.api_key") == "k"
    # optional and absent: fine; required and absent: an error naming the key
    bare = write_config("optimove: {}\n")
    load_config(bare, environ={}, need_if_configured=("events_token",))
    with pytest.raises(ConfigError) as exc:
        load_config(bare, environ={}, need=("api_key",))
    assert "optimove.api_key: not configured" in _problems(exc)
    with pytest.raises(ValueError, match="not a secret"):
        config.require_secret("optimove.api_url")


# --- YAML aliases ---------------------------------------------------------------------------


def _alias_bomb(levels: int = 9) -> str:
    text = "a: &a [x,x,x,x,x,x,x,x,x]\n"
    prev = "a"
    for name in "bcdefghijk"[:levels]:
        text += f"{name}: &{name} [{','.join(['*' + prev] * 9)}]\n"
        prev = name
    return text


def test_alias_bomb_is_refused_in_under_a_second(write_config: WriteConfig) -> None:
    path = write_config(_alias_bomb())
    start = time.monotonic()
    report = validate_config(path)
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert time.monotonic() - start < 1.0
    aliases = [p for p in report.errors if "alias" in p.message]
    assert aliases and aliases[0].line == 2
    assert "anchors and aliases are not allowed" in aliases[0].message
    assert any(":2:" in p and "alias *a" in p for p in exc.value.problems)


def test_self_referencing_alias_is_a_config_error_not_a_crash(
    write_config: WriteConfig,
) -> None:
    path = write_config("optimove:\n  tenant_id: 1\nloop: &a [*a]\n")
    result = invoke("validate-config", str(path), expect=ExitCode.CONFIG)
    assert f"{path}:3:" in result.stdout + result.stderr
    assert "RecursionError" not in result.stdout + result.stderr
    invoke("--config", str(path), "export-batch", "--dry-run", expect=ExitCode.CONFIG)


def test_alias_in_an_env_override_stays_a_plain_string(write_config: WriteConfig) -> None:
    path = write_config("locale:\n  default_locale: en_US\n")
    loaded = load_config(path, environ={"OPTISYNC_LOCALE__DEFAULT_LOCALE": "&a [*a]"})
    assert loaded.locale.default_locale == "&a [*a]"


# --- plain http -----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["api_url", "events_url"])
def test_plain_http_to_a_remote_host_is_refused(write_config: WriteConfig, key: str) -> None:
    path = write_config(f"optimove:\n  {key}: http://api4.optimove.net/x\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert f":2: optimove.{key}: plain http://" in _problems(exc)
    allowed = write_config(
        f"optimove:\n  allow_insecure_http: true\n  {key}: http://api4.optimove.net/x\n"
    )
    assert load_config(allowed, environ={})


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8765", "http://127.8.9.10", "http://[::1]:9", "http://localhost:1"]
)
def test_plain_http_to_loopback_stays_allowed(write_config: WriteConfig, url: str) -> None:
    path = write_config(f"optimove:\n  api_url: {url}\n")
    assert load_config(path, environ={}).optimove.api_url == url


def test_plain_http_refused_from_an_env_override(write_config: WriteConfig) -> None:
    path = write_config("optimove: {}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={"OPTISYNC_OPTIMOVE__API_URL": "http://10.0.0.5"})
    assert "env OPTISYNC_OPTIMOVE__API_URL: optimove.api_url: plain http://" in _problems(exc)
