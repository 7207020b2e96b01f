"""The delta SQL both pipelines share (optisync/batch/delta.py), run on DuckDB directly."""

from __future__ import annotations

from collections.abc import Callable

import duckdb
import pytest

from optisync.batch.delta import (
    Delta,
    all_rows,
    changed_rows,
    compare,
    find_held,
    held_keys,
    join_on,
)
from optisync.batch.plan import OutColumn, Plan

PLAN = Plan(
    dataset="members",
    base_sql="SELECT * FROM src",
    key=["id"],
    key_out=["CustomerID"],
    columns=[
        OutColumn("CustomerID", 'CAST(b."id" AS VARCHAR)', guard=True),
        OutColumn("Name", 'CAST(b."name" AS VARCHAR)', guard=True),
    ],
    last_updated="TIMESTAMP '2026-11-26 03:00:00'",
    emit_deletes=True,
)
KEYS_FP = '"_k0", _fp'


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    """The last export saw a to d; since then a card number came into 1, 2 changed, 3 left
    and 5 came in."""
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE src AS SELECT * FROM"
        " (VALUES ('1', 'a'), ('2', 'b'), ('3', 'c'), ('4', 'd')) v(id, name)"
    )
    con.execute(f"CREATE TABLE old AS SELECT {KEYS_FP} FROM ({PLAN.typed_sql()})")
    con.execute("UPDATE src SET name = 'card 4111 1111 1111 1111' WHERE id = '1'")
    con.execute("UPDATE src SET name = 'B' WHERE id = '2'")
    con.execute("DELETE FROM src WHERE id = '3'")
    con.execute("INSERT INTO src VALUES ('5', 'e')")
    return con


def _two_pass(con: duckdb.DuckDBPyConnection) -> Delta:
    """The DuckDB pipeline's way: compare keys and fingerprints, then read the rows."""
    take = ", ".join(f"t.{k}" for k in PLAN.key_cols())
    keys = compare(PLAN, f"(SELECT {KEYS_FP} FROM ({PLAN.typed_sql()}))", "old", take)
    con.execute(f"CREATE TABLE changes AS {keys}")
    con.execute(f"CREATE TABLE delta2 AS {changed_rows(PLAN, 'changes')}")
    return Delta(PLAN, "delta2")


def _one_pass(con: duckdb.DuckDBPyConnection) -> Delta:
    """The Snowflake pipeline's way: the rows carried through the comparison."""
    con.execute(
        "CREATE TABLE delta1 AS "
        + compare(PLAN, f"({PLAN.typed_sql()})", "old", "t.*", held_column=True)
    )
    return Delta(PLAN, "delta1")


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[object, ...]]:
    return sorted(con.execute(sql).fetchall())


@pytest.mark.parametrize("build", [_two_pass, _one_pass], ids=["two-pass", "one-pass"])
def test_the_delta_exports_changes_and_deletions_and_holds_card_numbers(
    con: duckdb.DuckDBPyConnection, build: Callable[[duckdb.DuckDBPyConnection], Delta]
) -> None:
    delta = build(con)
    held = find_held(con, PLAN, delta.present())
    assert [(key, masked[0]) for key, masked in held] == [(["1"], "1")]
    assert "4111" not in held[0][1][1]  # the quarantined copy is masked
    con.execute(delta.mark_held(held_keys(con, PLAN, held)))

    assert [r[:2] for r in _rows(con, delta.rows())] == [("2", "B"), ("5", "e")]
    assert [r[0] for r in _rows(con, delta.deletes("2026-11-26 03:00:00"))] == ["3"]
    # the next state: 2 and 5 as exported, 3 gone, 4 unchanged, and 1 as it was before the
    # card number came in, so that it is exported once clean
    state = dict(_rows(con, delta.next_state("old")))
    assert sorted(state) == ["1", "2", "4", "5"]
    old = dict(con.execute(f"SELECT {KEYS_FP} FROM old").fetchall())
    fresh = dict(con.execute(f"SELECT {KEYS_FP} FROM ({PLAN.typed_sql()})").fetchall())
    assert state["1"] == old["1"] != fresh["1"]
    assert all(state[k] == fresh[k] for k in ("2", "4", "5"))


def test_a_full_export_is_every_row_with_nothing_gone(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"CREATE TABLE everything AS {all_rows(PLAN)}")
    delta = Delta(PLAN, "everything")
    assert [r[0] for r in _rows(con, delta.rows())] == ["1", "2", "4", "5"]
    assert _rows(con, delta.deletes("2026-11-26 03:00:00")) == []


def test_keys_join_column_by_column() -> None:
    two = Plan(**{**PLAN.__dict__, "key": ["offer_id", "member_id"]})
    assert join_on(two, "s", "d", "_s") == 's."_k0" = d."_s0" AND s."_k1" = d."_s1"'
