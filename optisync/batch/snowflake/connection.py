"""The Snowflake connection, transactions and names.

The connector is an optional dependency: it is imported when a connection is opened, so a
build without it still runs every DuckDB export.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from optisync import __version__
from optisync.config.models import SNOWFLAKE_NAME, Config, SnowflakeSettings
from optisync.errors import ConfigError, UnavailableError

__all__ = [
    "FETCH_ROWS",
    "Cursor",
    "Statement",
    "columns_of",
    "connect",
    "qualify",
    "schema_name",
    "transaction",
]

Cursor = Any  # a snowflake.connector cursor; the connector is an optional dependency
Statement = tuple[str, Sequence[Any] | None]
FETCH_ROWS = 50_000  # rows per round trip when rows cross between DuckDB and Snowflake


def _private_key(settings: SnowflakeSettings, config: Config) -> bytes:
    from cryptography.hazmat.primitives import serialization

    assert settings.private_key_file is not None
    path = config.path(settings.private_key_file)
    passphrase = (
        settings.private_key_passphrase.get_secret_value().encode()
        if settings.private_key_passphrase
        else None
    )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=passphrase)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"batch.snowflake.private_key_file: cannot read the key {path}: {exc}",
            hint="a PEM private key; its passphrase in ${SNOWFLAKE_PRIVATE_KEY_PASSPHRASE}",
        ) from exc
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def connect(config: Config) -> Any:
    """A connector connection in UTC, from ``batch.snowflake``; secrets never in the text."""
    settings = config.batch.snowflake
    if settings is None:
        raise ConfigError("batch.snowflake is not set", hint="add the connection block")
    try:
        import snowflake.connector
    except ImportError as exc:
        raise ConfigError(
            "Snowflake is configured but snowflake-connector-python is not installed",
            hint="pip install 'optisync[snowflake]'",
        ) from exc
    kwargs: dict[str, Any] = {
        "account": settings.account,
        "user": settings.user,
        "database": settings.database,
        "login_timeout": settings.login_timeout,
        "paramstyle": "qmark",
        "application": f"optisync/{__version__}",
        "session_parameters": {"TIMEZONE": "UTC", "QUERY_TAG": "optisync export-batch"},
    }
    for name in ("role", "warehouse", "authenticator"):
        if (value := getattr(settings, name)) is not None:
            kwargs[name] = value
    if settings.schema_:
        kwargs["schema"] = settings.schema_
    if settings.private_key_file is not None:
        kwargs["private_key"] = _private_key(settings, config)
        kwargs.setdefault("authenticator", "SNOWFLAKE_JWT")
    elif settings.password is not None and settings.password.get_secret_value():
        kwargs["password"] = settings.password.get_secret_value()
    elif settings.authenticator is None:
        raise ConfigError(
            "batch.snowflake: no credentials",
            hint="password: ${SNOWFLAKE_PASSWORD}, or private_key_file, or an authenticator",
        )
    try:
        return snowflake.connector.connect(**kwargs)
    except snowflake.connector.errors.Error as exc:
        raise UnavailableError(
            f"cannot connect to Snowflake account {settings.account}: {exc}",
            hint="check batch.snowflake (account, user, role) and the credentials",
        ) from exc


def transaction(cur: Cursor, statements: Sequence[Statement]) -> None:
    """Run ``statements`` in one transaction: all of them or, on any error, none."""
    cur.execute("BEGIN TRANSACTION")
    try:
        for sql, params in statements:
            if params is None:
                cur.execute(sql)
            else:
                cur.execute(sql, params)
        cur.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):
            cur.execute("ROLLBACK")
        raise


def qualify(name: str, database: str, schema: str | None, what: str) -> str:
    """``name`` as DATABASE.SCHEMA.NAME (plain parts stay case-insensitive)."""
    if not SNOWFLAKE_NAME.match(name):
        raise ConfigError(f"{what}: {name!r} is not a Snowflake name")
    dots = _split(name)
    if len(dots) == 3:
        return name
    if len(dots) == 2:
        return f"{database}.{name}"
    if schema is None:
        raise ConfigError(
            f"{what}: {name!r} names no schema",
            hint="set batch.snowflake.schema, or write SCHEMA.TABLE",
        )
    return f"{database}.{schema}.{name}" if "." not in schema else f"{schema}.{name}"


def _split(name: str) -> list[str]:
    parts, current, quoted = [], "", False
    for ch in name:
        if ch == '"':
            quoted = not quoted
        if ch == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def schema_name(schema: str, database: str) -> str:
    """``schema`` as DATABASE.SCHEMA."""
    return schema if len(_split(schema)) == 2 else f"{database}.{schema}"


def columns_of(cur: Cursor, sql: str) -> list[Any]:
    """The result columns of ``sql``, fetching no row."""
    cur.execute(f"SELECT * FROM ({sql}) LIMIT 0")
    return list(cur.description)
