"""Column types across the warehouse and DuckDB, from a result column's description.

A description is one item of ``cursor.description``: (name, type code, display size,
internal size, precision, scale, nullable); the type codes are the connector's
``snowflake.connector.constants.FIELD_TYPES``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["duck_type", "from_duck_type", "local_type", "warehouse_type"]

_FIXED, _REAL, _TEXT, _DATE = 0, 1, 2, 3
_TIMESTAMP_TZ_CODES = {4, 6, 7}  # TIMESTAMP (LTZ), TIMESTAMP_LTZ, TIMESTAMP_TZ
_TIMESTAMP_NTZ, _BOOLEAN = 8, 13


def duck_type(desc: Any) -> str:
    """A Snowflake result column as the DuckDB-style type name the plan reasons with."""
    code, precision, scale = desc[1], desc[4], desc[5]
    if code == _FIXED:
        if not scale:
            return "INTEGER" if precision is not None and precision <= 9 else "BIGINT"
        return f"DECIMAL({precision},{scale})"
    if code == _REAL:
        return "DOUBLE"
    if code == _DATE:
        return "DATE"
    if code in _TIMESTAMP_TZ_CODES:
        return "TIMESTAMP WITH TIME ZONE"
    if code == _TIMESTAMP_NTZ:
        return "TIMESTAMP"
    if code == _BOOLEAN:
        return "BOOLEAN"
    return "VARCHAR"


def local_type(desc: Any) -> str:
    """The DuckDB column type that holds a fetched Snowflake column exactly."""
    code, precision, scale = desc[1], desc[4], desc[5]
    if code == _FIXED:
        p = min(max(int(precision or 38), 1), 38)
        return "BIGINT" if not scale and p <= 18 else f"DECIMAL({p},{int(scale or 0)})"
    return {
        _REAL: "DOUBLE",
        _DATE: "DATE",
        _TIMESTAMP_NTZ: "TIMESTAMP",
        _BOOLEAN: "BOOLEAN",
    }.get(code, "TIMESTAMPTZ" if code in _TIMESTAMP_TZ_CODES else "VARCHAR")


def warehouse_type(desc: Any) -> str:
    """The Snowflake column type of a target table, from a result column."""
    code, precision, scale = desc[1], desc[4], desc[5]
    if code == _FIXED:
        return f"NUMBER({int(precision or 38)},{int(scale or 0)})"
    if code in _TIMESTAMP_TZ_CODES:
        return "TIMESTAMP_TZ"
    return {
        _REAL: "FLOAT",
        _DATE: "DATE",
        _TIMESTAMP_NTZ: "TIMESTAMP_NTZ",
        _BOOLEAN: "BOOLEAN",
    }.get(code, "VARCHAR")


_FROM_DUCK = {
    "VARCHAR": "VARCHAR",
    "DATE": "DATE",
    "TIMESTAMP": "TIMESTAMP_NTZ",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMP_TZ",
    "BOOLEAN": "BOOLEAN",
    "DOUBLE": "FLOAT",
    "FLOAT": "FLOAT",
}


def from_duck_type(t: str) -> str:
    """The Snowflake column type for a DuckDB one, for rows uploaded from a local export."""
    t = t.upper()
    if t.startswith("DECIMAL"):
        return t.replace("DECIMAL", "NUMBER")
    if "INT" in t:
        return "NUMBER(38,0)"
    return _FROM_DUCK.get(t, "VARCHAR")
