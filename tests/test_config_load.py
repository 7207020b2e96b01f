"""Loading: ${ENV} interpolation, OPTISYNC_ overrides, precedence, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from optisync.config import load_config
from optisync.config.models import optimove_type
from optisync.errors import ConfigError
from tests.support import WriteConfig


def test_env_interpolation_with_default(write_config: WriteConfig) -> None:
    path = write_config("optimove:\n  api_url: ${API:-http://127.0.0.1:9}\n  api_key: ${KEY}\n")
    config = load_config(path, environ={"KEY": "k-123"})
    assert config.optimove.api_url == "http://127.0.0.1:9"
    assert config.optimove.secret("api_key") == "k-123"
    config = load_config(path, environ={"KEY": "k", "API": "https://api5.optimove.net/"})
    assert config.optimove.api_url == "https://api5.optimove.net"


def test_override_beats_file_and_parses_scalars(write_config: WriteConfig) -> None:
    path = write_config("optimove:\n  api_url: https://file\n  concurrency: 2\n")
    config = load_config(
        path,
        environ={
            "OPTISYNC_OPTIMOVE__API_URL": "https://env",
            "OPTISYNC_OPTIMOVE__CONCURRENCY": "8",
            "OPTISYNC_OPTIMOVE__RETRY__MAX_ATTEMPTS": "2",
            "OPTISYNC_DEAD_LETTER__DIR": "/tmp/dl",
            "OPTISYNC_CONFIG": "ignored: not a section override",
        },
    )
    assert config.optimove.api_url == "https://env"
    assert config.optimove.concurrency == 8
    assert config.optimove.retry.max_attempts == 2
    assert config.dead_letter.dir == Path("/tmp/dl")


def test_secret_from_env_override_stays_a_string(write_config: WriteConfig) -> None:
    path = write_config("optimove: {}\n")
    config = load_config(path, environ={"OPTISYNC_OPTIMOVE__API_KEY": "0012"})
    assert config.optimove.secret("api_key") == "0012"  # not parsed as the number 12


def test_secret_from_file(write_config: WriteConfig, tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text("from-file\n")
    path = write_config(f"optimove:\n  api_key_file: {tmp_path / 'key.txt'}\n")
    assert load_config(path, environ={}).optimove.secret("api_key") == "from-file"


def test_secrets_never_in_repr_or_dump(write_config: WriteConfig) -> None:
    path = write_config("optimove:\n  api_key: ${K}\n  events_token: ${T}\n")
    config = load_config(path, environ={"K": "SECRET-KEY-1", "T": "SECRET-TOKEN-2"})
    text = repr(config) + str(config.model_dump()) + config.model_dump_json()
    assert "SECRET-KEY-1" not in text
    assert "SECRET-TOKEN-2" not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "optimove:\n  concurency: 2\nlocale: {default_locale: 5}\n",
            [
                (
                    2,
                    "optimove.concurency: unknown key 'concurency'\n"
                    "  hint: did you mean 'concurrency'?",
                ),
                (3, "locale.default_locale: Input should be a valid string"),
            ],
            id="invalid_config_raises_with_every_problem",
        ),
        pytest.param(
            "locale: {}\nlocale: {}\n",
            [(2, "locale: duplicate key (first at line 1); YAML keeps only one")],
            id="duplicate_yaml_key_is_reported",
        ),
    ],
)
def test_load_refuses_naming_every_problem(
    write_config: WriteConfig, text: str, expected: list[tuple[int, str]]
) -> None:
    path = write_config(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == [f"{path}:{line}: {problem}" for line, problem in expected]


def test_relative_paths_resolve_against_the_config_folder(write_config: WriteConfig) -> None:
    path = write_config("dead_letter: {dir: letters}\n")
    config = load_config(path, environ={})
    assert config.path(config.dead_letter.dir) == path.parent / "letters"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("money", "DECIMAL(19,4)"),
        ("decimal(19, 4)", "DECIMAL(19,4)"),
        ("int", "INT"),
        ("BIGINT", "BIGINT"),
        ("date", "DATE"),
        ("nvarchar(40)", "NVARCHAR(40)"),
        ("VARCHAR( 8 )", "VARCHAR(8)"),
        ("string", "NVARCHAR(255)"),
    ],
)
def test_attribute_types_and_aliases(given: str, expected: str) -> None:
    assert optimove_type(given) == expected


@pytest.mark.parametrize("bad", ["FLOAT", "VARCHAR(0)", "VARCHAR(5000)", "DECIMAL(10,2)"])
def test_attribute_types_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="attribute type|size must be"):
        optimove_type(bad)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("event", "unknown target 'event'"),
        ("email", "unknown target 'email'"),
        ("'email:nope'", "target 'email:nope' names no template in templates"),
    ],
)
def test_a_wrong_routing_target_refuses_the_config_at_load(
    write_config: WriteConfig, target: str, message: str
) -> None:
    # It would fail every message it routes: one config error (exit 3) naming its line.
    path = write_config(
        "events:\n  MEMBER_TIER: {name: member_tier}\n"
        f"routing:\n  rules:\n    - {{types: MEMBER_TIER, to: [{target}]}}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert [p.partition("\n")[0] for p in err.value.problems] == [
        f"{path}:5: routing.rules[0].to[0]: {message}"
    ]


RULES = (
    "events:\n  MEMBER_TIER: {name: member_tier}\n  PURCHASE: {name: purchase}\n"
    "routing:\n  rules:\n    - {types: MEMBER_TIER, to: [events]}\n"
    "    - {types: PURCHASE, to: [events]}\n"
    "optimove: {events_auth: none}\n"
)


def test_overrides_reach_keys_in_the_files_case_and_list_entries(
    write_config: WriteConfig,
) -> None:
    config = load_config(
        write_config(RULES),
        environ={
            "OPTISYNC_EVENTS__MEMBER_TIER__NAME": "tier_changed",
            "OPTISYNC_ROUTING__RULES__1__TO": "[attributes]",
        },
    )
    assert config.events["MEMBER_TIER"].name == "tier_changed"  # type: ignore[index]
    assert [r.to for r in config.routing.rules] == [["events"], ["attributes"]]


def test_override_of_a_missing_list_entry_is_reported(write_config: WriteConfig) -> None:
    path = write_config(RULES)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={"OPTISYNC_ROUTING__RULES__5__TO": "[attributes]"})
    assert err.value.problems == [
        f"{path}:5: routing.rules: OPTISYNC_ROUTING__RULES__5__TO: this list has no entry '5'"
        "\n  hint: an index from 0 to 1"
    ]
