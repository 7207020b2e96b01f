"""One dataset's delta against its last export, as SQL that DuckDB and Snowflake both run.

The delta is what a run exports of a dataset: the rows whose fingerprint differs from the
state of the last successful export (new or changed), the keys gone from the source
(deletions), and the rows held back because a value looks like a card number (kept out of
the export and of the state, written masked to a quarantine file). The DuckDB pipeline and
the Snowflake pipeline both build it here; they differ only by the plan's ``Dialect`` and by
where the SQL runs (a local DuckDB connection, or a cursor in the warehouse). The contract
is docs/batch.md ("Incremental and full exports", "Deletions", "Card numbers").

A delta table holds the plan's typed columns (the output columns, ``_k0..`` the key as
text, ``_fp`` the fingerprint), then ``_s0..`` the key as the last state holds it (set for
a changed or gone row), ``_gone`` and ``_held``.
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optisync.batch.plan import LAST_UPDATED, Plan
from optisync.batch.source import quote
from optisync.batch.writer import write_file
from optisync.cards import mask_text

__all__ = [
    "Delta",
    "HeldRow",
    "KeyCheck",
    "Runner",
    "all_rows",
    "changed_rows",
    "check_keys",
    "compare",
    "find_held",
    "full_reason",
    "held_keys",
    "join_on",
    "quarantine",
    "unmapped_emd",
    "without",
]

# A DuckDB connection or a Snowflake cursor: both take execute() and executemany(), and the
# result of execute() answers fetchone(), fetchall() and fetchmany().
Runner = Any
HeldRow = tuple[list[Any], list[Any]]  # (the key as text, the row's values masked)
FETCH_HELD = 10_000


def full_reason(full: bool, meta: dict[str, str] | None, signature: str) -> str | None:
    """Why a dataset is exported in full this run (None: incremental)."""
    if full:
        return "--full"
    if meta is None:
        return "first run"
    if meta.get("signature") != signature:
        return "exported columns changed"
    return None


def unmapped_emd(con: Runner, plan: Plan) -> dict[str, int]:
    """EMD keys the config maps to no attribute, counted by name (reported, not exported)."""
    if plan.emd_relation is None:
        return {}
    mapped = ", ".join(plan.dialect.literal(k) for k in plan.emd_mapped) or "NULL"
    name_col = quote(plan.emd_name_column)
    rows = con.execute(
        f"SELECT CAST({name_col} AS VARCHAR), COUNT(*) FROM {plan.emd_relation}"
        f" WHERE {name_col} IS NOT NULL AND {name_col} NOT IN ({mapped}) GROUP BY 1"
    ).fetchall()
    # a key name is member-controlled text too: a card number there is masked like a value
    counts: dict[str, int] = {}
    for key, n in rows:
        name = mask_text(str(key))
        counts[name] = counts.get(name, 0) + int(n)
    return counts


def join_on(plan: Plan, left: str, right: str, right_prefix: str = "_k", op: str = "=") -> str:
    """The key columns ``_k..`` of ``left`` matched to ``right``'s (``_k..`` or ``_s..``)."""
    return " AND ".join(
        f"{left}.{quote(f'_k{i}')} {op} {right}.{quote(f'{right_prefix}{i}')}"
        for i in range(len(plan.key))
    )


def compare(plan: Plan, new: str, old: str, take: str, *, held_column: bool = False) -> str:
    """The keys whose fingerprint differs between the source ``new`` and the state ``old``.

    ``new`` (alias ``t``) and ``old`` (alias ``s``) are relations with ``_k..`` and ``_fp``;
    the result has ``take`` (columns of ``t``), the old key ``_s..`` and ``_gone`` (in the
    state, no longer in the source), and ``_held`` (false) when ``held_column``.
    """
    old_keys = ", ".join(f"s.{quote(f'_k{i}')} AS {quote(f'_s{i}')}" for i in range(len(plan.key)))
    held = ", FALSE AS _held" if held_column else ""
    # a NULL key in the state (written before keys were checked) matches nothing: never
    # compared, so never reported gone; next_state drops it
    known = " AND ".join(f"{k} IS NOT NULL" for k in plan.key_cols())
    return (
        f"SELECT {take}, {old_keys}, t._fp IS NULL AS _gone{held}"
        f" FROM {new} t FULL OUTER JOIN (SELECT * FROM {old} o WHERE {known}) s"
        f" ON {join_on(plan, 't', 's')}"
        " WHERE t._fp IS DISTINCT FROM s._fp"
    )


def changed_rows(plan: Plan, changes: str) -> str:
    """A delta from compared keys: the source read again for the changed keys only.

    For an engine that compares keys and fingerprints apart from the rows, so that the
    comparison holds no row data (``changes`` is a table of ``compare`` over the keys). The
    source is kept to the changed keys before typing; a row gone from the source since the
    comparison stays out, and so its old state stays too.
    """
    old = ", ".join(f"c.{quote(f'_s{i}')}" for i in range(len(plan.key)))
    wanted = " AND ".join(
        f"c.{quote(f'_k{i}')} IS NOT DISTINCT FROM {k}" for i, k in enumerate(plan.key_texts())
    )
    changed = plan.typed_sql(f"EXISTS (SELECT 1 FROM {changes} c WHERE NOT c._gone AND {wanted})")
    return (
        f"SELECT t.*, {old}, c._gone, false AS _held FROM {changes} c LEFT JOIN ({changed}) t"
        f" ON NOT c._gone AND {join_on(plan, 't', 'c', op='IS NOT DISTINCT FROM')}"
        " WHERE c._gone OR t._fp IS NOT NULL"
    )


def all_rows(plan: Plan, where: str | None = None) -> str:
    """Every source row (or those ``where`` keeps, over ``t``) as a delta: nothing is gone."""
    no_old = ", ".join(f"NULL AS {quote(f'_s{i}')}" for i in range(len(plan.key)))
    return f"SELECT t.*, {no_old}, FALSE AS _gone, FALSE AS _held FROM ({plan.typed_sql()}) t" + (
        f" WHERE {where}" if where else ""
    )


def find_held(con: Runner, plan: Plan, from_sql: str) -> list[HeldRow]:
    """Rows with a card-like value: a regex prefilter in SQL, the exact check on candidates.

    The prefilter (``plan.dialect.card_candidate``) only narrows: Python's ``mask_text``
    decides, so both engines hold back exactly the same rows.
    """
    guards = [c for c in plan.columns if c.guard]
    if not guards:
        return []
    cond = " OR ".join(
        plan.dialect.card_candidate(f"CAST({quote(c.name)} AS VARCHAR)") for c in guards
    )
    return _fetch_masked(con, plan, f"SELECT * FROM {from_sql} WHERE {cond}", every=False)


def _fetch_masked(con: Runner, plan: Plan, sql: str, *, every: bool) -> list[HeldRow]:
    """The rows of ``sql`` (typed columns) as held rows, masked: every one, or those a
    card number was masked in."""
    keys = ", ".join(plan.key_cols())
    values = ", ".join(f"CAST({quote(n)} AS VARCHAR)" for n in plan.out_names)
    cursor = con.execute(f"SELECT {keys}, {values} FROM ({sql}) r")
    nk = len(plan.key)
    held: list[HeldRow] = []
    while batch := cursor.fetchmany(FETCH_HELD):
        for row in batch:
            texts = list(row[nk:])
            masked = [mask_text(v) if isinstance(v, str) else v for v in texts]
            if every or masked != texts:
                held.append((list(row[:nk]), masked))
    return held


@dataclass(frozen=True)
class KeyCheck:
    """The keys of a dataset's source that identify no single row: NULL in a key column,
    or shared by several rows. Their rows are held back like card-number rows: compared
    and exported by neither side, so the state keeps what it had for them (no deletion)."""

    plan: Plan
    table: str  # the bad keys (``_k..``) and their row counts (``_n``)
    null_rows: int = 0
    duplicate_rows: int = 0
    duplicate_keys: int = 0

    @property
    def rows(self) -> int:
        return self.null_rows + self.duplicate_rows

    def keeps(self, alias: str) -> str:
        """A condition on ``alias`` (with ``_k..``): its key is not a bad one."""
        if not self.rows:
            return "TRUE"
        on = join_on(self.plan, alias, "x", op="IS NOT DISTINCT FROM")
        return f"NOT EXISTS (SELECT 1 FROM {self.table} x WHERE {on})"

    def only(self, relation: str) -> str:
        """The rows of ``relation`` (typed, with ``_k..``) whose key is a bad one."""
        on = join_on(self.plan, "t", "x", op="IS NOT DISTINCT FROM")
        return (
            f"SELECT t.* FROM {relation} t WHERE EXISTS (SELECT 1 FROM {self.table} x WHERE {on})"
        )

    def held(self, con: Runner, relation: str) -> list[HeldRow]:
        """The rows of the bad keys in ``relation``, masked, for the quarantine."""
        if not self.rows:
            return []
        return _fetch_masked(con, self.plan, self.only(relation), every=True)

    def describe(self) -> str:
        """What is wrong, by key name and count (empty when nothing is)."""
        names = ", ".join(self.plan.key)
        parts = []
        if self.null_rows:
            parts.append(f"{self.null_rows} row(s) with a NULL key ({names})")
        if self.duplicate_rows:
            parts.append(
                f"{self.duplicate_rows} row(s) sharing {self.duplicate_keys} duplicated key(s)"
                f" ({names})"
            )
        return " and ".join(parts)


def check_keys(con: Runner, plan: Plan) -> KeyCheck:
    """Find the source's NULL and duplicated keys, into a temporary table (one GROUP BY)."""
    table = quote(f"optisync_badkeys_{plan.dataset}")
    ks = plan.key_cols()
    texts = ", ".join(f"{t} AS {k}" for t, k in zip(plan.key_texts(), ks, strict=True))
    null = " OR ".join(f"{k} IS NULL" for k in ks)
    con.execute(
        f"CREATE OR REPLACE TEMPORARY TABLE {table} AS SELECT {', '.join(ks)}, COUNT(*) AS _n"
        f" FROM (SELECT {texts} FROM ({plan.base_sql}) b) k GROUP BY {', '.join(ks)}"
        f" HAVING COUNT(*) > 1 OR {null}"
    )
    row = con.execute(
        f"SELECT COALESCE(SUM(CASE WHEN {null} THEN _n ELSE 0 END), 0),"
        f" COALESCE(SUM(CASE WHEN {null} THEN 0 ELSE _n END), 0),"
        f" COUNT(CASE WHEN {null} THEN NULL ELSE 1 END) FROM {table}"
    ).fetchone()
    nulls, dups, keys = (int(v) for v in row) if row else (0, 0, 0)
    return KeyCheck(plan, table, nulls, dups, keys)


def held_keys(con: Runner, plan: Plan, held: list[HeldRow]) -> str:
    """A temporary table of the held rows' keys (``_k..``), for the SQL to leave them out."""
    table = quote(f"optisync_held_{plan.dataset}")
    cols = ", ".join(f"{quote(f'_k{i}')} VARCHAR" for i in range(len(plan.key)))
    con.execute(f"CREATE OR REPLACE TEMPORARY TABLE {table} ({cols})")
    if held:
        marks = ", ".join("?" for _ in plan.key)
        con.executemany(f"INSERT INTO {table} VALUES ({marks})", [k for k, _ in held])
    return table


def without(plan: Plan, alias: str, keys_table: str) -> str:
    """A condition on ``alias``: its key is not among ``keys_table``'s."""
    on = join_on(plan, alias, "h", op="IS NOT DISTINCT FROM")  # a held key may be NULL
    return f"NOT EXISTS (SELECT 1 FROM {keys_table} h WHERE {on})"


@dataclass(frozen=True)
class Delta:
    """A delta table (see the module docstring) and what the run reads from it."""

    plan: Plan
    table: str

    def mark_held(self, keys_table: str) -> str:
        """UPDATE setting ``_held`` on the rows whose key is in ``keys_table``."""
        return (
            f"UPDATE {self.table} d SET _held = TRUE WHERE EXISTS (SELECT 1 FROM {keys_table} h"
            f" WHERE {join_on(self.plan, 'd', 'h')})"
        )

    def present(self) -> str:
        """The delta's rows still in the source (the ones to check for card numbers)."""
        return f"(SELECT * FROM {self.table} WHERE NOT _gone)"

    def rows(self) -> str:
        """The rows to export: new or changed, not held."""
        out_cols = ", ".join(quote(n) for n in self.plan.out_names)
        return f"SELECT {out_cols} FROM {self.table} WHERE NOT _gone AND NOT _held"

    def deletes(self, stamp: str) -> str:
        """The deleted keys, under their output names, with ``stamp`` as LastUpdated."""
        key_out = ", ".join(
            f"{quote(f'_s{i}')} AS {quote(name)}" for i, name in enumerate(self.plan.key_out)
        )
        return (
            f"SELECT {key_out}, TIMESTAMP '{stamp}' AS {quote(LAST_UPDATED)}"
            f" FROM {self.table} WHERE _gone"
        )

    def gone(self) -> str:
        return f"SELECT count(*) FROM {self.table} WHERE _gone"

    def replaced(self, alias: str) -> str:
        """A condition on the state row ``alias``: this delta replaces it (changed or gone).

        A held row leaves its old state in place, so that it is exported once clean.
        """
        return (
            f"EXISTS (SELECT 1 FROM {self.table} d WHERE NOT d._held AND"
            f" {join_on(self.plan, alias, 'd', '_s')})"
        )

    def new_state(self) -> str:
        """Key and fingerprint of every exported row: the state they add."""
        keys_fp = ", ".join([*self.plan.key_cols(), "_fp"])
        return f"SELECT {keys_fp} FROM {self.table} WHERE NOT _gone AND NOT _held"

    def next_state(self, old: str) -> str:
        """The whole next state: the old one minus what this delta replaces, plus its rows."""
        keys_fp = ", ".join([*self.plan.key_cols(), "_fp"])
        known = " AND ".join(f"s.{k} IS NOT NULL" for k in self.plan.key_cols())
        return (
            f"SELECT {keys_fp} FROM {old} s WHERE {known} AND NOT {self.replaced('s')}"
            f" UNION ALL {self.new_state()}"
        )


def quarantine(root: Path, run_date: str, run_id: str, plan: Plan, held: list[HeldRow]) -> Path:
    """Write the held rows, masked, to ``_quarantine/<run date>/`` under ``root``."""
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(plan.out_names)
    for _, masked in held:
        out.writerow(["" if v is None else v for v in masked])
    path = root / "_quarantine" / run_date / f"{plan.dataset}-{run_id}.csv.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, gzip.compress(buffer.getvalue().encode("utf-8"), mtime=0))
    return path
