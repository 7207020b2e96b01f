"""The core of ``optisync export-batch``: one run over the configured datasets.

Per dataset: plan the typed SQL, compare each row's fingerprint with the state of the last
successful export (or export everything on the first run and with ``--full``), hold back
rows holding a card number (quarantined masked; the run exits 4), stage the files. Then,
for the run: publish every file by rename, write the manifest and ``_SUCCESS``, and only
then advance the state. All row work is DuckDB SQL; Python only sees card candidates.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from optisync import __version__
from optisync.batch.memory import Budget, Step, parts
from optisync.batch.plan import (
    DATASETS,
    LAST_UPDATED,
    Plan,
    check_attribute_limit,
    make_plan,
)
from optisync.batch.source import make_source, quote
from optisync.batch.state import StateStore
from optisync.batch.writer import FileWriter, PublishedFile, StagedFile, write_file
from optisync.cards import mask_text
from optisync.config import find_config, load_config
from optisync.config.models import Config
from optisync.errors import (
    ConfigError,
    DeadlineMissed,
    ExitCode,
    InvalidInputError,
    StorageError,
    UsageError,
)
from optisync.lock import RunLock

if TYPE_CHECKING:
    from optisync.batch.snowflake import SnowflakeTarget

__all__ = ["BatchSummary", "DatasetResult", "export_batch", "raise_for_batch"]

Progress = Callable[[str, int, int], None]  # (dataset, datasets done, datasets in all)
LAST_RUN = "last-run.json"


@dataclass
class DatasetResult:
    name: str
    mode: str  # full | incremental
    reason: str | None = None  # why full
    rows: int = 0
    deletions: int = 0
    held: int = 0
    files: list[PublishedFile] = field(default_factory=list)
    quarantine: str | None = None
    watermark: str | None = None
    tables: list[str] = field(default_factory=list)  # Snowflake target: tables written

    def as_dict(self, root: Path | None) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "rows": self.rows,
            "deletions": self.deletions,
            "held": self.held,
            "files": [f.as_dict(root) for f in self.files] if root else [],
            "quarantine": self.quarantine,
            "watermark": self.watermark,
            "tables": self.tables,
        }


@dataclass
class BatchSummary:
    """What one export-batch run did, rendered as a table or as one JSON object."""

    run_id: str
    run_date: str
    dry_run: bool = False
    command: str = "export-batch"
    output: Path | None = None
    manifest: Path | None = None
    target: str | None = None  # Snowflake target: account and schema
    datasets: dict[str, DatasetResult] = field(default_factory=dict)
    emd_unmapped: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(d.rows for d in self.datasets.values())

    @property
    def held(self) -> int:
        return sum(d.held for d in self.datasets.values())

    def exit_code(self) -> ExitCode:
        return ExitCode.INVALID_INPUT if self.held else ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "run_id": self.run_id,
            "run_date": self.run_date,
            "dry_run": self.dry_run,
            "exit_code": int(self.exit_code()),
            "rows": self.rows,
            "deletions": sum(d.deletions for d in self.datasets.values()),
            "held": self.held,
            "seconds": round(self.seconds, 3),
            "output": str(self.output) if self.output else None,
            "manifest": str(self.manifest) if self.manifest else None,
            "target": self.target,
            "datasets": {n: d.as_dict(self.output) for n, d in self.datasets.items()},
            "emd_unmapped": dict(self.emd_unmapped),
            "warnings": self.warnings,
        }


def raise_for_batch(summary: BatchSummary) -> None:
    """Exit 4 when rows were held back for card numbers (the CLI renders the summary first)."""
    if summary.exit_code() is ExitCode.INVALID_INPUT:
        where = (
            ", ".join(d.quarantine for d in summary.datasets.values() if d.quarantine)
            or "(dry run: nothing written)"
        )
        raise InvalidInputError(
            f"{summary.held} row(s) held back: a value looks like a card number;"
            f" masked copies in {where}",
            hint="remove card numbers at the source; the rows are exported once clean",
        )


# --- helpers ------------------------------------------------------------------------------


def _selected(config: Config, names: list[str] | None) -> list[str]:
    configured = config.batch.datasets
    if names:
        unknown = [n for n in names if n not in DATASETS]
        if unknown:
            raise UsageError(
                f"--dataset {unknown[0]}: not a dataset", hint=f"one of: {', '.join(DATASETS)}"
            )
        missing = [n for n in names if n not in configured]
        if missing:
            raise UsageError(
                f"--dataset {missing[0]}: not configured under batch.datasets",
                hint=f"configured: {', '.join(configured) or 'none'}",
            )
        return [n for n in DATASETS if n in names]
    enabled: set[str] = {n for n, d in configured.items() if d.enabled}
    chosen = [n for n in DATASETS if n in enabled]
    if not chosen:
        raise ConfigError(
            "batch.datasets: no dataset is enabled",
            hint="configure at least one of: " + ", ".join(DATASETS),
        )
    return chosen


def _deadline(config: Config, started: datetime) -> datetime | None:
    text = config.batch.deadline_utc
    if not text:
        return None
    hour, minute = (int(p) for p in text.split(":"))
    return started.replace(hour=hour, minute=minute, second=0, microsecond=0)


def _last_duration(state_dir: Path) -> float:
    try:
        data = json.loads((state_dir / LAST_RUN).read_text(encoding="utf-8"))
        return float(data.get("seconds", 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def _connect(config: Config, temp_dir: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"allow_unsigned_extensions": False})
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{config.batch.memory_limit}'")
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"SET temp_directory = '{str(temp_dir).replace(chr(39), chr(39) * 2)}'")
    if config.batch.threads:
        con.execute(f"SET threads = {int(config.batch.threads)}")
    return con


def _join_on(plan: Plan, left: str, right: str, right_prefix: str = "_k", op: str = "=") -> str:
    return " AND ".join(
        f"{left}.{quote(f'_k{i}')} {op} {right}.{quote(f'{right_prefix}{i}')}"
        for i in range(len(plan.key))
    )


def full_reason(full: bool, meta: dict[str, str] | None, signature: str) -> str | None:
    """Why a dataset is exported in full this run (None: incremental)."""
    if full:
        return "--full"
    if meta is None:
        return "first run"
    if meta.get("signature") != signature:
        return "exported columns changed"
    return None


def count_unmapped(con: Any, plan: Plan, summary: BatchSummary) -> None:
    """EMD keys the config maps to no attribute, counted by name (M9).

    ``con`` is a DuckDB connection or a Snowflake cursor (the SQL is the same in both).
    """
    if plan.emd_relation is None:
        return
    mapped = ", ".join("'" + k.replace("'", "''") + "'" for k in plan.emd_mapped) or "NULL"
    name_col = quote(plan.emd_name_column)
    rows = con.execute(
        f"SELECT CAST({name_col} AS VARCHAR), COUNT(*) FROM {plan.emd_relation}"
        f" WHERE {name_col} IS NOT NULL AND {name_col} NOT IN ({mapped}) GROUP BY 1"
    ).fetchall()
    for key, n in rows:
        summary.emd_unmapped[str(key)] += int(n)


def _find_held(con: Any, plan: Plan, from_sql: str) -> list[tuple[list[Any], list[Any]]]:
    """Rows with a card-like value: a regex prefilter in SQL, the exact check on candidates.

    ``con`` is a DuckDB connection or a Snowflake cursor (SQL in ``plan.dialect``).
    """
    guards = [c for c in plan.columns if c.guard]
    if not guards:
        return []
    # length() is cheap and rules out most values before the regex runs.
    cond = " OR ".join(
        plan.dialect.card_candidate(f"CAST({quote(c.name)} AS VARCHAR)") for c in guards
    )
    keys = ", ".join(plan.key_cols())
    values = ", ".join(f"CAST({quote(n)} AS VARCHAR)" for n in plan.out_names)
    cursor = con.execute(f"SELECT {keys}, {values} FROM {from_sql} WHERE {cond}")
    nk = len(plan.key)
    held: list[tuple[list[Any], list[Any]]] = []
    while batch := cursor.fetchmany(10_000):
        for row in batch:
            texts = list(row[nk:])
            masked = [mask_text(v) if isinstance(v, str) else v for v in texts]
            if masked != texts:
                held.append((list(row[:nk]), masked))
    return held


def _quarantine(
    root: Path, run_date: str, run_id: str, plan: Plan, held: list[tuple[list[Any], list[Any]]]
) -> Path:
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(plan.out_names)
    for _, masked in held:
        out.writerow(["" if v is None else v for v in masked])
    path = root / "_quarantine" / run_date / f"{plan.dataset}-{run_id}.csv.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, gzip.compress(buffer.getvalue().encode("utf-8"), mtime=0))
    return path


def _register_held(
    con: duckdb.DuckDBPyConnection, plan: Plan, held: list[tuple[list[Any], list[Any]]]
) -> str:
    table = quote(f"held_{plan.dataset}")
    cols = ", ".join(f"{quote(f'_k{i}')} VARCHAR" for i in range(len(plan.key)))
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} ({cols})")
    if held:
        marks = ", ".join("?" for _ in plan.key)
        con.executemany(f"INSERT INTO {table} VALUES ({marks})", [k for k, _ in held])
    return table


@dataclass
class _Staged:
    files: list[StagedFile] = field(default_factory=list)
    totals: dict[tuple[str, Any], int] = field(default_factory=dict)
    state: list[tuple[Path, str]] = field(default_factory=list)


# --- one dataset --------------------------------------------------------------------------


def _export_dataset(
    con: duckdb.DuckDBPyConnection,
    plan: Plan,
    *,
    budget: Budget,
    config: Config,
    state: StateStore,
    writer: FileWriter | None,
    staged: _Staged,
    summary: BatchSummary,
    full: bool,
    started: datetime,
    target: SnowflakeTarget | None = None,
) -> DatasetResult:
    ds = plan.dataset
    meta = state.meta(con, ds)
    reason = full_reason(full, meta, plan.signature)
    if reason is None and meta is not None and meta.get("duckdb") != duckdb.__version__:
        reason = "DuckDB version changed (fingerprints differ)"
    result = DatasetResult(ds, "full" if reason else "incremental", reason)
    out_cols = ", ".join(quote(n) for n in plan.out_names)
    keys_fp = ", ".join([*plan.key_cols(), "_fp"])
    budget.run("work", lambda: count_unmapped(con, plan, summary))

    run_stamp = started.strftime("%Y-%m-%d %H:%M:%S")
    # Reading emd pivots it (an aggregate); other datasets stream from the source.
    reading: Step = "work" if plan.emd_relation is not None else "stream"
    if result.mode == "full":
        typed = quote("typed_" + ds)
        con.execute(f"CREATE OR REPLACE TEMP VIEW {typed} AS {plan.typed_sql()}")
        held = budget.run(reading, lambda: _find_held(con, plan, typed))
        clean = f"SELECT * FROM {typed} t"
        if held:
            table = _register_held(con, plan, held)
            clean += f" WHERE NOT EXISTS (SELECT 1 FROM {table} h WHERE {_join_on(plan, 't', 'h')})"
        rows_sql = f"SELECT {out_cols} FROM ({clean})"
        state_sql = f"SELECT {keys_fp} FROM ({clean})"
        deletes_sql = None
        rows_step = state_step = reading
    else:
        old = state.relation(ds)
        delta = quote("delta_" + ds)
        changes = quote("changes_" + ds)
        nk = len(plan.key)
        t_keys = ", ".join(f"t.{quote(f'_k{i}')}" for i in range(nk))
        old_keys = ", ".join(f"s.{quote(f'_k{i}')} AS {quote(f'_s{i}')}" for i in range(nk))
        c_old = ", ".join(f"c.{quote(f'_s{i}')}" for i in range(nk))
        # Which keys are new, changed or gone: a hash join of keys and fingerprints only,
        # which DuckDB spills to disk past its budget. Past PART_MIB of keys it runs in
        # key-hash parts, each reading the source again for its keys only, so memory
        # stays flat in the data.
        texts = " + ".join(f"coalesce(strlen({k}), 0)" for k in plan.key_cols())
        sql = f"SELECT count(*), coalesce(sum({texts}), 0) FROM {old}"
        row = budget.run("stream", lambda: con.execute(sql).fetchone())
        n = parts(int(row[0]), int(row[1]), nk) if row else 1
        for part in range(n):
            t_in = s_in = None
            if n > 1:
                t_in = f"hash({', '.join(plan.key_texts())}) % {n} = {part}"
                s_in = f" WHERE hash({', '.join(plan.key_cols())}) % {n} = {part}"
            select = (
                f"SELECT {t_keys}, {old_keys}, t._fp IS NULL AS _gone"
                f" FROM (SELECT {keys_fp} FROM ({plan.typed_sql(t_in)})) t"
                f" FULL OUTER JOIN (SELECT {keys_fp} FROM {old}{s_in or ''}) s"
                f" ON {_join_on(plan, 't', 's')} WHERE t._fp IS DISTINCT FROM s._fp"
            )
            sql = (
                f"CREATE OR REPLACE TEMP TABLE {changes} AS {select}"
                if part == 0
                else f"INSERT INTO {changes} {select}"
            )
            budget.run("work", functools.partial(con.execute, sql))
        # Then those rows: the source again, kept to the changed keys before typing. A row
        # gone from the source since the comparison stays out (its old state stays too).
        wanted = " AND ".join(
            f"c.{quote(f'_k{i}')} IS NOT DISTINCT FROM {k}" for i, k in enumerate(plan.key_texts())
        )
        changed = plan.typed_sql(
            f"EXISTS (SELECT 1 FROM {changes} c WHERE NOT c._gone AND {wanted})"
        )
        budget.run(
            "work",
            lambda: con.execute(
                f"CREATE OR REPLACE TEMP TABLE {delta} AS SELECT t.*, {c_old}, c._gone,"
                f" false AS _held FROM {changes} c LEFT JOIN ({changed}) t ON NOT c._gone AND"
                f" {_join_on(plan, 't', 'c', op='IS NOT DISTINCT FROM')}"
                f" WHERE c._gone OR t._fp IS NOT NULL"
            ),
        )
        con.execute(f"DROP TABLE {changes}")
        held = budget.run(
            "stream", lambda: _find_held(con, plan, f"(SELECT * FROM {delta} WHERE NOT _gone)")
        )
        if held:
            table = _register_held(con, plan, held)
            budget.run(
                "work",
                lambda: con.execute(
                    f"UPDATE {delta} d SET _held = true WHERE EXISTS (SELECT 1 FROM {table} h"
                    f" WHERE {_join_on(plan, 'd', 'h')})"
                ),
            )
        rows_sql = f"SELECT {out_cols} FROM {delta} WHERE NOT _gone AND NOT _held"
        key_out = ", ".join(
            f"{quote(f'_s{i}')} AS {quote(name)}" for i, name in enumerate(plan.key_out)
        )
        deletes_sql = (
            f"SELECT {key_out}, TIMESTAMP '{run_stamp}' AS {quote(LAST_UPDATED)}"
            f" FROM {delta} WHERE _gone"
        )
        replaced = _join_on(plan, "s", "d", "_s")
        state_sql = (
            f"SELECT {keys_fp} FROM {old} s WHERE NOT EXISTS (SELECT 1 FROM {delta} d"
            f" WHERE NOT d._held AND {replaced}) UNION ALL"
            f" SELECT {keys_fp} FROM {delta} WHERE NOT _gone AND NOT _held"
        )
        rows_step, state_step = "stream", "work"  # the state: old minus replaced, plus new
        result.deletions = int(
            (con.execute(f"SELECT count(*) FROM {delta} WHERE _gone").fetchone() or (0,))[0]
        )
        if not plan.emit_deletes:
            result.deletions = 0
            deletes_sql = None
    result.held = len(held)

    source_max = None
    if plan.updated_at is not None:
        sql = f"SELECT max({plan.updated_at}) FROM ({plan.base_sql}) b"
        row = budget.run(reading, lambda: con.execute(sql).fetchone())
        source_max = row[0] if row else None
    result.watermark = (
        source_max.strftime("%Y-%m-%d %H:%M:%S") if isinstance(source_max, datetime) else run_stamp
    )

    if writer is None or target is not None:  # dry run, or to Snowflake: count
        row = budget.run(
            rows_step, lambda: con.execute(f"SELECT count(*) FROM ({rows_sql})").fetchone()
        )
        result.rows = int(row[0]) if row else 0
    if writer is None and target is None:
        return result
    meta_out = {
        "signature": plan.signature,
        "duckdb": duckdb.__version__,
        "optisync": __version__,
        "run_id": summary.run_id,
        "watermark": result.watermark or "",
    }
    if target is not None:  # upload the delta; one transaction; then the local state
        if held:
            root = config.path(config.batch.output.dir).resolve()
            result.quarantine = str(_quarantine(root, summary.run_date, summary.run_id, plan, held))
        rows_table = budget.run(rows_step, lambda: target.load(con, rows_sql, f"{ds}_rows"))
        deletes_table = None
        if deletes_sql is not None:
            sql = deletes_sql
            deletes_table = budget.run("stream", lambda: target.load(con, sql, f"{ds}_deletes"))
        tmp = budget.run(
            state_step, lambda: state.stage(con, ds, state_sql, meta_out, summary.run_id)
        )
        target.apply(
            plan,
            result,
            rows_table,
            deletes_table,
            [],
            source=f"optisync {config.batch.source.kind} {config.batch.source.path}",
            started=started,
        )
        state.commit(tmp, ds)
        return result
    assert writer is not None

    if held:
        path = _quarantine(
            writer.root.parent.resolve(), summary.run_date, summary.run_id, plan, held
        )
        result.quarantine = str(path)
    count, files = budget.run(rows_step, lambda: writer.stage(con, ds, "rows", rows_sql))
    result.rows = count
    staged.files += files
    staged.totals[(ds, "rows")] = count
    if deletes_sql is not None:
        sql = deletes_sql
        count, files = budget.run("stream", lambda: writer.stage(con, ds, "deletes", sql))
        staged.files += files
        staged.totals[(ds, "deletes")] = count
    tmp = budget.run(state_step, lambda: state.stage(con, ds, state_sql, meta_out, summary.run_id))
    staged.state.append((tmp, ds))
    return result


# --- the run ------------------------------------------------------------------------------


def run_entry(summary: BatchSummary, started: datetime) -> dict[str, Any]:
    """The run's manifest facts (also one OPTISYNC_RUNS row per dataset in Snowflake)."""
    finished = datetime.now(UTC)
    modes = {d.mode for d in summary.datasets.values()}
    return {
        "run_id": summary.run_id,
        "started_at": started.strftime("%Y-%m-%d %H:%M:%S"),
        "finished_at": finished.strftime("%Y-%m-%d %H:%M:%S"),
        "mode": "full"
        if modes == {"full"}
        else "incremental"
        if modes == {"incremental"}
        else "mixed",
        "empty": summary.rows == 0 and all(d.deletions == 0 for d in summary.datasets.values()),
        "watermark": max((d.watermark or "") for d in summary.datasets.values()),
        "datasets": {
            n: {k: v for k, v in d.as_dict(None).items() if k not in ("files", "tables")}
            for n, d in summary.datasets.items()
        },
        "emd_unmapped": dict(summary.emd_unmapped),
        "optisync": __version__,
    }


def finish_files(
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
    summary.manifest = writer.finish(run_entry(summary, started), published)


def _export_local(
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
) -> None:
    """The export from a DuckDB database or a folder of extracts, to files or Snowflake."""
    con = _connect(config, temp_dir)
    stack.callback(con.close)
    budget = Budget(con, config.batch.memory_limit)
    source = make_source(config)
    source.open(con)
    writer = None
    target: SnowflakeTarget | None = None
    if not dry_run and config.batch.output.kind == "snowflake":
        from optisync.batch.snowflake import SnowflakeTarget, connect

        remote = connect(config)
        stack.callback(remote.close)
        target = SnowflakeTarget(remote.cursor(), config, summary.run_id)
        target.prepare()
        summary.target = target.description
    elif not dry_run:
        writer = FileWriter.open_for(config, out_dir, summary)
    staged = _Staged()
    plans = [
        make_plan(con, config, source, n, d, started)
        for n, d in config.batch.datasets.items()
        if n in names
    ]
    for i, plan in enumerate(plans):
        if progress is not None:
            progress(plan.dataset, i, len(plans))
        try:
            result = _export_dataset(
                con,
                plan,
                budget=budget,
                config=config,
                state=state,
                writer=writer,
                staged=staged,
                summary=summary,
                full=full,
                started=started,
                target=target,
            )
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
        summary.datasets[plan.dataset] = result
    if progress is not None:
        progress("", len(plans), len(plans))
    if writer is not None:
        finish_files(writer, staged.files, con, staged.totals, summary, started)
        for tmp, ds in staged.state:  # only now: manifest and _SUCCESS are on disk
            state.commit(tmp, ds)


def export_batch(
    config_path: Path | None,
    *,
    full: bool = False,
    datasets: list[str] | None = None,
    dry_run: bool = False,
    wait: bool = False,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> BatchSummary:
    """Export new and changed rows of the selected datasets; see the module docstring."""
    clock = time.monotonic()
    config = load_config(find_config(config_path))
    check_attribute_limit(config)
    names = _selected(config, datasets)
    started = (now or datetime.now(UTC)).astimezone(UTC)
    run_date = started.date().isoformat()
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    out_dir = config.path(config.batch.output.dir)
    summary = BatchSummary(run_id=run_id, run_date=run_date, dry_run=dry_run)
    state = StateStore(config.path(config.batch.state_dir))

    deadline = _deadline(config, started)
    late = False
    if deadline is not None:
        expected = started.timestamp() + _last_duration(state.dir)
        if expected > deadline.timestamp():
            late = True
            text = (
                f"the run started at {started:%H:%M} UTC and would finish after the daily"
                f" data readiness time {config.batch.deadline_utc} UTC"
            )
            if config.batch.deadline_action == "fail" and not dry_run:
                raise DeadlineMissed(
                    text + "; nothing was exported",
                    hint="start the export earlier, or set batch.deadline_action: warn",
                )
            summary.warnings.append(text)

    with ExitStack() as stack:
        if dry_run:
            temp_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        else:
            state.ensure()
            stack.enter_context(
                RunLock(state.dir / "export-batch.lock", wait=wait, command="export-batch")
            )
            temp_dir = state.dir / ".tmp-duckdb"
        if config.batch.source.kind == "snowflake":  # the export runs in the warehouse
            from optisync.batch.snowflake import export_snowflake_source

            export_snowflake_source(
                config, names, summary, started=started, full=full, dry_run=dry_run,
                progress=progress, temp_dir=temp_dir,
            )  # fmt: skip
        else:
            _export_local(
                config, names, summary, state, stack,
                temp_dir=temp_dir, out_dir=out_dir, started=started, full=full,
                dry_run=dry_run, progress=progress,
            )  # fmt: skip
        if summary.emd_unmapped:
            keys = ", ".join(f"{k} ({n})" for k, n in sorted(summary.emd_unmapped.items()))
            summary.warnings.append(f"EMD keys not mapped to attributes (not exported): {keys}")
    summary.seconds = time.monotonic() - clock
    if not dry_run:
        write_file(
            state.dir / LAST_RUN,
            json.dumps({"run_id": run_id, "seconds": summary.seconds}).encode("utf-8"),
        )
    if deadline is not None and not late and datetime.now(UTC) > deadline:
        summary.warnings.append(
            f"the run finished after the daily data readiness time {config.batch.deadline_utc} UTC"
        )
    return summary
