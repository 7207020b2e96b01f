"""export-batch with Snowflake as source, target or both (issue 6).

What runs where:

* **Snowflake source** (``batch.source.kind: snowflake``): the plan's typed SQL, the row
  fingerprints and the comparison with the last export all run in Snowflake. The state is
  kept there too (``batch.snowflake.state_schema``: one ``<DATASET>_FINGERPRINTS`` table
  per dataset and the ``OPTISYNC_STATE`` table of signatures and watermarks), so only the
  delta can leave the warehouse. ``incremental: watermark`` replaces fingerprints by the
  dataset's ``updated_at`` where the source's LastUpdated is trustworthy.
* **Snowflake target** (``batch.output.kind: snowflake``): every dataset is a table of
  ``batch.output.schema`` (the schema shared with Optimove) holding the current rows, with
  ``OPTISYNC_RUN_ID`` naming the run that last wrote each one; ``<DATASET>_DELETES`` holds
  the keys deleted. A run applies one transaction per dataset: upsert of the delta (or a
  replacement, for a full export), deletions, the state and one ``OPTISYNC_RUNS`` row of
  manifest facts. A crash rolls the whole dataset back; a rerun applies the same delta, and
  re-applying a delta is harmless (rows are replaced by key).
* Snowflake to Snowflake: the delta is a temporary table in the warehouse and reaches the
  target by ``INSERT … SELECT``; no dataset row is fetched to this machine.
* Snowflake to files: only the delta is fetched, into a local DuckDB table, and written by
  the ``FileWriter``; the state in Snowflake advances after the manifest and ``_SUCCESS``.
* Files (or DuckDB) to Snowflake: the local export computes the delta as before; the
  ``SnowflakeTarget`` uploads it (bound inserts, which the connector stages in bulk) and
  applies it as above; the local state advances after the dataset's commit.

The connector is imported only here, and this module only when Snowflake is configured.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from optisync import __version__
from optisync.batch.plan import LAST_UPDATED, SNOWFLAKE, Plan
from optisync.batch.source import quote
from optisync.config.models import SNOWFLAKE_NAME, Config, SnowflakeSettings
from optisync.errors import ConfigError, UnavailableError

if TYPE_CHECKING:
    from optisync.batch.export import BatchSummary, DatasetResult

__all__ = [
    "RUNS_TABLE",
    "RUN_ID_COLUMN",
    "SnowflakeSource",
    "SnowflakeTarget",
    "WarehouseState",
    "connect",
    "transaction",
]

Cursor = Any  # a snowflake.connector cursor; the connector is an optional dependency
Statement = tuple[str, Sequence[Any] | None]

RUN_ID_COLUMN = "OPTISYNC_RUN_ID"
RUNS_TABLE = "OPTISYNC_RUNS"
STATE_TABLE = "OPTISYNC_STATE"
FETCH_ROWS = 50_000

# cursor.description type codes (snowflake.connector.constants.FIELD_TYPES)
_FIXED, _REAL, _TEXT, _DATE = 0, 1, 2, 3
_TIMESTAMP_TZ_CODES = {4, 6, 7}  # TIMESTAMP (LTZ), TIMESTAMP_LTZ, TIMESTAMP_TZ
_TIMESTAMP_NTZ, _BOOLEAN = 8, 13


# --- connection ---------------------------------------------------------------------------


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


def _schema(schema: str, database: str) -> str:
    return schema if len(_split(schema)) == 2 else f"{database}.{schema}"


def _duck_type(desc: Any) -> str:
    """A Snowflake result column as the DuckDB-style type name the plan reasons with."""
    code, precision, scale = desc[1], desc[4], desc[5]
    if code == _FIXED:
        if not scale:
            return "INTEGER" if precision is not None and precision <= 9 else "BIGINT"
        return f"DECIMAL({precision},{scale})"
    if code == _REAL:
        return "DOUBLE"
    if code == _DATE:
        return "DATE"
    if code in _TIMESTAMP_TZ_CODES:
        return "TIMESTAMP WITH TIME ZONE"
    if code == _TIMESTAMP_NTZ:
        return "TIMESTAMP"
    if code == _BOOLEAN:
        return "BOOLEAN"
    return "VARCHAR"


def _local_type(desc: Any) -> str:
    """The DuckDB column type that holds a fetched Snowflake column exactly."""
    code, precision, scale = desc[1], desc[4], desc[5]
    if code == _FIXED:
        p = min(max(int(precision or 38), 1), 38)
        return "BIGINT" if not scale and p <= 18 else f"DECIMAL({p},{int(scale or 0)})"
    return {
        _REAL: "DOUBLE",
        _DATE: "DATE",
        _TIMESTAMP_NTZ: "TIMESTAMP",
        _BOOLEAN: "BOOLEAN",
    }.get(code, "TIMESTAMPTZ" if code in _TIMESTAMP_TZ_CODES else "VARCHAR")


def _warehouse_type(desc: Any) -> str:
    """The Snowflake column type of a target table, from a result column."""
    code, precision, scale = desc[1], desc[4], desc[5]
    if code == _FIXED:
        return f"NUMBER({int(precision or 38)},{int(scale or 0)})"
    if code in _TIMESTAMP_TZ_CODES:
        return "TIMESTAMP_TZ"
    return {
        _REAL: "FLOAT",
        _DATE: "DATE",
        _TIMESTAMP_NTZ: "TIMESTAMP_NTZ",
        _BOOLEAN: "BOOLEAN",
    }.get(code, "VARCHAR")


_FROM_DUCK = {
    "VARCHAR": "VARCHAR",
    "DATE": "DATE",
    "TIMESTAMP": "TIMESTAMP_NTZ",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMP_TZ",
    "BOOLEAN": "BOOLEAN",
    "DOUBLE": "FLOAT",
    "FLOAT": "FLOAT",
}


def _from_duck_type(t: str) -> str:
    t = t.upper()
    if t.startswith("DECIMAL"):
        return t.replace("DECIMAL", "NUMBER")
    if "INT" in t:
        return "NUMBER(38,0)"
    return _FROM_DUCK.get(t, "VARCHAR")


def columns_of(cur: Cursor, sql: str) -> list[Any]:
    """The result columns of ``sql``, fetching no row."""
    cur.execute(f"SELECT * FROM ({sql}) LIMIT 0")
    return list(cur.description)


# --- source -------------------------------------------------------------------------------


class SnowflakeSource:
    """Tables and views of Snowflake, read in the warehouse.

    A column with an unquoted (upper-case) name is exposed in lower case, as the config
    writes source columns (``member_id`` for MEMBER_ID); mixed-case names stay as they are.
    """

    def __init__(self, cur: Cursor, settings: SnowflakeSettings) -> None:
        self.cur = cur
        self.settings = settings
        self.description = f"snowflake {settings.account} {settings.database}"

    def open(self, con: duckdb.DuckDBPyConnection) -> None:
        """Nothing to attach: the source is read where it is."""

    def describe(self, sql: str) -> dict[str, str]:
        return {str(d[0]): _duck_type(d) for d in columns_of(self.cur, sql)}

    def relation(self, table: str) -> str:
        name = qualify(
            table, self.settings.database, self.settings.schema_, "batch.datasets.*.table"
        )
        try:
            cols = columns_of(self.cur, f"SELECT * FROM {name}")
        except Exception as exc:
            raise ConfigError(
                f"Snowflake table {name} cannot be read: {exc}",
                hint="check the dataset's table and the role's SELECT grant on it",
            ) from exc
        exposed = [
            f"{quote(str(d[0]))} AS {quote(str(d[0]).lower() if str(d[0]).isupper() else d[0])}"
            for d in cols
        ]
        return f"(SELECT {', '.join(exposed)} FROM {name})"


# --- state in Snowflake -------------------------------------------------------------------


class WarehouseState:
    """Fingerprints and watermarks of the last successful export, kept in Snowflake."""

    def __init__(self, cur: Cursor, settings: SnowflakeSettings) -> None:
        self.cur = cur
        self.schema = _schema(settings.state_schema, settings.database)
        self.meta_table = f"{self.schema}.{STATE_TABLE}"

    def fingerprints(self, dataset: str) -> str:
        return f"{self.schema}.{quote(dataset.upper() + '_FINGERPRINTS')}"

    def ensure(self) -> None:
        self.cur.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
        self.cur.execute(
            f"CREATE TABLE IF NOT EXISTS {self.meta_table} (DATASET VARCHAR, SIGNATURE VARCHAR,"
            " WATERMARK VARCHAR, RUN_ID VARCHAR, UPDATED_AT TIMESTAMP_NTZ)"
        )

    def meta(self, dataset: str) -> dict[str, str] | None:
        try:
            self.cur.execute(
                f"SELECT SIGNATURE, WATERMARK, RUN_ID FROM {self.meta_table} WHERE DATASET = ?",
                (dataset,),
            )
            row = self.cur.fetchone()
        except Exception:
            return None  # no state yet (e.g. a dry run before the first export)
        if row is None:
            return None
        return {"signature": row[0] or "", "watermark": row[1] or "", "run_id": row[2] or ""}

    def ensure_fingerprints(self, plan: Plan) -> None:
        """The fingerprint table with this plan's key columns (recreated if they differ).

        Recreating happens only when the key changed, so the signature changed too and the
        dataset exports in full until a run commits; a crash in between loses nothing.
        """
        table = self.fingerprints(plan.dataset)
        wanted = [f"_k{i}" for i in range(len(plan.key))] + ["_FP"]
        try:
            have = [str(d[0]) for d in columns_of(self.cur, f"SELECT * FROM {table}")]
        except Exception:
            have = []
        if have != wanted:
            cols = ", ".join(f"{quote(f'_k{i}')} VARCHAR" for i in range(len(plan.key)))
            self.cur.execute(f"CREATE OR REPLACE TABLE {table} ({cols}, _FP NUMBER(20,0))")

    def advance(
        self, plan: Plan, delta: str, full: bool, watermark_mode: bool, meta: dict[str, str]
    ) -> list[Statement]:
        """DML (for the dataset's transaction) moving the state to this run's rows."""
        ds = plan.dataset
        out: list[Statement] = []
        if not watermark_mode:
            table = self.fingerprints(ds)
            keys = ", ".join(plan.key_cols())
            if full:
                out.append((f"DELETE FROM {table}", None))
            else:
                on = " AND ".join(
                    f"s.{quote(f'_k{i}')} = d.{quote(f'_s{i}')}" for i in range(len(plan.key))
                )
                out.append(
                    (
                        f"DELETE FROM {table} s WHERE EXISTS (SELECT 1 FROM {delta} d"
                        f" WHERE NOT d._held AND {on})",
                        None,
                    )
                )
            out.append(
                (
                    f"INSERT INTO {table} ({keys}, _FP) SELECT {keys}, _fp FROM {delta}"
                    " WHERE NOT _gone AND NOT _held",
                    None,
                )
            )
        out.append((f"DELETE FROM {self.meta_table} WHERE DATASET = ?", (ds,)))
        out.append(
            (
                f"INSERT INTO {self.meta_table} (DATASET, SIGNATURE, WATERMARK, RUN_ID,"
                " UPDATED_AT) SELECT ?, ?, ?, ?, CURRENT_TIMESTAMP()",
                (ds, meta["signature"], meta["watermark"], meta["run_id"]),
            )
        )
        return out


# --- target in Snowflake ------------------------------------------------------------------


class SnowflakeTarget:
    """Tables of the schema shared with Optimove, written one transaction per dataset."""

    def __init__(self, cur: Cursor, config: Config, run_id: str) -> None:
        settings = config.batch.snowflake
        assert settings is not None and config.batch.output.schema_ is not None
        self.cur = cur
        self.run_id = run_id
        self.schema = _schema(config.batch.output.schema_, settings.database)
        self.runs = f"{self.schema}.{RUNS_TABLE}"
        self.description = f"snowflake {settings.account} {self.schema}"

    def table(self, dataset: str, kind: str = "rows") -> str:
        suffix = "_DELETES" if kind == "deletes" else ""
        return f"{self.schema}.{quote(dataset.upper() + suffix)}"

    def prepare(self) -> None:
        self.cur.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
        self.cur.execute(
            f"CREATE TABLE IF NOT EXISTS {self.runs} (RUN_ID VARCHAR, DATASET VARCHAR,"
            " MODE VARCHAR, REASON VARCHAR, ROW_COUNT NUMBER(38,0), DELETE_COUNT NUMBER(38,0),"
            " HELD_COUNT NUMBER(38,0), TARGET_TABLES VARCHAR, WATERMARK VARCHAR,"
            " SOURCE VARCHAR, STARTED_AT TIMESTAMP_NTZ, FINISHED_AT TIMESTAMP_NTZ,"
            " OPTISYNC_VERSION VARCHAR)"
        )

    def _ensure(self, table: str, relation: str) -> list[str]:
        """The table with the relation's columns and the run id; recreated if they differ."""
        cols = columns_of(self.cur, f"SELECT * FROM {relation}")
        names = [str(d[0]) for d in cols]
        try:
            have = [str(d[0]) for d in columns_of(self.cur, f"SELECT * FROM {table}")]
        except Exception:
            have = []
        if have != [*names, RUN_ID_COLUMN]:
            spec = ", ".join(f"{quote(str(d[0]))} {_warehouse_type(d)}" for d in cols)
            self.cur.execute(f"CREATE OR REPLACE TABLE {table} ({spec}, {RUN_ID_COLUMN} VARCHAR)")
        return names

    def load(self, duck: duckdb.DuckDBPyConnection, select_sql: str, name: str) -> str:
        """Upload the rows of a local DuckDB query into a temporary table; its name."""
        types = duck.execute(f"DESCRIBE {select_sql}").fetchall()
        table = quote(f"optisync_load_{name}_{uuid.uuid4().hex[:8]}")
        spec = ", ".join(f"{quote(str(r[0]))} {_from_duck_type(str(r[1]))}" for r in types)
        self.cur.execute(f"CREATE TEMPORARY TABLE {table} ({spec})")
        marks = ", ".join("?" for _ in types)
        cursor = duck.execute(select_sql)
        while batch := cursor.fetchmany(FETCH_ROWS):
            self.cur.executemany(f"INSERT INTO {table} VALUES ({marks})", batch)
        return table

    def apply(
        self,
        plan: Plan,
        result: DatasetResult,
        rows: str,
        deletes: str | None,
        state: Sequence[Statement],
        *,
        source: str,
        started: datetime,
    ) -> None:
        """The dataset's transaction: rows, deletions, state and the run-log row."""
        ds = plan.dataset
        table = self.table(ds)
        names = self._ensure(table, rows)
        cols = ", ".join(quote(n) for n in names)
        keys = plan.key_out
        run = "'" + self.run_id.replace("'", "''") + "'"

        def matching(target: str, relation: str) -> str:
            on = " AND ".join(f"r.{quote(k)} = {target}.{quote(k)}" for k in keys)
            return f"EXISTS (SELECT 1 FROM {relation} r WHERE {on})"

        statements: list[Statement] = []
        tables = [table]
        if result.mode == "full":
            statements.append((f"DELETE FROM {table}", None))
        else:
            statements.append((f"DELETE FROM {table} t WHERE {matching('t', rows)}", None))
        statements.append(
            (
                f"INSERT INTO {table} ({cols}, {RUN_ID_COLUMN}) SELECT {cols}, {run} FROM {rows}",
                None,
            )
        )
        if deletes is not None:
            gone = self.table(ds, "deletes")
            gone_names = self._ensure(gone, deletes)
            gone_cols = ", ".join(quote(n) for n in gone_names)
            tables.append(gone)
            statements += [
                (f"DELETE FROM {table} t WHERE {matching('t', deletes)}", None),
                (f"DELETE FROM {gone} t WHERE {matching('t', deletes)}", None),
                (
                    f"INSERT INTO {gone} ({gone_cols}, {RUN_ID_COLUMN})"
                    f" SELECT {gone_cols}, {run} FROM {deletes}",
                    None,
                ),
            ]
        statements += list(state)
        result.tables = tables
        statements += [
            (f"DELETE FROM {self.runs} WHERE RUN_ID = ? AND DATASET = ?", (self.run_id, ds)),
            (
                f"INSERT INTO {self.runs} (RUN_ID, DATASET, MODE, REASON, ROW_COUNT,"
                " DELETE_COUNT, HELD_COUNT, TARGET_TABLES, WATERMARK, SOURCE, STARTED_AT,"
                " FINISHED_AT, OPTISYNC_VERSION) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " CAST(? AS TIMESTAMP_NTZ), CURRENT_TIMESTAMP(), ?",
                (
                    self.run_id,
                    ds,
                    result.mode,
                    result.reason,
                    result.rows,
                    result.deletions,
                    result.held,
                    ", ".join(tables),
                    result.watermark,
                    source,
                    started.strftime("%Y-%m-%d %H:%M:%S"),
                    __version__,
                ),
            ),
        ]
        transaction(self.cur, statements)


# --- the in-warehouse export (Snowflake source) -------------------------------------------


def _count(cur: Cursor, sql: str) -> int:
    cur.execute(f"SELECT COUNT(*) FROM {sql}")
    row = cur.fetchone()
    return int(row[0]) if row else 0


def fetch_into_duckdb(cur: Cursor, sql: str, duck: duckdb.DuckDBPyConnection, table: str) -> str:
    """Fetch the rows of a Snowflake query (the delta only) into a local DuckDB table."""
    cur.execute(sql)
    desc = list(cur.description)
    spec = ", ".join(f"{quote(str(d[0]))} {_local_type(d)}" for d in desc)
    duck.execute(f"CREATE OR REPLACE TEMP TABLE {quote(table)} ({spec})")
    marks = ", ".join("?" for _ in desc)
    while batch := cur.fetchmany(FETCH_ROWS):
        duck.executemany(f"INSERT INTO {quote(table)} VALUES ({marks})", batch)
    return f"SELECT * FROM {quote(table)}"


def export_snowflake_source(
    config: Config,
    names: list[str],
    summary: BatchSummary,
    *,
    started: datetime,
    full: bool,
    dry_run: bool,
    progress: Any,
    temp_dir: Path,
) -> None:
    """Export the selected datasets of a Snowflake source to files or Snowflake tables."""
    from optisync.batch.export import (
        DatasetResult,
        _connect,
        _find_held,
        _quarantine,
        count_unmapped,
        finish_files,
        full_reason,
    )
    from optisync.batch.plan import make_plan
    from optisync.batch.writer import FileWriter, StagedFile

    settings = config.batch.snowflake
    assert settings is not None
    con = connect(config)
    try:
        cur = con.cursor()
        source = SnowflakeSource(cur, settings)
        state = WarehouseState(cur, settings)
        to_tables = config.batch.output.kind == "snowflake"
        target: SnowflakeTarget | None = None
        writer: FileWriter | None = None
        duck: duckdb.DuckDBPyConnection | None = None
        out_dir = config.path(config.batch.output.dir)
        if not dry_run:
            state.ensure()
            if to_tables:
                target = SnowflakeTarget(cur, config, summary.run_id)
                target.prepare()
                summary.target = target.description
            else:
                writer = FileWriter.open_for(config, out_dir, summary)
                duck = _connect(config, temp_dir)  # fetched rows spill past memory_limit
        plans = [
            make_plan(
                None, config, source, n, d, started, dialect=SNOWFLAKE, describe=source.describe
            )
            for n, d in config.batch.datasets.items()
            if n in names
        ]
        staged: list[StagedFile] = []
        totals: dict[tuple[str, Any], int] = {}
        pending: list[list[Statement]] = []
        for i, plan in enumerate(plans):
            if progress is not None:
                progress(plan.dataset, i, len(plans))
            dataset = config.batch.datasets[plan.dataset]  # type: ignore[index]
            watermark_mode = dataset.incremental == "watermark"
            signature = plan.signature + ("|incremental=watermark" if watermark_mode else "")
            meta = state.meta(plan.dataset)
            reason = full_reason(full, meta, signature)
            result = DatasetResult(plan.dataset, "full" if reason else "incremental", reason)
            summary.datasets[plan.dataset] = result
            count_unmapped(cur, plan, summary)

            # the delta, as a temporary table in the warehouse
            delta = quote(f"optisync_delta_{plan.dataset}")
            typed = plan.typed_sql()
            no_old = ", ".join(f"NULL AS {quote(f'_s{i}')}" for i in range(len(plan.key)))
            if result.mode == "full":
                body = f"SELECT t.*, {no_old}, FALSE AS _gone, FALSE AS _held FROM ({typed}) t"
            elif watermark_mode:
                mark = (meta or {}).get("watermark", "").replace("'", "")
                body = (
                    f"SELECT t.*, {no_old}, FALSE AS _gone, FALSE AS _held FROM ({typed}) t"
                    f" WHERE t.{quote(LAST_UPDATED)} > CAST('{mark}' AS TIMESTAMP_NTZ)"
                )
            else:
                state.ensure_fingerprints(plan)
                old = state.fingerprints(plan.dataset)
                old_keys = ", ".join(
                    f"s.{quote(f'_k{i}')} AS {quote(f'_s{i}')}" for i in range(len(plan.key))
                )
                on = " AND ".join(
                    f"t.{quote(f'_k{i}')} = s.{quote(f'_k{i}')}" for i in range(len(plan.key))
                )
                body = (
                    f"SELECT t.*, {old_keys}, t._fp IS NULL AS _gone, FALSE AS _held"
                    f" FROM ({typed}) t FULL OUTER JOIN {old} s ON {on}"
                    " WHERE t._fp IS DISTINCT FROM s._FP"
                )
            if not watermark_mode and result.mode == "full" and not dry_run:
                state.ensure_fingerprints(plan)
            cur.execute(f"CREATE OR REPLACE TEMPORARY TABLE {delta} AS {body}")

            held = _find_held(cur, plan, f"(SELECT * FROM {delta} WHERE NOT _gone)")
            if held:
                keys_table = quote(f"optisync_held_{plan.dataset}")
                spec = ", ".join(f"{quote(f'_k{i}')} VARCHAR" for i in range(len(plan.key)))
                cur.execute(f"CREATE OR REPLACE TEMPORARY TABLE {keys_table} ({spec})")
                marks = ", ".join("?" for _ in plan.key)
                cur.executemany(f"INSERT INTO {keys_table} VALUES ({marks})", [k for k, _ in held])
                on = " AND ".join(
                    f"h.{quote(f'_k{i}')} = d.{quote(f'_k{i}')}" for i in range(len(plan.key))
                )
                cur.execute(
                    f"UPDATE {delta} d SET _held = TRUE WHERE EXISTS (SELECT 1 FROM {keys_table} h"
                    f" WHERE {on})"
                )
            result.held = len(held)

            out_cols = ", ".join(quote(n) for n in plan.out_names)
            rows_rel = f"(SELECT {out_cols} FROM {delta} WHERE NOT _gone AND NOT _held)"
            deletes_rel = None
            if plan.emit_deletes and result.mode == "incremental" and not watermark_mode:
                key_out = ", ".join(
                    f"{quote(f'_s{i}')} AS {quote(name)}" for i, name in enumerate(plan.key_out)
                )
                stamp = started.strftime("%Y-%m-%d %H:%M:%S")
                deletes_rel = (
                    f"(SELECT {key_out}, TIMESTAMP '{stamp}' AS {quote(LAST_UPDATED)}"
                    f" FROM {delta} WHERE _gone)"
                )
                result.deletions = _count(cur, deletes_rel)
            result.rows = _count(cur, rows_rel)

            # the watermark: the source's latest LastUpdated (watermark mode: the exported
            # rows', kept below any held row so that it is exported once it is clean)
            stamp_text = started.strftime("%Y-%m-%d %H:%M:%S")
            if plan.updated_at is not None:
                cur.execute(f"SELECT MAX({plan.updated_at}) FROM ({plan.base_sql}) b")
                row = cur.fetchone()
                if row and isinstance(row[0], datetime):
                    stamp_text = row[0].strftime("%Y-%m-%d %H:%M:%S.%f")
                if watermark_mode and held:
                    cur.execute(f"SELECT MIN({quote(LAST_UPDATED)}) FROM {delta} WHERE _held")
                    low = cur.fetchone()
                    if low and isinstance(low[0], datetime):
                        below = low[0] - timedelta(microseconds=1)
                        stamp_text = min(stamp_text, below.strftime("%Y-%m-%d %H:%M:%S.%f"))
            result.watermark = stamp_text[:19]
            if dry_run:
                continue

            if held:
                result.quarantine = str(
                    _quarantine(out_dir.resolve(), summary.run_date, summary.run_id, plan, held)
                )
            advance = state.advance(
                plan,
                delta,
                result.mode == "full",
                watermark_mode,
                {"signature": signature, "watermark": stamp_text, "run_id": summary.run_id},
            )
            if target is not None:
                target.apply(
                    plan,
                    result,
                    rows_rel,
                    deletes_rel,
                    advance,
                    source=source.description,
                    started=started,
                )
                continue
            assert writer is not None and duck is not None
            local = fetch_into_duckdb(
                cur, f"SELECT * FROM {rows_rel}", duck, f"rows_{plan.dataset}"
            )
            count, files = writer.stage(duck, plan.dataset, "rows", local)
            staged += files
            totals[(plan.dataset, "rows")] = count
            if deletes_rel is not None:
                local = fetch_into_duckdb(
                    cur, f"SELECT * FROM {deletes_rel}", duck, f"deletes_{plan.dataset}"
                )
                count, files = writer.stage(duck, plan.dataset, "deletes", local)
                staged += files
                totals[(plan.dataset, "deletes")] = count
            pending.append(list(advance))
        if progress is not None:
            progress("", len(plans), len(plans))
        if writer is not None:
            assert duck is not None
            finish_files(writer, staged, duck, totals, summary, started)
            for statements in pending:  # only now: manifest and _SUCCESS are on disk
                transaction(cur, statements)
    finally:
        if duck is not None:
            duck.close()
        with contextlib.suppress(Exception):
            con.close()
