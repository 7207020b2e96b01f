"""The incremental state: per dataset, the key and fingerprint of every row last exported.

One Parquet file per dataset under ``batch.state_dir`` (``<dataset>.parquet``: columns
``_k0..`` the key as text, ``_fp`` the row's fingerprint), with what the fingerprint
covers in the file's key/value metadata. A run stages the next state under a hidden name
and renames it into place only after its manifest and ``_SUCCESS`` are on disk.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from optisync.durable import TMP_PREFIX, publish
from optisync.errors import StorageError

__all__ = ["StateStore"]


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def path(self, dataset: str) -> Path:
        return self.dir / f"{dataset}.parquet"

    def ensure(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for item in self.dir.glob(f"{TMP_PREFIX}*"):
                if item.is_file():
                    item.unlink()
        except OSError as exc:
            raise StorageError(
                f"cannot use the state folder {self.dir}: {exc.strerror or exc}",
                hint="check batch.state_dir is writable",
            ) from exc

    def meta(self, con: duckdb.DuckDBPyConnection, dataset: str) -> dict[str, str] | None:
        """The metadata of the last successful export, or None when there is none."""
        path = self.path(dataset)
        if not path.is_file():
            return None
        try:
            rows = con.execute(
                f"SELECT key, value FROM parquet_kv_metadata({_lit(str(path))})"
            ).fetchall()
        except duckdb.Error:
            return None  # unreadable: treated as no state, so the run exports everything
        return {bytes(k).decode(): bytes(v).decode() for k, v in rows}

    def relation(self, dataset: str) -> str:
        return f"read_parquet({_lit(str(self.path(dataset)))})"

    def stage(
        self,
        con: duckdb.DuckDBPyConnection,
        dataset: str,
        select_sql: str,
        meta: dict[str, str],
        run_id: str,
    ) -> Path:
        tmp = self.dir / f"{TMP_PREFIX}{run_id}-{dataset}.parquet"
        kv = ", ".join(f"{_lit(k)}: {_lit(v)}" for k, v in meta.items())
        con.execute(
            f"COPY ({select_sql}) TO {_lit(str(tmp))}"
            f" (FORMAT parquet, COMPRESSION zstd, KV_METADATA {{{kv}}})"
        )
        return tmp

    def commit(self, tmp: Path, dataset: str) -> None:
        try:
            publish(tmp, self.path(dataset))
        except OSError as exc:
            raise StorageError(
                f"cannot save the state of {dataset} in {self.dir}: {exc.strerror or exc}",
                hint="the export is complete; the next run exports the same rows again",
            ) from exc
