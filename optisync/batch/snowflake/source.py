"""Tables and views of Snowflake as a batch source, read where they are."""

from __future__ import annotations

import duckdb

from optisync.batch.snowflake.connection import Cursor, columns_of, qualify
from optisync.batch.snowflake.types import duck_type
from optisync.batch.source import quote
from optisync.config.models import SnowflakeSettings
from optisync.errors import ConfigError

__all__ = ["SnowflakeSource"]


class SnowflakeSource:
    """Tables and views of Snowflake, read in the warehouse.

    A column with an unquoted (upper-case) name is exposed in lower case, as the config
    writes source columns (``member_id`` for MEMBER_ID); mixed-case names stay as they are.
    """

    def __init__(self, cur: Cursor, settings: SnowflakeSettings) -> None:
        self.cur = cur
        self.settings = settings
        self.description = f"snowflake {settings.account} {settings.database}"

    def open(self, con: duckdb.DuckDBPyConnection) -> None:
        """Nothing to attach: the source is read where it is."""

    def describe(self, sql: str) -> dict[str, str]:
        return {str(d[0]): duck_type(d) for d in columns_of(self.cur, sql)}

    def relation(self, table: str) -> str:
        name = qualify(
            table, self.settings.database, self.settings.schema_, "batch.datasets.*.table"
        )
        try:
            cols = columns_of(self.cur, f"SELECT * FROM {name}")
        except Exception as exc:
            raise ConfigError(
                f"Snowflake table {name} cannot be read: {exc}",
                hint="check the dataset's table and the role's SELECT grant on it",
            ) from exc
        exposed = [
            f"{quote(str(d[0]))} AS {quote(str(d[0]).lower() if str(d[0]).isupper() else d[0])}"
            for d in cols
        ]
        return f"(SELECT {', '.join(exposed)} FROM {name})"
