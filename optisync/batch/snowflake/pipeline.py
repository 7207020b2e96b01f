"""The export run in the warehouse, for a Snowflake source.

The plan's typed SQL, the fingerprints and the comparison with the last export all run in
Snowflake, with the state kept there too (``state``), so only the delta can leave the
warehouse. ``incremental: watermark`` replaces fingerprints by the dataset's
``updated_at`` where the source's LastUpdated can be trusted. The delta is a temporary
table in the warehouse, built by the same ``delta`` SQL as the DuckDB pipeline's; it
reaches a Snowflake target by ``INSERT … SELECT`` (no row is fetched to this machine),
or is fetched into a local DuckDB table for the ``FileWriter``, and then the state in
Snowflake advances only after the manifest and ``_SUCCESS`` (docs/snowflake.md).
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from optisync.batch.delta import (
    Delta,
    HeldRow,
    KeyCheck,
    all_rows,
    check_keys,
    compare,
    find_held,
    full_reason,
    held_keys,
    quarantine,
    unmapped_emd,
)
from optisync.batch.local import Progress, open_duckdb, publish_files
from optisync.batch.plan import LAST_UPDATED, SNOWFLAKE, Plan, make_plan
from optisync.batch.result import BatchSummary, DatasetResult
from optisync.batch.snowflake.connection import (
    FETCH_ROWS,
    Cursor,
    Statement,
    connect,
    transaction,
)
from optisync.batch.snowflake.source import SnowflakeSource
from optisync.batch.snowflake.state import WarehouseState
from optisync.batch.snowflake.target import SnowflakeTarget
from optisync.batch.snowflake.types import local_type
from optisync.batch.source import quote
from optisync.batch.writer import FileWriter, Kind, StagedFile
from optisync.config.models import Config

__all__ = ["export_snowflake_source", "fetch_into_duckdb"]

STAMP = "%Y-%m-%d %H:%M:%S"


def fetch_into_duckdb(cur: Cursor, sql: str, duck: duckdb.DuckDBPyConnection, table: str) -> str:
    """Fetch the rows of a Snowflake query (the delta only) into a local DuckDB table."""
    cur.execute(sql)
    desc = list(cur.description)
    spec = ", ".join(f"{quote(str(d[0]))} {local_type(d)}" for d in desc)
    duck.execute(f"CREATE OR REPLACE TEMP TABLE {quote(table)} ({spec})")
    marks = ", ".join("?" for _ in desc)
    while batch := cur.fetchmany(FETCH_ROWS):
        duck.executemany(f"INSERT INTO {quote(table)} VALUES ({marks})", batch)
    return f"SELECT * FROM {quote(table)}"


def _count(cur: Cursor, relation: str) -> int:
    cur.execute(f"SELECT COUNT(*) FROM {relation}")
    row = cur.fetchone()
    return int(row[0]) if row else 0


class WarehouseExport:
    """One dataset at a time, to Snowflake tables (``target``), files (``writer``) or a count."""

    def __init__(
        self,
        cur: Cursor,
        source: SnowflakeSource,
        state: WarehouseState,
        config: Config,
        summary: BatchSummary,
        *,
        started: datetime,
        full: bool,
        dry_run: bool,
        target: SnowflakeTarget | None,
        writer: FileWriter | None,
        duck: duckdb.DuckDBPyConnection | None,
    ) -> None:
        self.cur = cur
        self.source = source
        self.state = state
        self.config = config
        self.summary = summary
        self.started = started
        self.stamp = started.strftime(STAMP)
        self.full = full
        self.dry_run = dry_run
        self.target = target
        self.writer = writer
        self.duck = duck
        self.staged: list[StagedFile] = []
        self.totals: dict[tuple[str, Any], int] = {}
        self.pending: list[list[Statement]] = []  # state DML, run once the files are out

    def dataset(self, plan: Plan) -> None:
        dataset = self.config.batch.datasets[plan.dataset]  # type: ignore[index]
        watermark_mode = dataset.incremental == "watermark"
        signature = plan.signature + ("|incremental=watermark" if watermark_mode else "")
        meta = self.state.meta(plan.dataset)
        reason = full_reason(self.full, meta, signature)
        result = DatasetResult(plan.dataset, "full" if reason else "incremental", reason)
        self.summary.datasets[plan.dataset] = result
        self.summary.emd_unmapped.update(unmapped_emd(self.cur, plan))

        check = check_keys(self.cur, plan)
        result.key_problems(check, self.summary)
        delta = self._delta(plan, result, meta, watermark_mode, check)
        held = self._hold(delta, check)
        result.held = len(held)
        rows = f"({delta.rows()})"
        deletes = None
        if plan.emit_deletes and result.mode == "incremental" and not watermark_mode:
            deletes = f"({delta.deletes(self.stamp)})"
            result.deletions = _count(self.cur, deletes)
        result.rows = _count(self.cur, rows)
        watermark = self._watermark(delta, held, watermark_mode, check)
        result.watermark = watermark[:19]
        if self.dry_run:
            return

        if held:
            root = self.config.path(self.config.batch.output.dir).resolve()
            path = quarantine(root, self.summary.run_date, self.summary.run_id, plan, held)
            result.quarantine = str(path)
        state = {"signature": signature, "watermark": watermark, "run_id": self.summary.run_id}
        advance = self.state.advance(delta, result.mode == "full", watermark_mode, state)
        if self.target is not None:
            self.target.apply(
                plan, result, rows, deletes, advance,
                source=self.source.description, started=self.started,
            )  # fmt: skip
        else:
            self._stage(plan, rows, deletes)
            self.pending.append(advance)

    # -- the steps of one dataset --------------------------------------------------------

    def _delta(
        self,
        plan: Plan,
        result: DatasetResult,
        meta: dict[str, str] | None,
        watermark_mode: bool,
        check: KeyCheck,
    ) -> Delta:
        """The delta as a temporary table in the warehouse, in one pass over the source.

        Unlike the DuckDB pipeline, it carries the rows through the comparison: the
        warehouse holds the join without the local memory budget.
        """
        delta = Delta(plan, quote(f"optisync_delta_{plan.dataset}"))
        keep = check.keeps("t")  # NULL and duplicated keys: neither exported nor compared
        if result.mode == "full":
            body = all_rows(plan, keep if check.rows else None)
        elif watermark_mode:
            mark = plan.dialect.literal((meta or {}).get("watermark", ""))
            after = f"t.{quote(LAST_UPDATED)} > CAST({mark} AS TIMESTAMP_NTZ)"
            body = all_rows(plan, f"{after} AND {keep}")
        else:
            self.state.ensure_fingerprints(plan)
            old = self.state.fingerprints(plan.dataset)
            new = f"({plan.typed_sql()})"
            if check.rows:
                old = f"(SELECT * FROM {old} t WHERE {keep})"
                new = f"(SELECT * FROM {new} t WHERE {keep})"
            body = compare(plan, new, old, "t.*", held_column=True)
        if not watermark_mode and result.mode == "full" and not self.dry_run:
            self.state.ensure_fingerprints(plan)
        self.cur.execute(f"CREATE OR REPLACE TEMPORARY TABLE {delta.table} AS {body}")
        return delta

    def _hold(self, delta: Delta, check: KeyCheck) -> list[HeldRow]:
        held = find_held(self.cur, delta.plan, delta.present())
        if held:
            self.cur.execute(delta.mark_held(held_keys(self.cur, delta.plan, held)))
        return check.held(self.cur, f"({delta.plan.typed_sql()})") + held

    def _watermark(
        self, delta: Delta, held: list[HeldRow], watermark_mode: bool, check: KeyCheck
    ) -> str:
        """The source's latest LastUpdated (microseconds kept for the next comparison).

        In watermark mode it stays below any held row, so that the row is exported once it
        is clean.
        """
        plan = delta.plan
        if plan.updated_at is None:
            return self.stamp
        stamp = self.stamp
        self.cur.execute(f"SELECT MAX({plan.updated_at}) FROM ({plan.base_sql}) b")
        row = self.cur.fetchone()
        if row and isinstance(row[0], datetime):
            stamp = row[0].strftime(STAMP + ".%f")
        if watermark_mode and held:
            held_rows = f"SELECT {quote(LAST_UPDATED)} FROM {delta.table} WHERE _held"
            if check.rows:  # rows of bad keys are not in the delta: read from the source
                bad = check.only(f"({plan.typed_sql()})")
                held_rows += f" UNION ALL SELECT {quote(LAST_UPDATED)} FROM ({bad}) k"
            self.cur.execute(f"SELECT MIN({quote(LAST_UPDATED)}) FROM ({held_rows}) h")
            low = self.cur.fetchone()
            if low and isinstance(low[0], datetime):
                below = low[0] - timedelta(microseconds=1)
                stamp = min(stamp, below.strftime(STAMP + ".%f"))
        return stamp

    def _stage(self, plan: Plan, rows: str, deletes: str | None) -> None:
        """Fetch the delta's rows and deletions and stage them as files."""
        assert self.writer is not None and self.duck is not None
        ds = plan.dataset
        parts: list[tuple[Kind, str]] = [("rows", rows)]
        if deletes is not None:
            parts.append(("deletes", deletes))
        for kind, relation in parts:
            local = fetch_into_duckdb(
                self.cur, f"SELECT * FROM {relation}", self.duck, f"{kind}_{ds}"
            )
            count, files = self.writer.stage(self.duck, ds, kind, local)
            self.staged += files
            self.totals[(ds, kind)] = count


def export_snowflake_source(
    config: Config,
    names: list[str],
    summary: BatchSummary,
    *,
    started: datetime,
    full: bool,
    dry_run: bool,
    progress: Progress | None,
    temp_dir: Path,
) -> None:
    """Export the selected datasets of a Snowflake source to files or Snowflake tables."""
    settings = config.batch.snowflake
    assert settings is not None
    con = connect(config)
    duck: duckdb.DuckDBPyConnection | None = None
    try:
        cur = con.cursor()
        source = SnowflakeSource(cur, settings)
        state = WarehouseState(cur, settings)
        target: SnowflakeTarget | None = None
        writer: FileWriter | None = None
        if not dry_run:
            state.ensure()
            if config.batch.output.kind == "snowflake":
                target = SnowflakeTarget(cur, config, summary.run_id)
                target.prepare()
                summary.target = target.description
            else:
                writer = FileWriter.open_for(config, config.path(config.batch.output.dir), summary)
                duck = open_duckdb(config, temp_dir)  # fetched rows spill past memory_limit
        export = WarehouseExport(
            cur, source, state, config, summary, started=started, full=full, dry_run=dry_run,
            target=target, writer=writer, duck=duck,
        )  # fmt: skip
        plans = [
            make_plan(
                None, config, source, n, d, started, dialect=SNOWFLAKE, describe=source.describe
            )
            for n, d in config.batch.datasets.items()
            if n in names
        ]
        for i, plan in enumerate(plans):
            if progress is not None:
                progress(plan.dataset, i, len(plans))
            export.dataset(plan)
        if progress is not None:
            progress("", len(plans), len(plans))
        if writer is not None:
            assert duck is not None
            publish_files(writer, export.staged, duck, export.totals, summary, started)
            for statements in export.pending:  # only now: manifest and _SUCCESS are on disk
                transaction(cur, statements)
    finally:
        if duck is not None:
            duck.close()
        with contextlib.suppress(Exception):
            con.close()
