"""export-batch with Snowflake as source and/or target, on fakesnow (Snowflake on DuckDB).

The bundled sample is loaded into Snowflake tables with the types the CSV reader infers, so
the same data runs through files and through Snowflake and the outputs can be compared.
"""

from __future__ import annotations

import csv
import gzip
import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

# declared dev dependencies: a broken install must fail here, not skip these tests
import fakesnow
import pytest
import snowflake.connector as snowflake_connector
import yaml

from optisync.commands.batch import export_batch
from tests.support import EXAMPLES, invoke

NOW = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
DATASETS = ["members", "partner_links", "offers", "emd", "orders"]
SRC = "LOYALTY.SRC"
SHARE = "LOYALTY.OPTIMOVE_SHARE"
_SF_TYPES = {
    "VARCHAR": "VARCHAR",
    "BIGINT": "NUMBER(38,0)",
    "DOUBLE": "FLOAT",
    "DATE": "DATE",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMP_TZ",
    "BOOLEAN": "BOOLEAN",
}


class Recorder:
    """Wraps connector connections: records SQL and every fetched row; may fail on SQL."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.sql: list[str] = []
        self.fetched: list[tuple[str, Any]] = []  # (the SQL it answered, the row)
        self.fail_on: str | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _Con(self.real(*args, **kwargs), self)


class _Con:
    def __init__(self, con: Any, rec: Recorder) -> None:
        self._con, self._rec = con, rec

    def cursor(self) -> _Cur:
        return _Cur(self._con.cursor(), self._rec)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


class _Cur:
    def __init__(self, cur: Any, rec: Recorder) -> None:
        self._cur, self._rec, self._last = cur, rec, ""

    def execute(self, sql: str, params: Any = None) -> _Cur:
        self._rec.sql.append(sql)
        self._last = sql
        if self._rec.fail_on and self._rec.fail_on in sql:
            raise RuntimeError("killed in the middle of the target write")
        self._cur.execute(sql, params) if params is not None else self._cur.execute(sql)
        return self

    def executemany(self, sql: str, rows: Any) -> _Cur:
        self._rec.sql.append(sql)
        self._cur.executemany(sql, rows)
        return self

    def _got(self, rows: list[Any]) -> list[Any]:
        self._rec.fetched += [(self._last, r) for r in rows]
        return rows

    def fetchone(self) -> Any:
        row = self._cur.fetchone()
        return self._got([row])[0] if row is not None else None

    def fetchall(self) -> list[Any]:
        return self._got(list(self._cur.fetchall()))

    def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._got(list(self._cur.fetchmany(size)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


@pytest.fixture
def snow(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """fakesnow in place of Snowflake, the sample loaded into LOYALTY.SRC, SQL recorded."""
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "not-a-real-password")
    with fakesnow.patch():
        rec = Recorder(snowflake_connector.connect)
        snowflake_connector.connect = rec
        con = rec.real(
            account="test", user="loader", password="x", database="LOYALTY", paramstyle="qmark"
        )
        cur = con.cursor()
        cur.execute("CREATE DATABASE IF NOT EXISTS LOYALTY")
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SRC}")
        duck = duckdb.connect()
        duck.execute("SET TimeZone = 'UTC'")
        for table in DATASETS:
            rel = f"read_csv('{EXAMPLES / 'data' / table}.csv', header = true, auto_detect = true)"
            types = duck.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall()
            spec = ", ".join(f"{r[0]} {_SF_TYPES[str(r[1])]}" for r in types)
            cur.execute(f"CREATE TABLE {SRC}.{table} ({spec})")
            rows = duck.execute(f"SELECT * FROM {rel}").fetchall()
            marks = ", ".join("?" for _ in types)
            cur.executemany(f"INSERT INTO {SRC}.{table} VALUES ({marks})", rows)
        con.close()
        rec.sql.clear()
        try:
            yield rec
        finally:
            snowflake_connector.connect = rec.real  # fakesnow.patch() restores the rest


def sql(statement: str, params: Any = None) -> list[Any]:
    """Run SQL in fakesnow directly (not recorded)."""
    real = snowflake_connector.connect
    con = (real.real if isinstance(real, Recorder) else real)(
        account="test", user="t", password="x", database="LOYALTY", paramstyle="qmark"
    )
    cur = con.cursor()
    cur.execute(statement, params) if params is not None else cur.execute(statement)
    try:
        rows = list(cur.fetchall())
    finally:
        con.close()
    return rows


def make_config(tmp_path: Path, *, source: str, output: str, **dataset_edits: Any) -> Path:
    """The example config with a Snowflake source and/or target, writing under tmp_path."""
    root = tmp_path / f"{source}-{output}"
    shutil.copytree(EXAMPLES / "data", root / "data")
    data = yaml.safe_load((EXAMPLES / "optisync.yaml").read_text(encoding="utf-8"))
    data.pop("templates", None)
    data.pop("routing", None)
    batch = data["batch"]
    batch["snowflake"] = {
        "account": "myorg-loyalty",
        "user": "OPTISYNC",
        "password": "${SNOWFLAKE_PASSWORD}",
        "role": "OPTISYNC_EXPORT",
        "warehouse": "OPTISYNC_WH",
        "database": "LOYALTY",
        "schema": "SRC",
        "state_schema": "OPTISYNC_STATE",
    }
    batch["source"] = {"kind": source, "path": "data"} if source == "files" else {"kind": source}
    batch["output"] = {"kind": output, "dir": "out"}
    if output == "snowflake":
        batch["output"]["schema"] = "OPTIMOVE_SHARE"
    batch["state_dir"] = "state"
    batch.pop("deadline_utc", None)
    for name, edits in dataset_edits.items():
        batch["datasets"][name].update(edits)
    path = root / "optisync.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def text(value: Any) -> str:
    """A value as the file export writes it."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal | float):
        return f"{Decimal(str(value)):f}"
    return str(value)


def file_rows(summary: Any, dataset: str, kind: str = "rows") -> list[list[str]]:
    out: list[list[str]] = []
    for f in summary.datasets[dataset].files:
        if f.kind == kind:
            with gzip.open(f.path, "rt", encoding="utf-8", newline="") as fh:
                out += list(csv.reader(fh))[1:]
    return sorted(out)


def table_rows(dataset: str, run_id: str | None = None, kind: str = "") -> list[list[str]]:
    where = f" WHERE OPTISYNC_RUN_ID = '{run_id}'" if run_id else ""
    rows = sql(f'SELECT * FROM {SHARE}."{dataset.upper()}{kind}"{where}')
    return sorted([text(v) for v in r[:-1]] for r in rows)


def change_source() -> None:
    """One member changed, one new, one gone; one offer withdrawn."""
    sql(f"UPDATE {SRC}.members SET status = 'Gold' WHERE member_id = 'M000002'")
    sql(f"UPDATE {SRC}.members SET member_id = 'M000007' WHERE member_id = 'M000006'")
    sql(f"DELETE FROM {SRC}.offers WHERE offer_id = 'O101'")


def change_files(config: Path) -> None:
    """The same change, in the CSV extracts."""
    data = config.parent / "data"
    members = (data / "members.csv").read_text(encoding="utf-8")
    members = members.replace(",active,2026-11-24T18:30", ",Gold,2026-11-24T18:30")
    (data / "members.csv").write_text(members.replace("M000006,", "M000007,"), encoding="utf-8")
    offers = (data / "offers.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (data / "offers.csv").write_text(
        "".join(x for x in offers if not x.startswith("O101,")), encoding="utf-8"
    )


# --- Snowflake to Snowflake ---------------------------------------------------------------


def test_full_then_no_change_then_incremental_in_warehouse(snow: Recorder, tmp_path: Path) -> None:
    config = make_config(tmp_path, source="snowflake", output="snowflake")
    first = export_batch(config, now=NOW)
    assert {d.mode for d in first.datasets.values()} == {"full"}
    assert first.output is None and first.target and "OPTIMOVE_SHARE" in first.target
    assert len(table_rows("members")) == 6 and len(table_rows("orders")) == 4
    runs = sql(
        f"SELECT DATASET, MODE, ROW_COUNT, RUN_ID FROM {SHARE}.OPTISYNC_RUNS ORDER BY DATASET"
    )
    assert [(r[0], r[1], r[2]) for r in runs] == sorted(
        (n, "full", d.rows) for n, d in first.datasets.items()
    )
    assert first.datasets["offers"].rows == 3
    assert {r[3] for r in runs} == {first.run_id}

    second = export_batch(config, now=NOW)  # nothing changed
    assert {d.mode for d in second.datasets.values()} == {"incremental"}
    assert second.rows == 0
    assert len(table_rows("members")) == 6
    assert table_rows("members", second.run_id) == []

    change_source()
    third = export_batch(config, now=NOW)
    members = table_rows("members", third.run_id)
    assert [r[0] for r in members] == ["M000002", "M000007"]
    assert third.datasets["members"].rows == 2
    # members has emit_deletes: false, so M000006 stays
    assert [r[0] for r in table_rows("members")] == [f"M00000{i}" for i in range(1, 8)]
    assert third.datasets["offers"].deletions == 1
    assert [r[:2] for r in table_rows("offers", kind="_DELETES")] == [["O101", "M000002"]]
    assert "O101" not in [r[0] for r in table_rows("offers")]
    assert export_batch(config, now=NOW).rows == 0


def test_no_dataset_row_is_fetched_when_source_and_target_are_snowflake(
    snow: Recorder, tmp_path: Path
) -> None:
    config = make_config(tmp_path, source="snowflake", output="snowflake")
    export_batch(config, now=NOW)
    change_source()
    snow.sql.clear()
    snow.fetched.clear()
    summary = export_batch(config, now=NOW)
    assert summary.datasets["members"].rows == 2  # a real delta went through
    # every value of the source but the EMD key names (tallied for the unmapped-key warning)
    values = {
        str(v)
        for table in DATASETS
        for row in sql(
            f"SELECT * EXCLUDE (key) FROM {SRC}.{table}"
            if table == "emd"
            else f"SELECT * FROM {SRC}.{table}"
        )
        for v in row
        if v is not None and len(str(v)) > 3
    }
    leaked = [(q, r) for q, r in snow.fetched if any(str(v) in values for v in r)]
    assert leaked == []
    # what is fetched: state metadata, counts, maxima, EMD key tallies; no row data
    assert len(snow.fetched) < 40
    joined = "\n".join(snow.sql)
    compared = [s for s in snow.sql if "FULL OUTER JOIN" in s]  # in the warehouse
    assert compared and 'FROM LOYALTY.OPTISYNC_STATE."MEMBERS_FINGERPRINTS"' in compared[0]
    assert 'INSERT INTO LOYALTY.OPTIMOVE_SHARE."MEMBERS"' in joined
    assert any(s.startswith("CREATE OR REPLACE TEMPORARY TABLE") for s in snow.sql)
    assert not [s for s in snow.sql if "INSERT INTO" in s and "VALUES (?" in s]  # no upload


def test_crash_inside_the_target_write_rolls_back_and_rerun_exports_the_delta(
    snow: Recorder, tmp_path: Path
) -> None:
    config = make_config(tmp_path, source="snowflake", output="snowflake")
    export_batch(config, now=NOW)
    change_source()
    before = table_rows("members")
    snow.fail_on = "INSERT INTO LOYALTY.OPTIMOVE_SHARE.OPTISYNC_RUNS"  # the last statement
    with pytest.raises(RuntimeError, match="killed"):
        export_batch(config, now=NOW)
    snow.fail_on = None
    assert table_rows("members") == before  # the dataset's transaction rolled back
    assert len(sql(f"SELECT * FROM {SHARE}.OPTISYNC_RUNS")) == 5  # the first run's only
    again = export_batch(config, now=NOW)
    assert [r[0] for r in table_rows("members", again.run_id)] == ["M000002", "M000007"]
    # a rerun after success is empty: idempotent
    assert export_batch(config, now=NOW).rows == 0


def test_rerun_of_a_committed_delta_is_harmless(snow: Recorder, tmp_path: Path) -> None:
    """Files to Snowflake, crash after the commit but before the local state: same table."""
    from optisync.batch.state import StateStore

    config = make_config(tmp_path, source="files", output="snowflake")
    export_batch(config, now=NOW)
    change_files(config)
    real = StateStore.commit
    StateStore.commit = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed"))  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError):
            export_batch(config, now=NOW)
    finally:
        StateStore.commit = real  # type: ignore[method-assign]
    after_crash = table_rows("members")
    again = export_batch(config, now=NOW)
    assert again.datasets["members"].rows == 2  # the state had not advanced
    assert table_rows("members") == after_crash  # applying it twice changes nothing


# --- files and Snowflake give the same rows and deltas ------------------------------------


def test_files_and_snowflake_yield_the_same_rows_and_deltas(snow: Recorder, tmp_path: Path) -> None:
    files = make_config(tmp_path, source="files", output="files")
    from_snow = make_config(tmp_path, source="snowflake", output="files")
    to_snow = make_config(tmp_path, source="files", output="snowflake")

    a1 = export_batch(files, now=NOW)
    b1 = export_batch(from_snow, now=NOW)
    for ds in DATASETS:
        assert file_rows(b1, ds) == file_rows(a1, ds), ds
        assert b1.datasets[ds].mode == a1.datasets[ds].mode == "full"
    c1 = export_batch(to_snow, now=NOW)
    for ds in DATASETS:
        assert table_rows(ds, c1.run_id) == file_rows(a1, ds), ds

    change_files(files)
    change_files(to_snow)
    change_source()
    a2 = export_batch(files, now=NOW)
    b2 = export_batch(from_snow, now=NOW)
    c2 = export_batch(to_snow, now=NOW)
    assert [r[0] for r in file_rows(a2, "members")] == ["M000002", "M000007"]
    for ds in DATASETS:
        assert file_rows(b2, ds) == file_rows(a2, ds), ds
        assert file_rows(b2, ds, "deletes") == file_rows(a2, ds, "deletes"), ds
        assert table_rows(ds, c2.run_id) == file_rows(a2, ds), ds
        assert b2.datasets[ds].deletions == a2.datasets[ds].deletions == c2.datasets[ds].deletions
    assert [r[:2] for r in file_rows(b2, "offers", "deletes")] == [["O101", "M000002"]]
    assert [r[:2] for r in table_rows("offers", c2.run_id, "_DELETES")] == [["O101", "M000002"]]
    # a full export to Snowflake replaces each table by exactly the file export's rows
    both = make_config(tmp_path, source="snowflake", output="snowflake")
    export_batch(both, now=NOW, full=True)
    a3 = export_batch(files, now=NOW, full=True)
    for ds in DATASETS:
        assert table_rows(ds) == file_rows(a3, ds), ds


def test_snowflake_to_files_state_waits_for_the_manifest(snow: Recorder, tmp_path: Path) -> None:
    from optisync.batch.writer import FileWriter

    config = make_config(tmp_path, source="snowflake", output="files")
    export_batch(config, now=NOW)
    change_source()
    real = FileWriter.finish
    FileWriter.finish = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed"))  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError):
            export_batch(config, now=NOW)
    finally:
        FileWriter.finish = real  # type: ignore[method-assign]
    again = export_batch(config, now=NOW)
    assert [r[0] for r in file_rows(again, "members")] == ["M000002", "M000007"]
    assert export_batch(config, now=NOW).rows == 0


# --- watermark mode, card numbers, config -------------------------------------------------


def test_watermark_mode_compares_updated_at_in_the_warehouse(
    snow: Recorder, tmp_path: Path
) -> None:
    config = make_config(
        tmp_path, source="snowflake", output="snowflake", orders={"incremental": "watermark"}
    )
    first = export_batch(config, datasets=["orders"], now=NOW)
    assert first.datasets["orders"].rows == 4
    sql(
        f"INSERT INTO {SRC}.orders VALUES ('R5005', 'M000001', 'Airport', 10.0, 'CAD', 100,"
        " CAST('2026-11-25 12:00:00' AS TIMESTAMP_TZ))"
    )
    snow.sql.clear()
    second = export_batch(config, datasets=["orders"], now=NOW)
    assert second.datasets["orders"].mode == "incremental"
    assert [r[0] for r in table_rows("orders", second.run_id)] == ["R5005"]
    assert not [s for s in snow.sql if "ORDERS_FINGERPRINTS" in s]
    assert any('"LastUpdated" > CAST(' in s for s in snow.sql)
    assert export_batch(config, datasets=["orders"], now=NOW).rows == 0


def test_card_numbers_are_held_back_in_the_warehouse_too(snow: Recorder, tmp_path: Path) -> None:
    sql(
        f"UPDATE {SRC}.members SET last_name = 'Roy 4111 1111 1111 1111'"
        " WHERE member_id = 'M000002'"
    )
    config = make_config(tmp_path, source="snowflake", output="snowflake")
    summary = export_batch(config, datasets=["members"], now=NOW)
    assert summary.held == 1
    assert "M000002" not in [r[0] for r in table_rows("members")]
    assert summary.datasets["members"].quarantine
    sql(f"UPDATE {SRC}.members SET last_name = 'Roy' WHERE member_id = 'M000002'")
    again = export_batch(config, datasets=["members"], now=NOW)
    assert [r[0] for r in table_rows("members", again.run_id)] == ["M000002"]


def test_snowflake_config_keys(write_config: Any) -> None:
    base = """
        attributes:
          emd: {{opt_in_key: email_opt_in}}
        batch:
          snowflake:
            account: myorg-loyalty
            user: OPTISYNC
            password: {password}
            database: LOYALTY
            schema: SRC
          source: {{kind: snowflake}}
          output: {{kind: snowflake{schema}}}
          datasets:
            orders: {{key: [order_id]{extra}}}
        """
    ok = write_config(base.format(password="${SNOWFLAKE_PASSWORD}", schema=", schema: S", extra=""))
    invoke("validate-config", str(ok))
    literal = write_config(base.format(password="hunter2", schema=", schema: S", extra=""))
    out = invoke("validate-config", str(literal))
    assert "literal secret" in out.stdout + out.stderr
    assert "hunter2" not in out.stdout + out.stderr
    no_schema = write_config(base.format(password="${SNOWFLAKE_PASSWORD}", schema="", extra=""))
    out = invoke("validate-config", str(no_schema), expect=3)
    assert "output.schema" in out.stdout + out.stderr
    watermark = write_config(
        base.format(
            password="${SNOWFLAKE_PASSWORD}", schema=", schema: S", extra=", incremental: watermark"
        )
    )
    out = invoke("validate-config", str(watermark), expect=3)
    assert "updated_at" in out.stdout + out.stderr


def test_connector_is_not_imported_for_help_or_file_exports() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from optisync.cli import main\n"
        "sys.argv=['optisync','--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'snowflake.connector' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_null_and_duplicate_keys_are_held_back_in_the_warehouse_too(
    snow: Recorder, tmp_path: Path
) -> None:
    config = make_config(tmp_path, source="snowflake", output="snowflake")
    export_batch(config, datasets=["members", "offers"], now=NOW)
    sql(f"INSERT INTO {SRC}.members SELECT * FROM {SRC}.members WHERE member_id = 'M000002'")
    sql(f"UPDATE {SRC}.members SET first_name = 'Robert' WHERE member_id = 'M000002'")
    sql(
        f"INSERT INTO {SRC}.members SELECT NULL, email, first_name, last_name, tier,"
        f" points_balance, lifetime_spend, currency, enrolled_on, status, updated_at"
        f" FROM {SRC}.members WHERE member_id = 'M000001'"
    )
    sql(f"INSERT INTO {SRC}.offers SELECT * FROM {SRC}.offers WHERE offer_id = 'O102'")
    for _ in range(2):  # the same on the next run: nothing exported twice, nothing deleted
        summary = export_batch(config, datasets=["members", "offers"], now=NOW)
        members, offers = summary.datasets["members"], summary.datasets["offers"]
        assert (members.null_keys, members.duplicate_keys, members.held) == (1, 2, 3)
        assert (offers.null_keys, offers.duplicate_keys, offers.held) == (0, 2, 2)
        assert members.rows == 0 and offers.rows == 0 and offers.deletions == 0
        assert table_rows("members", summary.run_id) == []
        assert "dataset members: 1 row(s) with a NULL key (member_id)" in summary.warnings[0]
    assert [r[0] for r in table_rows("offers")].count("O102") == 1
    # fixed: one Bob, no NULL key, one O102; what stays equals what was exported before
    sql(f"DELETE FROM {SRC}.members WHERE member_id IS NULL")
    sql(f"DELETE FROM {SRC}.members WHERE member_id = 'M000002'")
    sql(f"DELETE FROM {SRC}.offers WHERE offer_id = 'O102'")
    fixed = export_batch(config, datasets=["members", "offers"], now=NOW)
    assert fixed.held == 0
    assert fixed.datasets["offers"].deletions == 1  # O102 now really gone
    assert table_rows("members", fixed.run_id) == []
