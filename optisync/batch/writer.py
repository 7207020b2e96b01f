"""Publishing a run's files: staged under hidden names, renamed into place, manifest, _SUCCESS.

Layout (design.md §6)::

    <output.dir>/<run date>/<dataset>/<dataset>-<run id>-<nnnn>.csv.gz   (or .parquet)
    <output.dir>/<run date>/<dataset>/<dataset>-<run id>-deletes-<nnnn>.csv.gz
    <output.dir>/<run date>/manifest.json
    <output.dir>/<run date>/_SUCCESS

Every file is first written under a hidden ``.tmp-*`` name in its final folder, fsynced,
then renamed; nothing is renamed into view until every dataset of the run is staged. A
second run on the same date adds its files and its entry to the same manifest; while it
runs, ``_SUCCESS`` is absent. Files a crashed run left visible but never put in the
manifest are removed by the next run (its state did not advance, so it exports them again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import duckdb

from optisync.errors import StorageError

__all__ = ["FileWriter", "PublishedFile", "StagedFile", "Writer", "atomic_write"]

MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"
TMP_PREFIX = ".tmp-"

Kind = Literal["rows", "deletes"]


@dataclass
class StagedFile:
    dataset: str
    kind: Kind
    tmp: Path


@dataclass
class PublishedFile:
    dataset: str
    kind: Kind
    path: Path  # final
    rows: int
    bytes: int
    sha256: str

    def as_dict(self, root: Path) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "kind": self.kind,
            "path": self.path.relative_to(root).as_posix(),
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


class Writer(Protocol):
    """Where a run's rows go. A Snowflake target (issue 6) implements the same steps."""

    def prepare(self) -> None:
        """Clear leftovers of crashed runs; mark the run's folder as in progress."""

    def stage(
        self, con: duckdb.DuckDBPyConnection, dataset: str, kind: Kind, select_sql: str
    ) -> tuple[int, list[StagedFile]]:
        """Write the rows of ``select_sql`` out of sight; return (rows, staged files)."""

    def publish(
        self,
        staged: list[StagedFile],
        con: duckdb.DuckDBPyConnection | None = None,
        totals: dict[tuple[str, Kind], int] | None = None,
    ) -> list[PublishedFile]:
        """Make staged files visible (atomic rename), with their rows and sha256."""

    def finish(self, run: dict[str, Any], files: list[PublishedFile]) -> Path:
        """Record the run in the manifest, then write the completion marker last."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` under a hidden temporary name in its folder, fsync, rename."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="check that the folder exists, is writable and has space",
        ) from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class FileWriter:
    """gzip CSV (or Parquet) files under ``<dir>/<run date>/<dataset>/``."""

    def __init__(
        self,
        out_dir: Path,
        run_date: str,
        run_id: str,
        *,
        fmt: Literal["csv", "parquet"] = "csv",
        max_file_mb: int = 200,
    ) -> None:
        self.root = out_dir.resolve() / run_date
        self.run_date = run_date
        self.run_id = run_id
        self.fmt = fmt
        self.max_bytes = max_file_mb * 1024 * 1024
        self.suffix = ".csv.gz" if fmt == "csv" else ".parquet"

    # -- manifest -------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def read_manifest(self) -> dict[str, Any]:
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    # -- steps ----------------------------------------------------------------------------

    def prepare(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            listed = {f["path"] for f in self.read_manifest().get("files", [])}
            for folder in [self.root, *(p for p in self.root.iterdir() if p.is_dir())]:
                for item in folder.iterdir():
                    if not item.is_file():
                        continue
                    rel = item.relative_to(self.root).as_posix()
                    hidden_tmp = item.name.startswith(TMP_PREFIX)
                    orphan = folder != self.root and rel not in listed
                    if hidden_tmp or orphan:
                        item.unlink()
            (self.root / SUCCESS).unlink(missing_ok=True)
            _fsync_dir(self.root)
        except OSError as exc:
            raise StorageError(
                f"cannot prepare {self.root}: {exc.strerror or exc}",
                hint="check batch.output.dir is writable",
            ) from exc

    def _copy_options(self) -> str:
        # DuckDB starts a new file once the current one passes FILE_SIZE_BYTES; it overshoots
        # by up to a buffer, so aim below the limit (checked again after writing).
        target = max(256 * 1024, int(self.max_bytes * 0.85))
        common = f"PER_THREAD_OUTPUT, FILE_SIZE_BYTES {target}, OVERWRITE_OR_IGNORE"
        if self.fmt == "parquet":
            return f"FORMAT parquet, COMPRESSION zstd, {common}"
        return (
            "FORMAT csv, COMPRESSION gzip, HEADER, DELIMITER ',', QUOTE '\"', NULLSTR '',"
            " DATEFORMAT '%Y-%m-%d', TIMESTAMPFORMAT '%Y-%m-%d %H:%M:%S', " + common
        )

    def stage(
        self, con: duckdb.DuckDBPyConnection, dataset: str, kind: Kind, select_sql: str
    ) -> tuple[int, list[StagedFile]]:
        folder = self.root / dataset
        folder.mkdir(parents=True, exist_ok=True)
        pattern = f"{TMP_PREFIX}{self.run_id}-{kind}-{{i}}"
        target = str(folder).replace("'", "''")
        sql = (
            f"COPY ({select_sql}) TO '{target}' ({self._copy_options()},"
            f" FILENAME_PATTERN '{pattern}', RETURN_FILES)"
        )
        try:
            count, files = con.execute(sql).fetchone() or (0, [])
        except duckdb.IOException as exc:
            raise StorageError(
                f"cannot write {folder}: {exc}", hint="check batch.output.dir"
            ) from exc
        staged = [StagedFile(dataset, kind, Path(f)) for f in sorted(files)]
        return int(count), staged

    def _count_rows(self, con: duckdb.DuckDBPyConnection, paths: list[Path]) -> dict[Path, int]:
        if not paths:
            return {}
        listing = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
        if self.fmt == "parquet":
            sql = (
                f"SELECT file_name, sum(row_group_num_rows) FROM"
                f" (SELECT DISTINCT file_name, row_group_id, row_group_num_rows"
                f" FROM parquet_metadata([{listing}])) GROUP BY file_name"
            )
        else:
            sql = (
                f"SELECT filename, count(*) FROM read_csv([{listing}], header = true,"
                f" all_varchar = true, filename = true, delim = ',', quote = '\"',"
                f" escape = '\"') GROUP BY filename"
            )
        return {Path(str(r[0])): int(r[1]) for r in con.execute(sql).fetchall()}

    def publish(
        self,
        staged: list[StagedFile],
        con: duckdb.DuckDBPyConnection | None = None,
        totals: dict[tuple[str, Kind], int] | None = None,
    ) -> list[PublishedFile]:
        """Rename every staged file into view; rows per file from ``totals`` or a count."""
        groups: dict[tuple[str, Kind], list[StagedFile]] = {}
        for item in staged:
            groups.setdefault((item.dataset, item.kind), []).append(item)
        need_count = [
            s.tmp
            for key, items in groups.items()
            if len(items) > 1 or totals is None or key not in totals
            for s in items
        ]
        counted = self._count_rows(con, need_count) if con is not None else {}
        published: list[PublishedFile] = []
        try:
            for (dataset, kind), items in groups.items():
                for n, item in enumerate(items, 1):
                    tail = f"-{kind}" if kind == "deletes" else ""
                    final = item.tmp.with_name(
                        f"{dataset}-{self.run_id}{tail}-{n:04d}{self.suffix}"
                    )
                    _fsync_file(item.tmp)
                    size = item.tmp.stat().st_size
                    rows = counted.get(item.tmp)
                    if rows is None:
                        rows = (totals or {}).get((dataset, kind), 0)
                    published.append(
                        PublishedFile(dataset, kind, final, rows, size, _sha256(item.tmp))
                    )
                    item.tmp.replace(final)
                _fsync_dir(self.root / dataset)
        except OSError as exc:
            raise StorageError(
                f"cannot publish files in {self.root}: {exc.strerror or exc}",
                hint="check batch.output.dir is writable and has space",
            ) from exc
        return published

    def finish(self, run: dict[str, Any], files: Iterable[PublishedFile]) -> Path:
        manifest = self.read_manifest()
        run_files = [f.as_dict(self.root) for f in files]
        runs = [*manifest.get("runs", []), {**run, "files": run_files}]
        data = {
            "format": "optisync-batch-manifest/1",
            "run_date": self.run_date,
            "last_run": run["run_id"],
            "mode": run["mode"],
            "watermark": run["watermark"],
            "empty": run["empty"],
            "files": [*manifest.get("files", []), *run_files],
            "runs": runs,
        }
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        atomic_write(self.manifest_path, text.encode("utf-8"))
        atomic_write(self.root / SUCCESS, b"")
        return self.manifest_path
