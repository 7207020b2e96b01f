"""Publishing a run's files: staged under hidden names, renamed into place, manifest, _SUCCESS.

Layout (docs/batch.md, "Output files")::

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
import csv
import hashlib
import itertools
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
from isal import isal_zlib

from optisync.config.models import Config
from optisync.durable import TMP_PREFIX, atomic_write, fsync_dir, fsync_file
from optisync.errors import StorageError

__all__ = ["FileWriter", "Kind", "PublishedFile", "StagedFile", "write_file"]

MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"
CSV_OPTIONS = (
    "FORMAT csv, HEADER, DELIMITER ',', QUOTE '\"', NULLSTR '', DATEFORMAT '%Y-%m-%d',"
    " TIMESTAMPFORMAT '%Y-%m-%d %H:%M:%S'"
)
# ISA-L's level 1: several times zlib's speed, files about 16 % larger than zlib's level 6
# on member data; standard gzip.
GZIP_LEVEL = 1
CHUNK = 1 << 20
# A part holds at most this share of max_file_mb of uncompressed CSV; gzip never grows
# CSV text, so the file stays below the maximum.
RAW_SHARE = 0.9
# DuckDB cuts its CSV into pieces of about this size (after the chunk that crosses it). It
# holds about a piece per thread in memory: 1 MB fits the export's budget (memory.py).
PIECE_BYTES = 1 << 20
ROW_GROUP_BYTES = "4MB"  # Parquet output: the most one row group holds before it is written

Kind = Literal["rows", "deletes"]


@dataclass
class StagedFile:
    dataset: str
    kind: Kind
    tmp: Path
    rows: int | None = None  # known when the writer counted them while compressing
    sha256: str | None = None


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


def write_file(path: Path, data: bytes) -> None:
    """Replace ``path`` crash-safely; a failure is a StorageError naming the file."""
    try:
        atomic_write(path, data, mode=0o666)
    except OSError as exc:
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
        self.raw_bytes = int(self.max_bytes * RAW_SHARE)
        self.piece_bytes = max(64 * 1024, min(PIECE_BYTES, self.raw_bytes // 4))
        self.suffix = ".csv.gz" if fmt == "csv" else ".parquet"
        self._attempts = itertools.count()

    @classmethod
    def open_for(cls, config: Config, out_dir: Path, summary: Any) -> FileWriter:
        """The run's writer, prepared, with the summary pointing at its folder."""
        writer = cls(
            out_dir,
            summary.run_date,
            summary.run_id,
            fmt=config.batch.output.format,
            max_file_mb=config.batch.output.max_file_mb,
        )
        writer.prepare()
        summary.output = writer.root.resolve()
        return writer

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
            fsync_dir(self.root)
        except OSError as exc:
            raise StorageError(
                f"cannot prepare {self.root}: {exc.strerror or exc}",
                hint="check batch.output.dir is writable",
            ) from exc

    def stage(
        self, con: duckdb.DuckDBPyConnection, dataset: str, kind: Kind, select_sql: str
    ) -> tuple[int, list[StagedFile]]:
        folder = self.root / dataset
        folder.mkdir(parents=True, exist_ok=True)
        if self.fmt == "parquet":
            return self._stage_parquet(con, folder, dataset, kind, select_sql)
        # DuckDB formats the CSV in small pieces, each whole records with the header (it
        # knows where a quoted field ends: Python never scans the rows). Consecutive pieces
        # make a part, headers but the first dropped, gzipped by isal, parts in parallel.
        # Small pieces because DuckDB holds about a piece per thread in memory.
        # A fresh name for every attempt: a step that ran out of memory runs again, and
        # files a failed COPY leaves (or DuckDB removes late) must never be taken for its.
        stem = f"{TMP_PREFIX}{self.run_id}-{kind}-{next(self._attempts)}-piece-"
        pattern = stem + "{i}"
        pieces: list[Path] = []
        try:
            row = con.execute(
                f"COPY ({select_sql}) TO '{_sql_str(folder)}' ({CSV_OPTIONS},"
                f" FILE_SIZE_BYTES {self.piece_bytes}, OVERWRITE_OR_IGNORE,"
                f" FILENAME_PATTERN '{pattern}', FILE_EXTENSION 'csv', RETURN_FILES)"
            ).fetchone()
            count, files = (int(row[0]), list(row[1])) if row else (0, [])
            pieces = sorted((Path(f) for f in files), key=_part_number)
            if not pieces:  # nothing to export: still a file, holding the header
                pieces = [folder / f"{stem}0.csv"]
                con.execute(f"COPY ({select_sql}) TO '{_sql_str(pieces[0])}' ({CSV_OPTIONS})")
            parts = self._group(pieces)
            if len(parts) == 1:
                rows = [count]
            else:
                counted = _count_pieces(con, pieces)
                rows = [sum(counted.get(p, 0) for p in part) for part in parts]
            gz = [
                folder / f"{TMP_PREFIX}{self.run_id}-{kind}-{n}.csv.gz"
                for n in range(1, len(parts) + 1)
            ]
            with ThreadPoolExecutor(
                max_workers=max(1, min(len(parts), os.cpu_count() or 1))
            ) as pool:
                digests = list(pool.map(_gzip_part, parts, gz))
        except (duckdb.IOException, OSError) as exc:
            raise StorageError(
                f"cannot write {folder}: {exc}", hint="check batch.output.dir"
            ) from exc
        finally:
            for piece in {*pieces, *folder.glob(f"{stem}*")}:
                with contextlib.suppress(OSError):
                    piece.unlink()
        if sum(rows) != count:  # a piece was misread: never publish that
            raise RuntimeError(f"{dataset}: counted {sum(rows)} rows but DuckDB exported {count}")
        staged = [
            StagedFile(dataset, kind, path, n, digest)
            for path, n, digest in zip(gz, rows, digests, strict=True)
        ]
        return count, staged

    def _group(self, pieces: list[Path]) -> list[list[Path]]:
        """Consecutive pieces into parts of at most ``raw_bytes`` of CSV (one piece at least)."""
        parts: list[list[Path]] = []
        size = 0
        for piece in pieces:
            n = piece.stat().st_size
            if not parts or size + n > self.raw_bytes:
                parts.append([])
                size = 0
            parts[-1].append(piece)
            size += n
        return parts

    def _stage_parquet(
        self,
        con: duckdb.DuckDBPyConnection,
        folder: Path,
        dataset: str,
        kind: Kind,
        select_sql: str,
    ) -> tuple[int, list[StagedFile]]:
        target = max(256 * 1024, int(self.max_bytes * 0.85))
        pattern = f"{TMP_PREFIX}{self.run_id}-{kind}-{{i}}"
        # Each DuckDB thread holds a row group until it is written: bounded in bytes, so
        # wide rows fit the export's memory budget (memory.py).
        try:
            row = con.execute(
                f"COPY ({select_sql}) TO '{_sql_str(folder)}' (FORMAT parquet, COMPRESSION zstd,"
                f" FILE_SIZE_BYTES {target}, ROW_GROUP_SIZE_BYTES '{ROW_GROUP_BYTES}',"
                f" OVERWRITE_OR_IGNORE, FILENAME_PATTERN '{pattern}', RETURN_FILES)"
            ).fetchone()
        except duckdb.IOException as exc:
            raise StorageError(
                f"cannot write {folder}: {exc}", hint="check batch.output.dir"
            ) from exc
        count, files = row if row else (0, [])
        return int(count), [StagedFile(dataset, kind, Path(f)) for f in sorted(files)]

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
            if s.rows is None
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
                    fsync_file(item.tmp)
                    size = item.tmp.stat().st_size
                    rows = item.rows if item.rows is not None else counted.get(item.tmp)
                    if rows is None:
                        rows = (totals or {}).get((dataset, kind), 0)
                    published.append(
                        PublishedFile(
                            dataset, kind, final, rows, size, item.sha256 or _sha256(item.tmp)
                        )
                    )
                    item.tmp.replace(final)
                fsync_dir(self.root / dataset)
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
        write_file(self.manifest_path, text.encode("utf-8"))
        write_file(self.root / SUCCESS, b"")
        return self.manifest_path


def _sql_str(path: Path) -> str:
    return str(path).replace("'", "''")


def _count_pieces(con: duckdb.DuckDBPyConnection, pieces: list[Path]) -> dict[Path, int]:
    """Rows per piece, counted by DuckDB's CSV reader (quoted newlines included).

    The columns are given, not detected: detecting them again for every piece would
    cost more than reading it.
    """
    with pieces[0].open(encoding="utf-8", newline="") as fh:
        width = len(next(csv.reader(fh)))  # the header line only
    columns = ", ".join(f"'c{i}': 'VARCHAR'" for i in range(width))
    listing = ", ".join("'" + _sql_str(p) + "'" for p in pieces)
    sql = (
        f"SELECT filename, count(*) FROM read_csv([{listing}], header = true,"
        f" auto_detect = false, columns = {{{columns}}}, filename = true, delim = ',',"
        f" quote = '\"', escape = '\"') GROUP BY filename"
    )
    return {Path(str(r[0])): int(r[1]) for r in con.execute(sql).fetchall()}


def _part_number(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[1].split(".")[0])


def _gzip_part(pieces: list[Path], target: Path) -> str:
    """Gzip the pieces, as one CSV with the first one's header, into ``target`` (fsynced);
    the sha256 of what was written."""
    sha = hashlib.sha256()
    z = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)  # 31: a gzip container
    header = b""
    with target.open("wb") as out:

        def put(data: bytes) -> None:
            sha.update(data)
            out.write(data)

        for i, piece in enumerate(pieces):
            with piece.open("rb") as src:
                if i == 0:
                    header = src.readline()
                    put(z.compress(header))
                elif src.read(len(header)) != header:  # every piece starts with it
                    raise RuntimeError(f"{piece.name} does not start with the header")
                while chunk := src.read(CHUNK):
                    put(z.compress(chunk))
        put(z.flush())
        out.flush()
        os.fsync(out.fileno())
    return sha.hexdigest()
