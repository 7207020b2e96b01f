"""The local email opt-in register: what optisync last heard of each member's consent.

Needed only for triggered templates that optisync sends itself (``delivery: api``):
Optimove's own campaigns gate on its opt-in flag, but a send through the transactional API
does not, so optisync must. Fed, in input order, by OPT_IN_EMAIL events, the EMD opt-in key
of profile updates and registration consent. SQLite, so it survives runs and crashes.
"""

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from optisync.errors import StorageError

_COMMIT_EVERY = 500


class OptInRegister:
    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            path.chmod(0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS opt_in ("
                " member_id TEXT PRIMARY KEY, opted_in INTEGER NOT NULL, as_of TEXT NOT NULL)"
            )
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(
                f"cannot open the opt-in register {path}: {exc}",
                hint="check optimove.state_dir is writable",
            ) from None
        self.path = path
        self._pending = 0
        self._db.execute("BEGIN")

    def record(self, member_id: str, opted_in: bool, as_of: datetime) -> None:
        """Remember the consent, unless a newer statement is already known."""
        self._db.execute(
            "INSERT INTO opt_in (member_id, opted_in, as_of) VALUES (?, ?, ?)"
            " ON CONFLICT(member_id) DO UPDATE SET opted_in = excluded.opted_in,"
            " as_of = excluded.as_of WHERE excluded.as_of >= opt_in.as_of",
            (member_id, int(opted_in), as_of.astimezone(UTC).isoformat()),
        )
        self._pending += 1
        if self._pending >= _COMMIT_EVERY:
            self.commit()

    def get(self, member_id: str) -> bool | None:
        row = self._db.execute(
            "SELECT opted_in FROM opt_in WHERE member_id = ?", (member_id,)
        ).fetchone()
        return None if row is None else bool(row[0])

    def commit(self) -> None:
        self._db.execute("COMMIT")
        self._db.execute("BEGIN")
        self._pending = 0

    def close(self) -> None:
        self._db.execute("COMMIT")
        self._db.close()
