"""Tables of the schema shared with Optimove, written one transaction per dataset.

Every dataset is a table of ``batch.output.schema`` holding the current rows, with
``OPTISYNC_RUN_ID`` naming the run that last wrote each one; ``<DATASET>_DELETES`` holds the
keys deleted, and ``OPTISYNC_RUNS`` one row of facts per run and dataset. A crash rolls the
whole dataset back; a rerun applies the same delta again, which is harmless because rows
are replaced by key (docs/snowflake.md, "Snowflake target").
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import datetime

import duckdb

from optisync import __version__
from optisync.batch.plan import SNOWFLAKE, Plan
from optisync.batch.result import DatasetResult
from optisync.batch.snowflake.connection import (
    FETCH_ROWS,
    Cursor,
    Statement,
    columns_of,
    connect,
    schema_name,
    transaction,
)
from optisync.batch.snowflake.types import from_duck_type, warehouse_type
from optisync.batch.source import quote
from optisync.config.models import Config

__all__ = ["RUNS_TABLE", "RUN_ID_COLUMN", "SnowflakeTarget", "open_target"]

RUN_ID_COLUMN = "OPTISYNC_RUN_ID"
RUNS_TABLE = "OPTISYNC_RUNS"


class SnowflakeTarget:
    """Tables of the schema shared with Optimove, written one transaction per dataset."""

    def __init__(self, cur: Cursor, config: Config, run_id: str) -> None:
        settings = config.batch.snowflake
        assert settings is not None and config.batch.output.schema_ is not None
        self.cur = cur
        self.run_id = run_id
        self.schema = schema_name(config.batch.output.schema_, settings.database)
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
            spec = ", ".join(f"{quote(str(d[0]))} {warehouse_type(d)}" for d in cols)
            self.cur.execute(f"CREATE OR REPLACE TABLE {table} ({spec}, {RUN_ID_COLUMN} VARCHAR)")
        return names

    def load(self, duck: duckdb.DuckDBPyConnection, select_sql: str, name: str) -> str:
        """Upload the rows of a local DuckDB query into a temporary table; its name."""
        types = duck.execute(f"DESCRIBE {select_sql}").fetchall()
        table = quote(f"optisync_load_{name}_{uuid.uuid4().hex[:8]}")
        spec = ", ".join(f"{quote(str(r[0]))} {from_duck_type(str(r[1]))}" for r in types)
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
        table = self.table(plan.dataset)
        statements = self._upsert(plan, table, rows, full=result.mode == "full")
        result.tables = [table]
        if deletes is not None:
            gone = self.table(plan.dataset, "deletes")
            statements += self._delete(plan, table, gone, deletes)
            result.tables.append(gone)
        statements += list(state)
        statements += self._log(plan, result, source, started)
        transaction(self.cur, statements)

    def _run_literal(self) -> str:
        return SNOWFLAKE.literal(self.run_id)

    @staticmethod
    def _matching(plan: Plan, alias: str, relation: str) -> str:
        """A condition on the table row ``alias``: ``relation`` holds its key (output names)."""
        on = " AND ".join(f"r.{quote(k)} = {alias}.{quote(k)}" for k in plan.key_out)
        return f"EXISTS (SELECT 1 FROM {relation} r WHERE {on})"

    def _upsert(self, plan: Plan, table: str, rows: str, *, full: bool) -> list[Statement]:
        """Replace the rows by key (a full export: the whole table), tagged with the run."""
        cols = ", ".join(quote(n) for n in self._ensure(table, rows))
        where = "" if full else f" t WHERE {self._matching(plan, 't', rows)}"
        return [
            (f"DELETE FROM {table}{where}", None),
            (
                f"INSERT INTO {table} ({cols}, {RUN_ID_COLUMN})"
                f" SELECT {cols}, {self._run_literal()} FROM {rows}",
                None,
            ),
        ]

    def _delete(self, plan: Plan, table: str, gone: str, deletes: str) -> list[Statement]:
        """Remove the deleted keys from the table; record them in the deletions table."""
        cols = ", ".join(quote(n) for n in self._ensure(gone, deletes))
        return [
            (f"DELETE FROM {table} t WHERE {self._matching(plan, 't', deletes)}", None),
            (f"DELETE FROM {gone} t WHERE {self._matching(plan, 't', deletes)}", None),
            (
                f"INSERT INTO {gone} ({cols}, {RUN_ID_COLUMN})"
                f" SELECT {cols}, {self._run_literal()} FROM {deletes}",
                None,
            ),
        ]

    def _log(
        self, plan: Plan, result: DatasetResult, source: str, started: datetime
    ) -> list[Statement]:
        """The run's row in OPTISYNC_RUNS, replacing one a crashed attempt may have left."""
        facts = (
            self.run_id,
            plan.dataset,
            result.mode,
            result.reason,
            result.rows,
            result.deletions,
            result.held,
            ", ".join(result.tables),
            result.watermark,
            source,
            started.strftime("%Y-%m-%d %H:%M:%S"),
            __version__,
        )
        return [
            (
                f"DELETE FROM {self.runs} WHERE RUN_ID = ? AND DATASET = ?",
                (self.run_id, plan.dataset),
            ),
            (
                f"INSERT INTO {self.runs} (RUN_ID, DATASET, MODE, REASON, ROW_COUNT,"
                " DELETE_COUNT, HELD_COUNT, TARGET_TABLES, WATERMARK, SOURCE, STARTED_AT,"
                " FINISHED_AT, OPTISYNC_VERSION) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " CAST(? AS TIMESTAMP_NTZ), CURRENT_TIMESTAMP(), ?",
                facts,
            ),
        ]


def open_target(config: Config, run_id: str, stack: ExitStack) -> SnowflakeTarget:
    """The target on a connection of its own, closed with ``stack``, its tables prepared."""
    remote = connect(config)
    stack.callback(remote.close)
    target = SnowflakeTarget(remote.cursor(), config, run_id)
    target.prepare()
    return target
