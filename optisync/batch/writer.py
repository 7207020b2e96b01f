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
import hashlib
import json
import os
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb

from optisync.config.models import Config
from optisync.durable import TMP_PREFIX, atomic_write, fsync_dir, fsync_file
from optisync.errors import StorageError

__all__ = ["FileWriter", "Kind", "PublishedFile", "StagedFile", "write_file"]

MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"
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
        self.suffix = ".csv.gz" if fmt == "csv" else ".parquet"

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
        # DuckDB formats the CSV (fast, streamed); Python's zlib compresses it while
        # splitting at record boundaries and hashing, so rows and sha256 come for free.
        raw = folder / f"{TMP_PREFIX}{self.run_id}-{kind}.csv"
        try:
            row = con.execute(
                f"COPY ({select_sql}) TO '{_sql_str(raw)}' (FORMAT csv, HEADER, DELIMITER ',',"
                " QUOTE '\"', NULLSTR '', DATEFORMAT '%Y-%m-%d',"
                " TIMESTAMPFORMAT '%Y-%m-%d %H:%M:%S')"
            ).fetchone()
            count = int(row[0]) if row else 0
            staged = self._compress(raw, folder, dataset, kind)
        except (duckdb.IOException, OSError) as exc:
            raise StorageError(
                f"cannot write {folder}: {exc}", hint="check batch.output.dir"
            ) from exc
        finally:
            with contextlib.suppress(OSError):
                raw.unlink()
        written = sum(s.rows or 0 for s in staged)
        if written != count:  # a record boundary was misjudged: never publish that
            raise RuntimeError(f"{dataset}: wrote {written} rows but DuckDB exported {count}")
        return count, staged

    def _compress(self, raw: Path, folder: Path, dataset: str, kind: Kind) -> list[StagedFile]:
        chunk_size = max(64 * 1024, min(4 << 20, self.max_bytes // 4))
        staged: list[StagedFile] = []
        with raw.open("rb") as src:
            header = src.readline()
            part: _Part | None = None
            carry = b""
            odd = False  # inside a quoted field at the start of ``carry``
            while True:
                chunk = src.read(chunk_size)
                buf = carry + chunk
                if not chunk:
                    cut, records, odd_after = len(buf), _records(buf, odd, final=True), False
                else:
                    cut, records, odd_after = _boundary(buf, odd)
                if records or part is None:
                    body = buf[:cut]
                    if part is not None and part.size + len(body) + 65536 > self.max_bytes:
                        staged.append(part.close())
                        part = None
                    if part is None:
                        n = len(staged) + 1
                        tmp = folder / f"{TMP_PREFIX}{self.run_id}-{kind}-{n}.csv.gz"
                        part = _Part(dataset, kind, tmp, header)
                    part.write(body, records)
                    carry, odd = buf[cut:], odd_after
                else:
                    carry = buf
                if not chunk:
                    break
            if part is not None:
                staged.append(part.close())
        return staged

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


_QUOTE_OR_NEWLINE = re.compile(rb'["\n]')


def _boundary(buf: bytes, odd: bool) -> tuple[int, int, bool]:
    """(end of the last whole record in ``buf``, records before it, quote state after it)."""
    if not odd and b'"' not in buf:
        cut = buf.rfind(b"\n") + 1
        return cut, buf.count(b"\n", 0, cut), False
    cut, records, inside = 0, 0, odd
    for m in _QUOTE_OR_NEWLINE.finditer(buf):
        if m.group() == b'"':
            inside = not inside
        elif not inside:
            cut, records = m.end(), records + 1
    # the quote state at ``cut``: recount from the start up to it
    state = odd
    if cut:
        state = (odd + buf.count(b'"', 0, cut)) % 2 == 1
    return cut, records, state


def _records(buf: bytes, odd: bool, *, final: bool) -> int:
    """Records in the last piece of the file (a missing final newline still ends one)."""
    _, records, _ = _boundary(buf, odd)
    tail = buf[_boundary(buf, odd)[0] :]
    return records + (1 if final and tail.strip() else 0)


class _Part:
    """One gzip file being written: hashed and sized as it goes."""

    def __init__(self, dataset: str, kind: Kind, tmp: Path, header: bytes) -> None:
        self.dataset, self.kind, self.tmp = dataset, kind, tmp
        self.fh = tmp.open("wb")
        self.z = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip, the usual level
        self.sha = hashlib.sha256()
        self.size = 0
        self.rows = 0
        self._out(self.z.compress(header))

    def _out(self, data: bytes) -> None:
        if data:
            self.fh.write(data)
            self.sha.update(data)
            self.size += len(data)

    def write(self, body: bytes, records: int) -> None:
        self._out(self.z.compress(body))
        self.rows += records

    def close(self) -> StagedFile:
        self._out(self.z.flush())
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        return StagedFile(self.dataset, self.kind, self.tmp, self.rows, self.sha.hexdigest())
