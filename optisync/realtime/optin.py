"""The local email opt-in register: what optisync last heard of each member's consent.

Needed only for triggered templates that optisync sends itself (``delivery: api``):
Optimove's own campaigns gate on its opt-in flag, but a send through the transactional API
does not, so optisync must. Fed, in input order, by OPT_IN_EMAIL events, the EMD opt-in key
of profile updates and registration consent. SQLite, so it survives runs and crashes.

``optisync optin sync`` adds Optimove's unsubscribe list (by email address): an address
unsubscribed there is opted out here, unless the member opted in again after it.
"""

import sqlite3
from collections.abc import Iterable
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
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS unsubscribed ("
                " email TEXT PRIMARY KEY, as_of TEXT NOT NULL)"
            )
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(
                f"cannot open the opt-in register {path}: {exc}",
                hint="check optimove.state_dir is writable",
            ) from None
        self.path = path
        self._pending = 0
        self._db.execute("BEGIN")

    def record(self, member_id: str, opted_in: bool, as_of: datetime) -> bool:
        """Remember the consent, unless a newer statement is already known; whether it
        was taken."""
        taken = self._db.execute(
            "INSERT INTO opt_in (member_id, opted_in, as_of) VALUES (?, ?, ?)"
            " ON CONFLICT(member_id) DO UPDATE SET opted_in = excluded.opted_in,"
            " as_of = excluded.as_of WHERE excluded.as_of >= opt_in.as_of",
            (member_id, int(opted_in), as_of.astimezone(UTC).isoformat()),
        ).rowcount
        self._pending += 1
        if self._pending >= _COMMIT_EVERY:
            self.commit()
        return taken > 0

    def get(self, member_id: str, email: str | None = None) -> bool | None:
        """The member's consent; an address on Optimove's unsubscribe list is opted out
        unless the member opted in after it was put there."""
        row = self._db.execute(
            "SELECT opted_in, as_of FROM opt_in WHERE member_id = ?", (member_id,)
        ).fetchone()
        known = None if row is None else bool(row[0])
        if email:
            unsub = self._db.execute(
                "SELECT as_of FROM unsubscribed WHERE email = ?", (email.strip().lower(),)
            ).fetchone()
            if unsub is not None and not (known and row[1] > unsub[0]):
                return False
        return known

    def reconcile_unsubscribed(
        self, rows: Iterable[tuple[str, datetime]], *, complete: bool = True
    ) -> tuple[int, int]:
        """Take Optimove's unsubscribe list: ``(email, unsubscribed at)`` pairs.

        With ``complete`` the list is the whole of it, so addresses no longer on it (the
        member subscribed again) are dropped. Returns (addresses now listed, dropped).
        """
        try:
            return self._reconcile(rows, complete)
        except sqlite3.Error as exc:
            raise StorageError(
                f"cannot update the opt-in register {self.path}: {exc}",
                hint="check optimove.state_dir is writable; retry when no run holds it",
            ) from None

    def _reconcile(self, rows: Iterable[tuple[str, datetime]], complete: bool) -> tuple[int, int]:
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS fetched (email TEXT PRIMARY KEY)")
        self._db.execute("DELETE FROM fetched")
        for email, as_of in rows:
            address = email.strip().lower()
            self._db.execute("INSERT OR IGNORE INTO fetched (email) VALUES (?)", (address,))
            self._db.execute(
                "INSERT INTO unsubscribed (email, as_of) VALUES (?, ?)"
                " ON CONFLICT(email) DO UPDATE SET as_of = excluded.as_of",
                (address, as_of.astimezone(UTC).isoformat()),
            )
        dropped = 0
        if complete:
            dropped = self._db.execute(
                "DELETE FROM unsubscribed WHERE email NOT IN (SELECT email FROM fetched)"
            ).rowcount
        self._db.execute("DROP TABLE fetched")
        self.commit()
        (listed,) = self._db.execute("SELECT count(*) FROM unsubscribed").fetchone()
        return int(listed), int(dropped)

    def commit(self) -> None:
        self._db.execute("COMMIT")
        self._db.execute("BEGIN")
        self._pending = 0

    def close(self) -> None:
        self._db.execute("COMMIT")
        self._db.close()


def register_path(state_dir: Path) -> Path:
    """Where the register of a config's ``optimove.state_dir`` lives."""
    return state_dir / "opt-in.sqlite3"
