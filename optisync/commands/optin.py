"""``optisync optin sync``: bring Optimove's unsubscribe list into the local opt-in register.

Members can unsubscribe in Optimove (an OptiMail unsubscribe link), where optisync never
hears of it; the triggered templates optisync sends itself (``delivery: api``) would then
still mail them. The list is read in pages of 10,000 (``$skip``) and, read whole, replaces
what the register held of it, so an address that subscribed again is dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optisync.config import load_config
from optisync.errors import ConfigError, RefusedError
from optisync.optimove.outcome import Endpoint

if TYPE_CHECKING:
    from optisync.commands.realtime import ClientFactory

#: Rows in one page of GetUnsubscribers.
PAGE_SIZE = 10_000


@dataclass
class OptInSyncSummary:
    brand_id: int
    since: date | None
    dry_run: bool
    fetched: int = 0
    pages: int = 0
    listed: int = 0
    dropped: int = 0
    duration_seconds: float = 0.0
    command: str = "optin sync"

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "brand_id": self.brand_id,
            "since": self.since.isoformat() if self.since else None,
            "dry_run": self.dry_run,
            "fetched": self.fetched,
            "pages": self.pages,
            "listed": self.listed,
            "dropped": self.dropped,
            "duration_seconds": round(self.duration_seconds, 3),
        }


def sync_unsubscribers(
    path: Path | None,
    *,
    brand_id: int | None = None,
    since: date | None = None,
    dry_run: bool = False,
    client_factory: ClientFactory | None = None,
) -> OptInSyncSummary:
    """Read the brand's unsubscribers from Optimove and reconcile the register with them.

    Without ``since`` the whole list is read and addresses no longer on it are dropped;
    with it, only addresses unsubscribed since then are added.

    Raises:
        ConfigError: no brand is given or configured.
        OptimoveAuthError, RefusedError: Optimove refused (exit 5).
        UnavailableError: Optimove did not answer (exit 6).
        StorageError: the register cannot be written (exit 6).
    """
    from optisync.commands.account import read
    from optisync.commands.realtime import build_client

    started = time.monotonic()
    config = load_config(path, need=("api_key",))
    brand = brand_id if brand_id is not None else config.optimove.opt_in.brand_id
    if brand is None:
        raise ConfigError(
            "optin sync needs the OptiMail brand of the unsubscribe list",
            hint="set optimove.opt_in.brand_id, or pass --brand-id",
        )
    summary = OptInSyncSummary(brand, since, dry_run)
    rows: list[tuple[str, datetime]] = []
    params: dict[str, Any] = {"BrandID": brand}
    if since is not None:
        params["StartDate"] = since.isoformat()
        params["EndDate"] = datetime.now(UTC).date().isoformat()
    skip = 0
    with (client_factory or build_client)(config) as client:
        while True:
            page = read(client, config, Endpoint.GET_UNSUBSCRIBERS, {**params, "$skip": skip})
            if not isinstance(page, list):
                raise RefusedError("GetUnsubscribers did not answer a list")
            summary.pages += 1
            skip += len(page)
            rows.extend(row for item in page if (row := _row(item)) is not None)
            if len(page) < PAGE_SIZE:
                break
    summary.fetched = len(rows)
    if not dry_run:
        from optisync.realtime.optin import OptInRegister, register_path

        register = OptInRegister(register_path(config.path(config.optimove.state_dir)))
        try:
            summary.listed, summary.dropped = register.reconcile_unsubscribed(
                rows, complete=since is None
            )
        finally:
            register.close()
    summary.duration_seconds = time.monotonic() - started
    return summary


def _row(item: Any) -> tuple[str, datetime] | None:
    if not isinstance(item, dict):
        return None
    email = item.get("Email")
    if not isinstance(email, str) or "@" not in email:
        return None
    when = item.get("UnsubscribedTime")
    try:
        at = datetime.fromisoformat(str(when).replace("Z", "+00:00"))
    except ValueError:
        # an unreadable time must not let a newer local opt-in win over the unsubscribe
        at = datetime.now(UTC)
    return email, at if at.tzinfo else at.replace(tzinfo=UTC)
