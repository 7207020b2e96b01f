"""Where the DuckDB pipeline reads batch data, behind one small interface.

Every source exposes its tables to a DuckDB connection, so the rest of the export is SQL
that DuckDB streams. A DuckDB database file is attached read-only; a folder of extracts is
read through views over ``read_csv`` / ``read_parquet``. A Snowflake source implements the
same ``Source`` protocol but is read in the warehouse (``snowflake.source``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import duckdb

from optisync.config.models import BatchSource, Config
from optisync.errors import ConfigError

__all__ = ["DuckDBFileSource", "FolderSource", "Source", "make_source", "quote"]


def quote(name: str) -> str:
    """A SQL identifier, double-quoted."""
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Source(Protocol):
    """A place tables are read from, opened on a DuckDB connection."""

    description: str

    def open(self, con: duckdb.DuckDBPyConnection) -> None:
        """Make the tables reachable from ``con`` (attach, register views)."""

    def relation(self, table: str) -> str:
        """SQL that can follow FROM and reads ``table``; ConfigError if it does not exist."""


class DuckDBFileSource:
    """A DuckDB database file, attached read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"duckdb {path}"
        self._tables: set[str] = set()

    def open(self, con: duckdb.DuckDBPyConnection) -> None:
        if not self.path.is_file():
            raise ConfigError(
                f"batch.source.path: DuckDB database {self.path} does not exist",
                hint="point batch.source.path at the database file",
            )
        con.execute(f"ATTACH {_literal(str(self.path))} AS optisync_src (READ_ONLY)")
        rows = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog ="
            " 'optisync_src'"
        ).fetchall()
        self._tables = {str(r[0]) for r in rows}

    def relation(self, table: str) -> str:
        if table not in self._tables:
            raise ConfigError(
                f"table {table!r} is not in {self.path}",
                hint=f"tables there: {', '.join(sorted(self._tables)) or 'none'}",
            )
        return f"optisync_src.{quote(table)}"


class FolderSource:
    """A folder of extracts: ``<table>.csv``, ``.csv.gz``, ``.parquet`` or a sub-folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"files {path}"

    def open(self, con: duckdb.DuckDBPyConnection) -> None:
        if not self.path.is_dir():
            raise ConfigError(
                f"batch.source.path: extracts folder {self.path} does not exist",
                hint="point batch.source.path at the folder of CSV/Parquet extracts",
            )

    def relation(self, table: str) -> str:
        base = self.path / table
        for suffix in (".parquet",):
            if base.with_name(table + suffix).is_file():
                return f"read_parquet({_literal(str(base.with_name(table + suffix)))})"
        for suffix in (".csv", ".csv.gz"):
            if base.with_name(table + suffix).is_file():
                return _read_csv(str(base.with_name(table + suffix)))
        if base.is_dir():
            if any(base.glob("*.parquet")):
                return f"read_parquet({_literal(str(base / '*.parquet'))})"
            if any(base.glob("*.csv*")):
                return _read_csv(str(base / "*.csv*"))
        raise ConfigError(
            f"no extract for table {table!r} in {self.path}",
            hint=f"expected {table}.csv, {table}.csv.gz, {table}.parquet or a {table}/ folder",
        )


def _read_csv(pattern: str) -> str:
    return f"read_csv({_literal(pattern)}, header = true, auto_detect = true)"


def make_source(config: Config) -> Source:
    """The configured source; ConfigError for a kind this build cannot read."""
    settings: BatchSource = config.batch.source
    if settings.kind == "snowflake":
        # The run sends a Snowflake source to the warehouse pipeline; never read here.
        raise ConfigError(
            "batch.source.kind: snowflake is read in the warehouse, not through DuckDB",
            hint="export a Snowflake source with optisync export-batch",
        )
    if settings.path is None:
        raise ConfigError(
            "batch.source.path is not set",
            hint="name the DuckDB database file or the folder of extracts",
        )
    path = config.path(settings.path)
    return DuckDBFileSource(path) if settings.kind == "duckdb" else FolderSource(path)
