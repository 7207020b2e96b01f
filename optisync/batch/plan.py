"""From the config to typed SQL per dataset: output columns, keys, fingerprint, LastUpdated.

Members take the batch attributes whose ``source`` is a plain column; another dataset
takes those written ``<dataset>.<column>`` (e.g. ``offers.offer_name``). EMD is key/value:
each key mapped in ``attributes.emd.map`` becomes a column typed like its attribute. Every
dataset may add plain columns (``columns``: output name -> source column), typed from the
source. Values keep their SQL types here; the writer renders them in Optimove's formats.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import get_args

import duckdb

from optisync.batch.source import Source, quote
from optisync.config.models import Attribute, Config, Dataset, DatasetName
from optisync.errors import ConfigError

__all__ = [
    "CARD_PATTERN",
    "DATASETS",
    "DUCKDB",
    "SNOWFLAKE",
    "Dialect",
    "OutColumn",
    "Plan",
    "make_plan",
]

DATASETS: tuple[str, ...] = get_args(DatasetName)
# A 13-digit window, separators allowed: every card-like run of ASCII text holds one
# (cards.py); a row of spaces counts as one separator there.
CARD_PATTERN = "[0-9](?:(?: +|-)?[0-9]){12}"
# Anything outside printable ASCII may be a digit or a space once cards.py normalises it
# (full-width digits, no-break spaces): such text always goes to the exact check.
NOT_PRINTABLE_ASCII = "[^ -~]"
# ... unless it holds fewer than 13 characters that may read as a digit. cards.py reads a
# Unicode decimal digit (Nd) as a digit; counting every character that is no letter, mark,
# punctuation, symbol, separator or non-decimal number also counts characters this regex
# engine's Unicode tables do not know, so a newer digit is never missed. Text like
# "Montréal" then stays out of the exact check, which Python runs row by row.
MAY_HOLD_13_DIGITS = r"(?s)(?:[^\p{L}\p{M}\p{P}\p{S}\p{Z}\p{No}\p{Nl}].*){13}"
LAST_UPDATED = "LastUpdated"
CURRENCY = "Currency"


class Dialect:
    """The few SQL spellings that differ between the engines that run a plan (DuckDB here)."""

    name = "duckdb"

    def utc(self, expr: str) -> str:
        """A timestamp (with or without zone) as a naive UTC timestamp."""
        # timezone(): DuckDB 2.0 pushes a plain CAST into read_csv and loses the offset
        return f"timezone('UTC', CAST({expr} AS TIMESTAMPTZ))"

    def fingerprint(self, columns: list[str]) -> str:
        return f"hash({', '.join(columns)})"

    def pivot(self, value: str, name: str, key: str) -> str:
        return f"max({value}) FILTER (WHERE {name} = {key})"

    def literal(self, text: str) -> str:
        """``text`` as a string literal of this dialect: every value optisync writes into
        SQL (EMD key names, the currency, a stored watermark) goes through here."""
        # DuckDB's '...' literals know one escape only: a doubled quote
        return "'" + text.replace("'", "''") + "'"

    def card_candidate(self, text: str) -> str:
        """True where ``text`` (a VARCHAR) may hold a card number; the exact check is Python's."""
        return (
            f"(length({text}) >= 13 AND (regexp_matches({text}, '{CARD_PATTERN}')"
            f" OR (regexp_matches({text}, '{NOT_PRINTABLE_ASCII}')"
            f" AND regexp_matches({text}, '{MAY_HOLD_13_DIGITS}'))))"
        )

    def float_decimal(self, expr: str) -> str:
        """A floating-point value as DECIMAL(38,4), rounded from its shortest decimal form."""
        # A direct cast scales the double by 10^4 in binary first: 4111111111111111 would
        # come out as 4111111111111110.6560, wrong and no longer recognisable as a card.
        return f"CAST(CAST({expr} AS VARCHAR) AS DECIMAL(38,4))"


class SnowflakeDialect(Dialect):
    """Snowflake: HASH for fingerprints, CONVERT_TIMEZONE (the session runs in UTC)."""

    name = "snowflake"

    def utc(self, expr: str) -> str:
        return f"CAST(CONVERT_TIMEZONE('UTC', CAST({expr} AS TIMESTAMP_TZ)) AS TIMESTAMP_NTZ)"

    def fingerprint(self, columns: list[str]) -> str:
        return f"HASH({', '.join(columns)})"

    def pivot(self, value: str, name: str, key: str) -> str:
        return f"MAX(CASE WHEN {name} = {key} THEN {value} END)"

    def literal(self, text: str) -> str:
        # Snowflake reads backslash escapes in '...' literals too: a key ending in \ would
        # otherwise escape the closing quote and let the rest of the text into the statement
        return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"

    def card_candidate(self, text: str) -> str:
        # POSIX ERE (no (?:...)); REGEXP_LIKE matches the whole text, hence .* and 's'
        pattern = CARD_PATTERN.replace("(?:", "(")
        return (
            f"(LENGTH({text}) >= 13 AND (REGEXP_LIKE({text}, '.*{pattern}.*', 's')"
            f" OR REGEXP_LIKE({text}, '.*{NOT_PRINTABLE_ASCII}.*', 's')))"
        )

    def float_decimal(self, expr: str) -> str:
        # Snowflake rounds a FLOAT to NUMBER by value (not checked against a real account)
        return f"CAST({expr} AS DECIMAL(38,4))"


DUCKDB = Dialect()
SNOWFLAKE = SnowflakeDialect()


@dataclass(frozen=True)
class OutColumn:
    name: str
    expr: str  # SQL over the base relation "b"
    guard: bool = False  # may hold a card number: text, or an integer/decimal of 13+ digits
    decimal: bool = False


@dataclass
class Plan:
    """One dataset's export, as SQL the engine runs."""

    dataset: str
    base_sql: str  # the source rows (for emd: pivoted to one row per key)
    key: list[str]  # source key columns
    key_out: list[str]  # their names in the output (deletion files)
    columns: list[OutColumn]  # the exported columns but LastUpdated
    last_updated: str  # SQL for LastUpdated
    emit_deletes: bool
    emd_mapped: dict[str, str] = field(default_factory=dict)
    emd_relation: str | None = None
    emd_name_column: str = "key"
    dialect: Dialect = DUCKDB
    updated_at: str | None = None  # SQL over "b" for the source's own LastUpdated, if any

    @property
    def out_names(self) -> list[str]:
        return [c.name for c in self.columns] + [LAST_UPDATED]

    @property
    def signature(self) -> str:
        """What the fingerprint covers; a change means every row's fingerprint changed."""
        return "|".join(f"{c.name}={c.expr}" for c in self.columns) + "|key=" + ",".join(self.key)

    def typed_sql(self, where: str | None = None) -> str:
        """Output columns (typed), key columns as text ``_k0..``, and the fingerprint ``_fp``.

        ``where`` (SQL over the base relation ``b``) keeps only some rows, before typing.
        """
        cols = ", ".join(f"{c.expr} AS {quote(c.name)}" for c in self.columns)
        keys = ", ".join(f"{k} AS {quote(f'_k{i}')}" for i, k in enumerate(self.key_texts()))
        fp = ", ".join(quote(c.name) for c in self.columns)
        return (
            f"SELECT *, {self.dialect.fingerprint([fp])} AS _fp FROM (SELECT {cols},"
            f" {self.last_updated} AS {quote(LAST_UPDATED)}, {keys} FROM ({self.base_sql}) b"
            + (f" WHERE {where})" if where else ")")
        )

    def key_texts(self) -> list[str]:
        """SQL over the base relation ``b`` for each key column as text (``_k0..``)."""
        return [f"CAST(b.{quote(k)} AS VARCHAR)" for k in self.key]

    def key_cols(self, prefix: str = "") -> list[str]:
        return [f"{prefix}{quote(f'_k{i}')}" for i in range(len(self.key))]


def check_attribute_limit(config: Config) -> None:
    """Optimove's cap on custom attributes, checked again at run time.

    The realtime and batch sets together hold at most ``limit`` names: the config may have
    been edited since validate-config last passed it.
    """
    names = {a.name for a in config.attributes.realtime} | {a.name for a in config.attributes.batch}
    limit = config.attributes.limit
    if len(names) > limit:
        raise ConfigError(
            f"{len(names)} custom attributes across the realtime and batch sets, but Optimove"
            f" allows at most {limit}",
            hint="drop or merge attributes; run: optisync validate-config",
        )


def _attribute_cast(attr: Attribute, source: str) -> OutColumn:
    kind = attr.type
    if kind == "DATE":
        return OutColumn(attr.name, f"CAST({source} AS DATE)")
    if kind == "INT":
        return OutColumn(attr.name, f"CAST({source} AS INTEGER)")
    if kind == "BIGINT":
        return OutColumn(attr.name, f"CAST({source} AS BIGINT)", guard=True)
    if kind.startswith("DECIMAL"):
        return OutColumn(attr.name, f"CAST({source} AS DECIMAL(19,4))", guard=True, decimal=True)
    return OutColumn(attr.name, f"CAST({source} AS VARCHAR)", guard=True)


_WIDE_INT = {"BIGINT", "HUGEINT", "UBIGINT", "UHUGEINT"}
_DECIMAL = re.compile(r"^DECIMAL\((\d+),\s*(\d+)\)$")


def _source_cast(name: str, source: str, sql_type: str, dialect: Dialect = DUCKDB) -> OutColumn:
    t = sql_type.upper()
    if t.startswith("TIMESTAMP"):  # a naive timestamp is taken as UTC (the session's zone)
        return OutColumn(name, dialect.utc(source))
    if t in {"DOUBLE", "FLOAT", "REAL"}:
        return OutColumn(name, dialect.float_decimal(source), guard=True, decimal=True)
    if (m := _DECIMAL.match(t)) is not None:
        return OutColumn(name, source, guard=int(m.group(1)) >= 13, decimal=True)
    if t == "BOOLEAN":
        return OutColumn(name, f"CAST({source} AS INTEGER)")
    if t in _WIDE_INT:
        return OutColumn(name, source, guard=True)
    if t in {"DATE", "INTEGER", "SMALLINT", "TINYINT", "UINTEGER", "USMALLINT", "UTINYINT"}:
        return OutColumn(name, source)
    return OutColumn(name, f"CAST({source} AS VARCHAR)", guard=True)


def _describe(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, str]:
    rows = con.execute(f"DESCRIBE {sql}").fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def _need(types: dict[str, str], column: str, dataset: str, what: str) -> None:
    if column not in types:
        raise ConfigError(
            f"batch.datasets.{dataset}: {what} {column!r} is not a column of the source",
            hint=f"columns there: {', '.join(types)}",
        )


Describe = Callable[[str], dict[str, str]]  # SQL -> {column: DuckDB-style type name}


def make_plan(
    con: duckdb.DuckDBPyConnection | None,
    config: Config,
    source: Source,
    name: str,
    dataset: Dataset,
    run_started: datetime,
    *,
    dialect: Dialect = DUCKDB,
    describe: Describe | None = None,
) -> Plan:
    """The plan of one dataset, checked against the source's real columns.

    ``describe`` gives a query's column types (default: DuckDB's DESCRIBE on ``con``);
    ``dialect`` spells the SQL for the engine that will run it.
    """
    if describe is None:
        assert con is not None
        duck = con

        def describe(sql: str) -> dict[str, str]:
            return _describe(duck, sql)

    relation = source.relation(dataset.table or name)
    declared = {a.name: a for a in [*config.attributes.realtime, *config.attributes.batch]}
    emd_mapped: dict[str, str] = {}
    if name == "emd":
        base_sql, emd_mapped = _emd_pivot(describe, relation, dataset, config, declared, dialect)
    else:
        base_sql = f"SELECT * FROM {relation}"
    types = describe(base_sql)
    if not dataset.key:
        raise ConfigError(
            f"batch.datasets.{name}.key is empty",
            hint="name the primary-key column(s), e.g. key: [member_id]",
        )
    for k in dataset.key:
        _need(types, k, name, "key column")
    columns = _columns(config, name, dataset, types, declared, emd_mapped, dialect)

    last_updated = f"TIMESTAMP '{run_started.strftime('%Y-%m-%d %H:%M:%S')}'"
    stamped = None
    if dataset.updated_at:
        _need(types, dataset.updated_at, name, "updated_at column")
        stamped = dialect.utc(f"b.{quote(dataset.updated_at)}")
        last_updated = f"coalesce({stamped}, {last_updated})"

    by_source = {col: out for out, col in dataset.columns.items()}
    return Plan(
        dataset=name,
        base_sql=base_sql,
        key=list(dataset.key),
        key_out=[by_source.get(k, k) for k in dataset.key],
        columns=columns,
        last_updated=last_updated,
        emit_deletes=dataset.emit_deletes,
        emd_mapped=emd_mapped,
        emd_relation=relation if name == "emd" else None,
        emd_name_column=dataset.name_column,
        dialect=dialect,
        updated_at=stamped,
    )


def _emd_pivot(
    describe: Describe,
    relation: str,
    dataset: Dataset,
    config: Config,
    declared: dict[str, Attribute],
    dialect: Dialect,
) -> tuple[str, dict[str, str]]:
    """EMD's key/value rows as one row per key, a column ``emd:<key>`` per mapped key.

    Also the mapping (EMD key -> attribute name), each attribute checked to be declared.
    """
    raw = describe(f"SELECT * FROM {relation}")
    for col, what in ((dataset.name_column, "name_column"), (dataset.value_column, "value_column")):
        _need(raw, col, "emd", what)
    for k in dataset.key:
        _need(raw, k, "emd", "key column")
    mapped = dict(config.attributes.emd.map)
    for key, attr_name in mapped.items():
        if attr_name not in declared:
            raise ConfigError(
                f"attributes.emd.map.{key}: '{attr_name}' is not a declared attribute",
                hint="declare it under attributes.realtime or attributes.batch",
            )
    pivots = [
        dialect.pivot(
            quote(dataset.value_column),
            quote(dataset.name_column),
            dialect.literal(key),
        )
        + f" AS {quote('emd:' + key)}"
        for key in mapped
    ]
    group = ", ".join(quote(k) for k in dataset.key)
    extra = (
        [f"max({quote(dataset.updated_at)}) AS {quote(dataset.updated_at)}"]
        if (dataset.updated_at and dataset.updated_at not in dataset.key)
        else []
    )
    return f"SELECT {', '.join([group, *pivots, *extra])} FROM {relation} GROUP BY {group}", mapped


def _columns(
    config: Config,
    name: str,
    dataset: Dataset,
    types: dict[str, str],
    declared: dict[str, Attribute],
    emd_mapped: dict[str, str],
    dialect: Dialect,
) -> list[OutColumn]:
    """The exported columns but LastUpdated: plain columns, attributes, then Currency."""
    columns: list[OutColumn] = []
    for out, col in dataset.columns.items():
        _need(types, col, name, "column")
        columns.append(_source_cast(out, f"b.{quote(col)}", types[col], dialect))
    for attr in config.attributes.batch:
        src = attr.source or ""
        target, _, column = src.rpartition(".")
        if (target or "members") != name:
            continue
        _need(types, column, name, f"attribute {attr.name}'s source")
        columns.append(_attribute_cast(attr, f"b.{quote(column)}"))
    for key, attr_name in emd_mapped.items():
        columns.append(_attribute_cast(declared[attr_name], f"b.{quote('emd:' + key)}"))
    if not columns:  # nothing configured: every source column, as it is named
        columns = [_source_cast(col, f"b.{quote(col)}", t, dialect) for col, t in types.items()]
    seen: set[str] = set()
    for c in columns:
        if c.name in seen or c.name == LAST_UPDATED:
            raise ConfigError(
                f"batch.datasets.{name}: output column {c.name!r} is written twice",
                hint="give each column and attribute its own name",
            )
        seen.add(c.name)
    if dataset.currency:
        _need(types, dataset.currency, name, "currency column")
        columns.append(OutColumn(CURRENCY, f"upper(CAST(b.{quote(dataset.currency)} AS VARCHAR))"))
    elif any(c.decimal for c in columns) and CURRENCY not in seen:
        # an ISO 4217 code (checked at load); quoted like any literal all the same
        columns.append(OutColumn(CURRENCY, dialect.literal(config.locale.default_currency)))
    return columns
