"""The state of the last successful export, kept in Snowflake when the source is there.

``batch.snowflake.state_schema`` holds one ``<DATASET>_FINGERPRINTS`` table per dataset
(``_k0..`` the key as text, ``_FP`` the fingerprint) and the ``OPTISYNC_STATE`` table of
signatures and watermarks, so that only the delta ever leaves the warehouse
(docs/snowflake.md, "Snowflake source").
"""

from __future__ import annotations

from optisync.batch.delta import Delta
from optisync.batch.plan import Plan
from optisync.batch.snowflake.connection import Cursor, Statement, columns_of, schema_name
from optisync.batch.source import quote
from optisync.config.models import SnowflakeSettings

__all__ = ["STATE_TABLE", "WarehouseState"]

STATE_TABLE = "OPTISYNC_STATE"


class WarehouseState:
    """Fingerprints and watermarks of the last successful export, kept in Snowflake."""

    def __init__(self, cur: Cursor, settings: SnowflakeSettings) -> None:
        self.cur = cur
        self.schema = schema_name(settings.state_schema, settings.database)
        self.meta_table = f"{self.schema}.{STATE_TABLE}"

    def fingerprints(self, dataset: str) -> str:
        return f"{self.schema}.{quote(dataset.upper() + '_FINGERPRINTS')}"

    def ensure(self) -> None:
        self.cur.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
        self.cur.execute(
            f"CREATE TABLE IF NOT EXISTS {self.meta_table} (DATASET VARCHAR, SIGNATURE VARCHAR,"
            " WATERMARK VARCHAR, RUN_ID VARCHAR, UPDATED_AT TIMESTAMP_NTZ)"
        )

    def meta(self, dataset: str) -> dict[str, str] | None:
        try:
            self.cur.execute(
                f"SELECT SIGNATURE, WATERMARK, RUN_ID FROM {self.meta_table} WHERE DATASET = ?",
                (dataset,),
            )
            row = self.cur.fetchone()
        except Exception:
            return None  # no state yet (e.g. a dry run before the first export)
        if row is None:
            return None
        return {"signature": row[0] or "", "watermark": row[1] or "", "run_id": row[2] or ""}

    def ensure_fingerprints(self, plan: Plan) -> None:
        """The fingerprint table with this plan's key columns (recreated if they differ).

        Recreating happens only when the key changed, so the signature changed too and the
        dataset exports in full until a run commits; a crash in between loses nothing.
        """
        table = self.fingerprints(plan.dataset)
        wanted = [f"_k{i}" for i in range(len(plan.key))] + ["_FP"]
        try:
            have = [str(d[0]) for d in columns_of(self.cur, f"SELECT * FROM {table}")]
        except Exception:
            have = []
        if have != wanted:
            cols = ", ".join(f"{quote(f'_k{i}')} VARCHAR" for i in range(len(plan.key)))
            self.cur.execute(f"CREATE OR REPLACE TABLE {table} ({cols}, _FP NUMBER(20,0))")

    def advance(
        self, delta: Delta, full: bool, watermark_mode: bool, meta: dict[str, str]
    ) -> list[Statement]:
        """DML (for the dataset's transaction) moving the state to this run's rows."""
        ds = delta.plan.dataset
        out: list[Statement] = []
        if not watermark_mode:
            table = self.fingerprints(ds)
            keys = ", ".join(delta.plan.key_cols())
            if full:
                out.append((f"DELETE FROM {table}", None))
            else:
                out.append((f"DELETE FROM {table} s WHERE {delta.replaced('s')}", None))
            out.append((f"INSERT INTO {table} ({keys}, _FP) {delta.new_state()}", None))
        out.append((f"DELETE FROM {self.meta_table} WHERE DATASET = ?", (ds,)))
        out.append(
            (
                f"INSERT INTO {self.meta_table} (DATASET, SIGNATURE, WATERMARK, RUN_ID,"
                " UPDATED_AT) SELECT ?, ?, ?, ?, CURRENT_TIMESTAMP()",
                (ds, meta["signature"], meta["watermark"], meta["run_id"]),
            )
        )
        return out
