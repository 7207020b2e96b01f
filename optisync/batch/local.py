"""The export run in a local DuckDB: from a DuckDB database or a folder of extracts.

Per dataset: plan the typed SQL, take the delta against the state of the last successful
export (``delta``), hold back rows holding a card number, then stage the files (or load
the delta into a Snowflake target). All row work is DuckDB SQL under a per-step memory
budget (``memory``); Python only sees card candidates. Files are published, and only then
the state advanced, by ``publish_files`` and the caller (docs/batch.md, "Crash safety").
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb

from optisync import __version__
from optisync.batch.delta import (
    Delta,
    HeldRow,
    KeyCheck,
    changed_rows,
    check_keys,
    compare,
    find_held,
    full_reason,
    held_keys,
    quarantine,
    unmapped_emd,
    without,
)
from optisync.batch.memory import Budget, Step, parts
from optisync.batch.plan import Plan, make_plan
from optisync.batch.result import BatchSummary, DatasetResult
from optisync.batch.source import make_source, quote
from optisync.batch.state import StateStore
from optisync.batch.writer import FileWriter, StagedFile
from optisync.config.models import Config
from optisync.errors import ConfigError, InvalidInputError, StorageError

__all__ = ["Progress", "Target", "export_local", "open_duckdb", "publish_files"]

Progress = Callable[[str, int, int], None]  # (dataset, datasets done, datasets in all)
STAMP = "%Y-%m-%d %H:%M:%S"


class Target(Protocol):
    """Where the delta goes instead of files: Snowflake tables (``batch.snowflake``)."""

    description: str

    def load(self, duck: duckdb.DuckDBPyConnection, select_sql: str, name: str) -> str: ...

    def apply(
        self,
        plan: Plan,
        result: DatasetResult,
        rows: str,
        deletes: str | None,
        state: Sequence[Any],
        *,
        source: str,
        started: datetime,
    ) -> None: ...


log = logging.getLogger(__name__)


def open_duckdb(config: Config, temp_dir: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection in UTC that spills to ``temp_dir`` past ``batch.memory_limit``."""
    con = duckdb.connect(config={"allow_unsigned_extensions": False})
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{config.batch.memory_limit}'")
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"SET temp_directory = '{str(temp_dir).replace(chr(39), chr(39) * 2)}'")
    if config.batch.threads:
        con.execute(f"SET threads = {int(config.batch.threads)}")
    return con


def lock_down(
    con: duckdb.DuckDBPyConnection, folders: Sequence[Path], files: Sequence[Path] = ()
) -> None:
    """Once the source is open: no file outside ``folders`` (and ``files``) can be read or
    written through ``con``, and the settings cannot be changed back.

    A DuckDB source file is the loading programme's, not optisync's: a view in it over
    ``read_text('/etc/optisync/apikey.txt')`` would otherwise put any file this user can
    read into the export. ``memory_limit`` stays changeable: the memory budget sets it
    per step.
    """
    names = {str(r[0]) for r in con.execute("SELECT name FROM duckdb_settings()").fetchall()}
    if "allowed_directories" not in names:  # older DuckDB: no way to keep the output open
        log.warning("this DuckDB cannot limit file access to the export's folders")
        return
    dirs = {str(p) for folder in folders for p in (folder, folder.resolve())}
    listed = ", ".join(_literal(d.rstrip(os.sep) + os.sep) for d in sorted(dirs))
    con.execute(f"SET allowed_directories = [{listed}]")
    if files and "allowed_paths" in names:
        paths = {str(p) for f in files for p in (f, f.resolve())}
        con.execute(f"SET allowed_paths = [{', '.join(_literal(p) for p in sorted(paths))}]")
    con.execute("SET enable_external_access = false")
    if "allowed_configs" in names:
        con.execute("SET allowed_configs = ['memory_limit']")
        con.execute("SET lock_configuration = true")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def publish_files(
    writer: FileWriter,
    staged: list[StagedFile],
    con: duckdb.DuckDBPyConnection,
    totals: dict[tuple[str, Any], int],
    summary: BatchSummary,
    started: datetime,
) -> None:
    """Publish the staged files, then the manifest and ``_SUCCESS``."""
    published = writer.publish(staged, con, totals)
    for f in published:
        summary.datasets[f.dataset].files.append(f)
    summary.manifest = writer.finish(summary.run_entry(started), published)


@dataclass
class Selection:
    """What one dataset exports, as SQL over the local connection, and the step budgets."""

    rows: str
    deletes: str | None
    state: str
    held: list[HeldRow]
    rows_step: Step
    state_step: Step
    keys: KeyCheck | None = None
    deletions: int = 0


@dataclass
class Staged:
    """The run's files and states, staged until every dataset is done."""

    files: list[StagedFile] = field(default_factory=list)
    totals: dict[tuple[str, Any], int] = field(default_factory=dict)
    state: list[tuple[Path, str]] = field(default_factory=list)


class LocalExport:
    """One dataset at a time, to files (``writer``), Snowflake (``target``) or a count."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        budget: Budget,
        config: Config,
        state: StateStore,
        summary: BatchSummary,
        *,
        started: datetime,
        full: bool,
        writer: FileWriter | None,
        target: Target | None,
    ) -> None:
        self.con = con
        self.budget = budget
        self.config = config
        self.state = state
        self.summary = summary
        self.started = started
        self.stamp = started.strftime(STAMP)
        self.full = full
        self.writer = writer
        self.target = target
        self.staged = Staged()

    def dataset(self, plan: Plan) -> DatasetResult:
        result = self._mode(plan)
        unmapped = self.budget.run("work", lambda: unmapped_emd(self.con, plan))
        self.summary.emd_unmapped.update(unmapped)
        chosen = self._select_all(plan) if result.mode == "full" else self._select_delta(plan)
        result.held = len(chosen.held)
        result.deletions = chosen.deletions
        if chosen.keys is not None:
            result.key_problems(chosen.keys, self.summary)
        result.watermark = self._watermark(plan)
        if self.writer is None or self.target is not None:  # dry run, or to Snowflake: count
            sql = f"SELECT count(*) FROM ({chosen.rows})"
            row = self.budget.run(chosen.rows_step, lambda: self.con.execute(sql).fetchone())
            result.rows = int(row[0]) if row else 0
        if self.target is not None:
            self._apply(plan, result, chosen)
        elif self.writer is not None:
            self._stage(plan, result, chosen)
        return result

    # -- the steps of one dataset --------------------------------------------------------

    def _mode(self, plan: Plan) -> DatasetResult:
        meta = self.state.meta(self.con, plan.dataset)
        reason = full_reason(self.full, meta, plan.signature)
        if reason is None and meta is not None and meta.get("duckdb") != duckdb.__version__:
            reason = "DuckDB version changed (fingerprints differ)"
        return DatasetResult(plan.dataset, "full" if reason else "incremental", reason)

    @staticmethod
    def _reading(plan: Plan) -> Step:
        # Reading emd pivots it (an aggregate); other datasets stream from the source.
        return "work" if plan.emd_relation is not None else "stream"

    def _select_all(self, plan: Plan) -> Selection:
        """A full export streams from the source: no delta table, the held rows left out."""
        typed = quote("typed_" + plan.dataset)
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {typed} AS {plan.typed_sql()}")
        reading = self._reading(plan)
        check = self.budget.run("work", lambda: check_keys(self.con, plan))
        held = self.budget.run(reading, lambda: check.held(self.con, typed))
        keep = f"(SELECT * FROM {typed} t WHERE {check.keeps('t')})"
        held += self.budget.run(reading, lambda: find_held(self.con, plan, keep))
        clean = f"SELECT * FROM {typed} t"
        if held:
            clean += f" WHERE {without(plan, 't', held_keys(self.con, plan, held))}"
        keys_fp = ", ".join([*plan.key_cols(), "_fp"])
        out_cols = ", ".join(quote(n) for n in plan.out_names)
        return Selection(
            rows=f"SELECT {out_cols} FROM ({clean})",
            deletes=None,
            state=f"SELECT {keys_fp} FROM ({clean})",
            held=held,
            rows_step=reading,
            state_step=reading,
            keys=check,
        )

    def _compare(self, plan: Plan, changes: str, check: KeyCheck) -> None:
        """Which keys are new, changed or gone, into the table ``changes``.

        A hash join of keys and fingerprints only, which DuckDB spills to disk past its
        budget. Past PART_MIB of keys it runs in key-hash parts, each reading the source
        again for its keys only, so memory stays flat in the data.
        """
        old = self.state.relation(plan.dataset)
        keys_fp = ", ".join([*plan.key_cols(), "_fp"])
        texts = " + ".join(f"coalesce(strlen({k}), 0)" for k in plan.key_cols())
        sql = f"SELECT count(*), coalesce(sum({texts}), 0) FROM {old}"
        row = self.budget.run("stream", lambda: self.con.execute(sql).fetchone())
        n = parts(int(row[0]), int(row[1]), len(plan.key)) if row else 1
        take = ", ".join(f"t.{k}" for k in plan.key_cols())
        for part in range(n):
            t_in = s_in = None
            if n > 1:
                t_in = f"hash({', '.join(plan.key_texts())}) % {n} = {part}"
                s_in = f"hash({', '.join(plan.key_cols())}) % {n} = {part}"
            select = compare(
                plan,
                f"(SELECT {keys_fp} FROM ({plan.typed_sql(t_in)}) t WHERE {check.keeps('t')})",
                f"(SELECT {keys_fp} FROM {old} s WHERE {s_in or 'TRUE'} AND {check.keeps('s')})",
                take,
            )
            sql = (
                f"CREATE OR REPLACE TEMP TABLE {changes} AS {select}"
                if part == 0
                else f"INSERT INTO {changes} {select}"
            )
            self.budget.run("work", functools.partial(self.con.execute, sql))

    def _select_delta(self, plan: Plan) -> Selection:
        """An incremental export: the delta table, its held rows marked."""
        delta = Delta(plan, quote("delta_" + plan.dataset))
        changes = quote("changes_" + plan.dataset)
        check = self.budget.run("work", lambda: check_keys(self.con, plan))
        self._compare(plan, changes, check)
        sql = f"CREATE OR REPLACE TEMP TABLE {delta.table} AS {changed_rows(plan, changes)}"
        self.budget.run("work", lambda: self.con.execute(sql))
        self.con.execute(f"DROP TABLE {changes}")
        held = self.budget.run("stream", lambda: find_held(self.con, plan, delta.present()))
        if held:
            mark = delta.mark_held(held_keys(self.con, plan, held))
            self.budget.run("work", lambda: self.con.execute(mark))
        typed = f"({plan.typed_sql()})"
        held = self.budget.run(self._reading(plan), lambda: check.held(self.con, typed)) + held
        deletions = 0
        if plan.emit_deletes:
            deletions = int((self.con.execute(delta.gone()).fetchone() or (0,))[0])
        return Selection(
            rows=delta.rows(),
            deletes=delta.deletes(self.stamp) if plan.emit_deletes else None,
            state=delta.next_state(self.state.relation(plan.dataset)),
            held=held,
            rows_step="stream",
            state_step="work",  # the old state minus what the delta replaces, plus its rows
            keys=check,
            deletions=deletions,
        )

    def _watermark(self, plan: Plan) -> str:
        """The source's latest LastUpdated, or the run's start when it has none."""
        if plan.updated_at is None:
            return self.stamp
        sql = f"SELECT max({plan.updated_at}) FROM ({plan.base_sql}) b"
        row = self.budget.run(self._reading(plan), lambda: self.con.execute(sql).fetchone())
        latest = row[0] if row else None
        return latest.strftime(STAMP) if isinstance(latest, datetime) else self.stamp

    def _state_meta(self, result: DatasetResult, plan: Plan) -> dict[str, str]:
        return {
            "signature": plan.signature,
            "duckdb": duckdb.__version__,
            "optisync": __version__,
            "run_id": self.summary.run_id,
            "watermark": result.watermark or "",
        }

    def _quarantine(
        self, root: Path, plan: Plan, result: DatasetResult, held: list[HeldRow]
    ) -> None:
        if held:
            path = quarantine(root, self.summary.run_date, self.summary.run_id, plan, held)
            result.quarantine = str(path)

    def _stage_state(self, plan: Plan, result: DatasetResult, chosen: Selection) -> Path:
        meta = self._state_meta(result, plan)
        return self.budget.run(
            chosen.state_step,
            lambda: self.state.stage(
                self.con, plan.dataset, chosen.state, meta, self.summary.run_id
            ),
        )

    def _apply(self, plan: Plan, result: DatasetResult, chosen: Selection) -> None:
        """Upload the delta, apply it in one transaction, then advance the local state."""
        assert self.target is not None
        target, ds = self.target, plan.dataset
        self._quarantine(
            self.config.path(self.config.batch.output.dir).resolve(), plan, result, chosen.held
        )
        rows = self.budget.run(
            chosen.rows_step, lambda: target.load(self.con, chosen.rows, f"{ds}_rows")
        )
        deletes = None
        if chosen.deletes is not None:
            sql = chosen.deletes
            deletes = self.budget.run("stream", lambda: target.load(self.con, sql, f"{ds}_deletes"))
        tmp = self._stage_state(plan, result, chosen)
        source = self.config.batch.source
        target.apply(
            plan, result, rows, deletes, [],
            source=f"optisync {source.kind} {source.path}", started=self.started,
        )  # fmt: skip
        self.state.commit(tmp, ds)

    def _stage(self, plan: Plan, result: DatasetResult, chosen: Selection) -> None:
        """Stage the files and the next state; both are published after every dataset."""
        assert self.writer is not None
        writer, ds, staged = self.writer, plan.dataset, self.staged
        self._quarantine(writer.root.parent.resolve(), plan, result, chosen.held)
        count, files = self.budget.run(
            chosen.rows_step, lambda: writer.stage(self.con, ds, "rows", chosen.rows)
        )
        result.rows = count
        staged.files += files
        staged.totals[(ds, "rows")] = count
        if chosen.deletes is not None:
            sql = chosen.deletes
            count, files = self.budget.run(
                "stream", lambda: writer.stage(self.con, ds, "deletes", sql)
            )
            staged.files += files
            staged.totals[(ds, "deletes")] = count
        staged.state.append((self._stage_state(plan, result, chosen), ds))


def export_local(
    config: Config,
    names: list[str],
    summary: BatchSummary,
    state: StateStore,
    stack: ExitStack,
    *,
    temp_dir: Path,
    out_dir: Path,
    started: datetime,
    full: bool,
    dry_run: bool,
    progress: Progress | None,
    open_target: Callable[[], Target] | None,
) -> None:
    """Export the selected datasets; ``open_target`` when the output is Snowflake tables."""
    con = open_duckdb(config, temp_dir)
    stack.callback(con.close)
    budget = Budget(con, config.batch.memory_limit)
    source = make_source(config)
    source.open(con)
    source_dir = config.path(config.batch.source.path or Path())
    lock_down(
        con,
        [temp_dir, state.dir, out_dir, *([source_dir] if source_dir.is_dir() else [])],
        [source_dir] if source_dir.is_file() else [],
    )
    writer = None
    target = None
    if not dry_run and open_target is not None:
        target = open_target()
        summary.target = target.description
    elif not dry_run:
        writer = FileWriter.open_for(config, out_dir, summary)
    export = LocalExport(
        con,
        budget,
        config,
        state,
        summary,
        started=started,
        full=full,
        writer=writer,
        target=target,
    )
    try:
        plans = [
            make_plan(con, config, source, n, d, started)
            for n, d in config.batch.datasets.items()
            if n in names
        ]
        for i, plan in enumerate(plans):
            if progress is not None:
                progress(plan.dataset, i, len(plans))
            summary.datasets[plan.dataset] = _checked(export, plan, config)
    except duckdb.PermissionException as exc:
        raise ConfigError(
            f"batch.source: the source tries to reach a file outside the source and the"
            f" export's folders, which optisync does not allow: {exc}",
            hint="a view in the source database reads a local file (read_text, read_csv,"
            " ...); load that data into a table of the source instead",
        ) from None
    if progress is not None:
        progress("", len(plans), len(plans))
    if writer is not None:
        staged = export.staged
        publish_files(writer, staged.files, con, staged.totals, summary, started)
        for tmp, ds in staged.state:  # only now: manifest and _SUCCESS are on disk
            state.commit(tmp, ds)


def _checked(export: LocalExport, plan: Plan, config: Config) -> DatasetResult:
    """One dataset, DuckDB's errors about the data turned into the run's errors."""
    try:
        return export.dataset(plan)
    except duckdb.ConversionException as exc:
        raise InvalidInputError(
            f"dataset {plan.dataset}: a value does not fit its column type: {exc}",
            hint="fix the source value or the attribute's type; nothing was exported",
        ) from exc
    except duckdb.OutOfMemoryException as exc:
        raise StorageError(
            f"dataset {plan.dataset}: the export needs more memory than"
            f" batch.memory_limit ({config.batch.memory_limit}) allows",
            hint="raise batch.memory_limit, or lower batch.threads; nothing was"
            " exported and the state did not advance",
        ) from exc
