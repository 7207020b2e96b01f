"""How much memory DuckDB may hold at each step of an export, whatever the data size.

DuckDB keeps every block it reads cached until its memory limit forces it out, so under one
large limit a run's memory grows with the source until the limit. A step that reads the
source once gains nothing from that cache (the next read is a copy from the OS's page
cache). So each step runs under a budget set by the number of DuckDB threads, not by the
data: a streaming step (a scan into a COPY or a fetch) needs a few buffers per thread; a
step with a hash join or an aggregate gets more and spills to ``batch.state_dir`` past it.
``batch.memory_limit`` caps both; a step that still runs out of its budget runs once more
at the cap, so a budget set too low costs memory, never the run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal, TypeVar

import duckdb

__all__ = ["MIB", "PART_MIB", "STREAM_MIB", "WORK_MIB", "Budget", "Step", "parse_size", "parts"]

MIB = 1 << 20
# (base, per DuckDB thread) in MiB. Measured on DuckDB 2.0.1 with 1 to 16 threads: a scan
# into a CSV or Parquet COPY ran in 8 MiB a thread; the key comparison (a FULL OUTER JOIN
# of keys and fingerprints, spilling) in about 16 MiB a thread.
STREAM_MIB = (16, 8)
WORK_MIB = (32, 16)
# DuckDB's spilling hash join needs more memory the more rows it holds (it splits them
# into more partitions, each with buffers): 5M keys compared in 48 MiB, 20M not in 64 MiB.
# Past this many bytes of keys the comparison runs in key-hash parts (local.py).
PART_MIB = 192
ROW_BYTES = 24  # a compared row in the hash table, besides its keys: fingerprint, hash, link
KEY_BYTES = 16  # each key column, besides its text

Step = Literal["stream", "work"]
T = TypeVar("T")

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT])(i?)B$")


def parse_size(text: str) -> int:
    """Bytes in a size such as ``1GB`` or ``512MiB``, read as DuckDB reads it."""
    m = _SIZE.match(text.strip())
    if m is None:
        raise ValueError(f"not a size: {text!r}")
    power = "KMGT".index(m.group(2)) + 1
    unit = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * unit**power)


def parts(rows: int, key_text_bytes: int, key_columns: int) -> int:
    """Key-hash parts for comparing ``rows`` keys (``key_text_bytes`` of text in all)."""
    need = rows * (ROW_BYTES + KEY_BYTES * key_columns) + key_text_bytes
    return max(1, int(-(-need // (PART_MIB * MIB))))


class Budget:
    """Sets DuckDB's memory limit for each step: its budget, never above ``cap``."""

    def __init__(self, con: duckdb.DuckDBPyConnection, cap: str) -> None:
        self.con = con
        self.cap = parse_size(cap)
        row = con.execute("SELECT current_setting('threads')").fetchone()
        self.threads = int(row[0]) if row else 1
        self.current: int | None = None
        self._set(self.cap)

    def limit(self, step: Step) -> int:
        base, per_thread = STREAM_MIB if step == "stream" else WORK_MIB
        return min(self.cap, (base + per_thread * self.threads) * MIB)

    def _set(self, limit: int) -> None:
        if limit != self.current:
            self.current = None  # unknown until DuckDB accepts it
            self.con.execute(f"SET memory_limit = '{limit // 1024}KiB'")
            self.current = limit

    def run(self, step: Step, action: Callable[[], T]) -> T:
        """``action()`` under the step's budget; once more at the cap if that ran out.

        ``action`` must be safe to repeat: it writes whole files or replaces tables. The
        limit is back at the cap afterwards, for the small statements between steps.
        """
        try:
            self._set(self.limit(step))  # DuckDB refuses it when it cannot free that much
            return action()
        except duckdb.OutOfMemoryException:
            if self.limit(step) >= self.cap:
                raise
            self._set(self.cap)
            return action()
        finally:
            self._set(self.cap)
