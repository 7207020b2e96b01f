"""The per-step memory budgets of export-batch (optisync/batch/memory.py), on real DuckDB."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from optisync.batch import memory
from optisync.batch.memory import MIB, PART_MIB, Budget, parse_size, parts


def connect(threads: int, tmp_path: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute(f"SET temp_directory = '{tmp_path}'")
    return con


def limit_now(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute("SELECT current_setting('memory_limit')").fetchone()
    assert row is not None
    return parse_size(str(row[0]).replace(" ", ""))


def test_sizes_are_read_as_duckdb_reads_them() -> None:
    assert parse_size("1GB") == 1_000_000_000
    assert parse_size("512MiB") == 512 * MIB
    assert parse_size("1.5 GB") == 1_500_000_000
    assert parse_size("96MB") == 96_000_000
    with pytest.raises(ValueError):
        parse_size("lots")


@pytest.mark.parametrize("threads", [1, 2, 8])
def test_budgets_follow_the_threads_not_the_data(threads: int, tmp_path: Path) -> None:
    budget = Budget(connect(threads, tmp_path), "1GB")
    assert budget.threads == threads
    assert budget.limit("stream") == (16 + 8 * threads) * MIB
    assert budget.limit("work") == (32 + 16 * threads) * MIB
    assert budget.limit("stream") < budget.limit("work")


def test_memory_limit_caps_every_budget(tmp_path: Path) -> None:
    budget = Budget(connect(8, tmp_path), "40MiB")
    assert budget.limit("stream") == 40 * MIB
    assert budget.limit("work") == 40 * MIB


def test_a_step_runs_under_its_budget_then_the_cap_is_back(tmp_path: Path) -> None:
    con = connect(2, tmp_path)
    budget = Budget(con, "1GiB")
    assert limit_now(con) == 1024 * MIB
    seen = budget.run("stream", lambda: limit_now(con))
    assert seen == budget.limit("stream") == 32 * MIB
    assert budget.run("work", lambda: limit_now(con)) == 64 * MIB
    assert limit_now(con) == 1024 * MIB


# a hash aggregate over a million distinct strings: far more than 1 MiB of hash table
BIG = "SELECT count(*) FROM (SELECT DISTINCT 'key-' || i FROM range(1000000) t(i))"


def test_a_step_out_of_its_budget_runs_again_at_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "WORK_MIB", (1, 0))
    con = connect(1, tmp_path)
    budget = Budget(con, "1GiB")
    limits: list[int] = []

    def step() -> int:
        limits.append(limit_now(con))
        row = con.execute(BIG).fetchone()
        return int(row[0]) if row else 0

    assert budget.run("work", step) == 1_000_000
    assert limits == [1 * MIB, 1024 * MIB]  # refused at 1 MiB, done at the cap


def test_out_of_memory_at_the_cap_is_the_callers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "WORK_MIB", (1, 0))
    con = connect(1, tmp_path)
    budget = Budget(con, "1MiB")
    calls: list[int] = []

    def step() -> object:
        calls.append(1)
        return con.execute(BIG).fetchone()

    with pytest.raises(duckdb.OutOfMemoryException):
        budget.run("work", step)
    assert calls == [1]  # no second try: the budget was already the cap


def test_parts_come_from_the_bytes_of_keys_not_a_row_count() -> None:
    assert parts(0, 0, 1) == 1
    assert parts(1_000_000, 10_000_000, 1) == 1  # 1M ten-character keys: 50 MB
    assert parts(5_000_000, 50_000_000, 1) == 2
    assert parts(20_000_000, 200_000_000, 1) == 5
    # the same rows with long or composite keys need more parts
    assert parts(5_000_000, 5_000_000 * 60, 1) == 3
    assert parts(5_000_000, 50_000_000, 3) > parts(5_000_000, 50_000_000, 1)
    # never more bytes a part than PART_MIB
    for rows in (10**6, 7 * 10**6, 10**8):
        n = parts(rows, rows * 20, 2)
        assert rows * (24 + 32 + 20) / n <= PART_MIB * MIB
