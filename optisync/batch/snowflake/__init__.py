"""export-batch with Snowflake as source, target or both (docs/snowflake.md).

* Snowflake source: ``pipeline`` runs the export in the warehouse, against the state kept
  there (``state``); only the delta can leave it.
* Snowflake target: ``target`` applies each dataset's delta in one transaction to the
  tables of the schema shared with Optimove, whichever pipeline computed it.
* ``connection`` opens the connector (an optional dependency, imported only when a
  connection is opened); ``types`` maps column types between the warehouse and DuckDB.

This package is imported only when Snowflake is configured.
"""

from optisync.batch.snowflake.connection import connect, transaction
from optisync.batch.snowflake.pipeline import export_snowflake_source
from optisync.batch.snowflake.source import SnowflakeSource
from optisync.batch.snowflake.state import WarehouseState
from optisync.batch.snowflake.target import (
    RUN_ID_COLUMN,
    RUNS_TABLE,
    SnowflakeTarget,
    open_target,
)

__all__ = [
    "RUNS_TABLE",
    "RUN_ID_COLUMN",
    "SnowflakeSource",
    "SnowflakeTarget",
    "WarehouseState",
    "connect",
    "export_snowflake_source",
    "open_target",
    "transaction",
]
