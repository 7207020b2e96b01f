"""Optimove's verdicts on attribute updates and upserts, heard at the callback URL.

``UpdateCustomerAttributes`` (and ``UpsertCustomer``) answer 2xx on receipt; whether each
customer's values were taken comes later, as a POST to the call's callback URL. So before
such a call goes out, the client asks :meth:`Verdicts.register` for its URL: a random call
id and a signature over it are appended to ``optimove.callback_url``, and the call's
pending record (its endpoint, the time, and each customer's slice of the body) is written
durably under ``<dead_letter.dir>/pending-verdicts/``. Any process with the same config
(push-event sends, ``optisync serve`` hears) finds it there.

:meth:`Verdicts.handle` checks the signature, reads the verdict and turns each customer it
refuses into a dead letter of class ``rejected`` whose request is that customer's slice, so
``optisync replay`` can resend it once the cause is fixed. :meth:`Verdicts.sweep` moves
calls with no verdict after ``optimove.callback_timeout`` to ``overdue/`` and counts them.
See docs/realtime.md and docs/dead-letters.md.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Callable
from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from optisync import logs
from optisync.config.models import Config
from optisync.durable import atomic_write, ensure_private_dir, fsync_dir
from optisync.errors import StorageError
from optisync.optimove.outcome import Endpoint
from optisync.realtime.deadletter import (
    DeadLetter,
    DeadLetterStore,
    ErrorClass,
    Kind,
    LetterError,
)

__all__ = ["PendingCall", "Verdicts", "callback_key", "sign_call"]

log = logging.getLogger(__name__)

FOLDER = "pending-verdicts"
#: An overdue call is kept this long for a late verdict, then forgotten.
OVERDUE_KEEP_DAYS = 7
# Only optisync's own ids (secrets.token_urlsafe(16)) name files here: nothing an outsider
# sends reaches the file system before its signature checks out.
_CALL_ID = re.compile(r"[A-Za-z0-9_-]{22}")
# The signing key is derived from the API key, so every process holding the config agrees
# on it without a shared file, and the API key itself never appears in a URL.
_LABEL = b"optisync callback url v1"
FORMAT_VERSION = 1


def callback_key(api_key: str) -> bytes:
    """The key that signs callback URLs, derived from the API key."""
    return hmac.new(api_key.encode("utf-8"), _LABEL, hashlib.sha256).digest()


def sign_call(key: bytes, call_id: str) -> str:
    """The URL-safe signature of one call id."""
    digest = hmac.new(key, call_id.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass
class PendingCall:
    """A call whose verdict is awaited: what each of its customers was sent."""

    call_id: str
    endpoint: str
    sent_at: datetime
    customers: list[tuple[str, Any]] = field(default_factory=list)

    def to_json(self) -> bytes:
        data = {
            "format_version": FORMAT_VERSION,
            "call_id": self.call_id,
            "endpoint": self.endpoint,
            "sent_at": self.sent_at.astimezone(UTC).isoformat(),
            "customers": [{"customer_id": c, "request": r} for c, r in self.customers],
        }
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> PendingCall:
        data = json.loads(raw)
        return cls(
            call_id=str(data["call_id"]),
            endpoint=str(data["endpoint"]),
            sent_at=datetime.fromisoformat(data["sent_at"]),
            customers=[(str(c["customer_id"]), c["request"]) for c in data["customers"]],
        )


def customer_slices(endpoint: Endpoint, body: dict[str, Any]) -> list[tuple[str, Any]]:
    """Each customer of a call with the body that would update that customer alone."""
    if endpoint is Endpoint.UPSERT_CUSTOMER:
        return [(str(body.get("CustomerId")), body)] if "CustomerId" in body else []
    entries = body.get("CustomerNewAttributesValuesList")
    if not isinstance(entries, list):
        return []
    return [
        (str(entry.get("CustomerID")), {"CustomerNewAttributesValuesList": [entry]})
        for entry in entries
        if isinstance(entry, dict)
    ]


@dataclass(frozen=True)
class Refusal:
    """One entry of a verdict's ``errors``."""

    error: str
    customer_id: str | None
    field: str | None

    def describe(self) -> str:
        return f"{self.error} on {self.field}" if self.field else self.error


class Verdicts:
    """The pending calls of one dead-letter folder, and the handling of their verdicts.

    Args:
        folder: where pending records live (``<dead_letter.dir>/pending-verdicts``).
        store: where a refused customer's letter goes.
        callback_url: ``optimove.callback_url``.
        key: from :func:`callback_key`.
        timeout: seconds after which a call with no verdict is overdue.
        now: the wall clock (tests).
    """

    def __init__(
        self,
        folder: Path,
        store: DeadLetterStore,
        callback_url: str,
        key: bytes,
        timeout: float,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.folder = Path(folder)
        self.store = store
        self.callback_url = callback_url
        self.key = key
        self.timeout = timeout
        self.now = now
        self.pending_dir = self.folder / "pending"
        self.claimed_dir = self.folder / "claimed"
        self.overdue_dir = self.folder / "overdue"
        self.tmp_dir = self.folder / "tmp"
        try:
            for sub in (self.pending_dir, self.claimed_dir, self.overdue_dir, self.tmp_dir):
                ensure_private_dir(sub)
        except OSError as exc:
            raise self._storage_error("create its folders", exc) from exc

    @classmethod
    def from_config(cls, config: Config, store: DeadLetterStore | None = None) -> Verdicts | None:
        """The verdicts of ``config``, or None when no callback URL (or no API key) is set."""
        settings = config.optimove
        api_key = settings.secret("api_key")
        if not settings.callback_url or not api_key:
            return None
        letters = config.path(config.dead_letter.dir)
        return cls(
            letters / FOLDER,
            store or DeadLetterStore(letters),
            settings.callback_url,
            callback_key(api_key),
            settings.callback_timeout,
        )

    def _storage_error(self, action: str, exc: OSError) -> StorageError:
        return StorageError(
            f"cannot {action} in the pending-verdicts folder {self.folder}:"
            f" {exc.strerror or exc}",
            hint="free disk space or fix the folder's owner and permissions"
            " (it lives under dead_letter.dir)",
        )

    # -- sending side ---------------------------------------------------------------------

    def url_for(self, call_id: str) -> str:
        query = urlencode({"call": call_id, "sig": sign_call(self.key, call_id)})
        joiner = "&" if "?" in self.callback_url else "?"
        return f"{self.callback_url}{joiner}{query}"

    def register(self, endpoint: Endpoint, body: dict[str, Any]) -> tuple[str, str]:
        """Store the pending record of a call about to go out; its id and callback URL."""
        call_id = secrets.token_urlsafe(16)
        record = PendingCall(call_id, endpoint.value, self.now(), customer_slices(endpoint, body))
        try:
            path = self._path(self.pending_dir, call_id)
            atomic_write(path, record.to_json(), tmp_dir=self.tmp_dir)
        except OSError as exc:
            raise self._storage_error("store a pending call", exc) from exc
        return call_id, self.url_for(call_id)

    def discard(self, call_id: str) -> None:
        """Forget a call Optimove did not accept (its parts became letters of their own)."""
        with contextlib.suppress(FileNotFoundError):
            self._path(self.pending_dir, call_id).unlink()

    # -- receiving side -------------------------------------------------------------------

    def handle(self, params: AbcMapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        """One POST to the callback URL: its query parameters and raw body.

        Returns the HTTP status and a JSON-able answer: 200 once the verdict is recorded
        (letters written, the pending record removed); 400 for a callback without its
        parameters or with a body that is not a verdict; 403 for a signature that does not
        match (nothing is read or written); 404 for a signed call that is not pending (its
        verdict was already heard, or it was forgotten); 503 when a letter cannot be stored
        (the record stays pending, so a repeated callback can still be heard).
        """
        call_id, signature = params.get("call"), params.get("sig")
        if not call_id or not signature:
            return 400, {"error": "the callback URL lacks its call and sig parameters"}
        expected = sign_call(self.key, call_id) if _CALL_ID.fullmatch(call_id) else ""
        if not expected or not hmac.compare_digest(expected.encode(), signature.encode("utf-8")):
            log.warning("refused a callback whose signature does not match")
            return 403, {"error": "the signature does not match"}
        try:
            is_success, refusals = parse_verdict(body)
        except ValueError as exc:
            return 400, {"error": f"not a verdict: {exc}"}
        claimed = self._claim(call_id)
        if claimed is None:
            return 404, {"error": "no pending call with this id", "call": call_id}
        try:
            record = PendingCall.from_json(claimed.read_bytes())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("unreadable pending call %s: %s", call_id, exc)
            return 500, {"error": "the pending record is unreadable", "call": call_id}
        try:
            rejected, unmatched = self._settle(record, is_success, refusals)
        except StorageError:
            with contextlib.suppress(OSError):
                claimed.replace(self._path(self.pending_dir, call_id))
            return 503, {"error": "the dead-letter folder is not writable", "call": call_id}
        self._remove(claimed)
        return 200, {"call": call_id, "rejected": rejected, "unmatched": unmatched}

    def _claim(self, call_id: str) -> Path | None:
        """Take the record out of pending/ (or overdue/) so one handler alone settles it."""
        target = self._path(self.claimed_dir, call_id)
        for folder in (self.pending_dir, self.overdue_dir):
            try:
                self._path(folder, call_id).rename(target)
            except FileNotFoundError:
                continue
            return target
        return None

    def _settle(
        self, record: PendingCall, is_success: bool | None, refusals: list[Refusal]
    ) -> tuple[int, int]:
        by_customer: dict[str, list[Refusal]] = {}
        unmatched = 0
        known = {customer for customer, _ in record.customers}
        for refusal in refusals:
            if refusal.customer_id in known:
                by_customer.setdefault(refusal.customer_id, []).append(refusal)
            else:
                unmatched += 1
        if is_success is False and not refusals:
            # a failure that names no one: every customer of the call is in doubt
            by_customer = {c: [Refusal("FAILED", c, None)] for c, _ in record.customers}
        if unmatched:
            log.warning(
                "Optimove's verdict on call %s names %d customer(s) not in that call",
                record.call_id,
                unmatched,
            )
        rejected = 0
        for index, (customer, request) in enumerate(record.customers):
            found = by_customer.get(customer)
            if not found:
                continue
            reasons = "; ".join(dict.fromkeys(r.describe() for r in found))
            self.store.write(
                DeadLetter(
                    message_id=f"verdict-{record.call_id}-{index}",
                    kind=Kind.ATTRIBUTES,
                    request=request,
                    endpoint=record.endpoint,
                    error=LetterError(
                        error_class=ErrorClass.REJECTED,
                        message=f"Optimove rejected customer {customer}: {reasons}",
                    ),
                    attempts=1,
                    first_failed_at=self.now(),
                    last_failed_at=self.now(),
                    run_id=f"verdict-{record.call_id}",
                )
            )
            log.warning(
                "Optimove rejected the update of member %s: %s",
                logs.member(customer),
                reasons,
            )
            rejected += 1
        return rejected, unmatched

    def _remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(OSError):
            fsync_dir(path.parent)

    # -- calls never heard of -------------------------------------------------------------

    def sweep(self, now: datetime | None = None) -> int:
        """Move calls with no verdict after the timeout to ``overdue/``; how many moved.

        Each is logged once, as it moves. An overdue call still takes a late verdict; it is
        forgotten after :data:`OVERDUE_KEEP_DAYS`. A record left in ``claimed/`` by a
        handler that died is overdue too (its verdict may be only half recorded).
        """
        now = now or self.now()
        cutoff = now - timedelta(seconds=self.timeout)
        moved = 0
        for folder in (self.pending_dir, self.claimed_dir):
            for path, record in self._records(folder):
                sent = record.sent_at if record is not None else _mtime(path)
                if sent is None or sent >= cutoff:
                    continue
                try:
                    path.rename(self.overdue_dir / path.name)
                except FileNotFoundError:
                    continue  # its verdict arrived meanwhile
                moved += 1
                log.warning(
                    "no verdict from Optimove on call %s (%s, %d customer(s)) after %.0f s",
                    path.stem,
                    record.endpoint if record is not None else "unreadable record",
                    len(record.customers) if record is not None else 0,
                    self.timeout,
                )
        forget = now - timedelta(days=OVERDUE_KEEP_DAYS)
        for path, record in self._records(self.overdue_dir):
            sent = record.sent_at if record is not None else _mtime(path)
            if sent is not None and sent < forget:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return moved

    def counts(self) -> dict[str, int]:
        """Calls awaiting a verdict, and calls overdue (for reports and metrics)."""
        return {
            "pending": len(_names(self.pending_dir)) + len(_names(self.claimed_dir)),
            "overdue": len(_names(self.overdue_dir)),
        }

    def _records(self, folder: Path) -> list[tuple[Path, PendingCall | None]]:
        found: list[tuple[Path, PendingCall | None]] = []
        for name in _names(folder):
            path = folder / name
            try:
                found.append((path, PendingCall.from_json(path.read_bytes())))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError):
                found.append((path, None))
        return found

    def _path(self, folder: Path, call_id: str) -> Path:
        return folder / f"{call_id}.json"


def parse_verdict(body: bytes) -> tuple[bool | None, list[Refusal]]:
    """``isSuccess`` and ``errors`` of a verdict, whatever the case of their keys.

    Raises:
        ValueError: the body is not a JSON object with ``isSuccess`` or ``errors``.
    """
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(payload, dict):
        raise ValueError("the body is not a JSON object")
    fields = _lower_keys(payload)
    is_success = _boolean(fields.get("issuccess"))
    errors = fields.get("errors")
    if errors is None:
        errors = []
    if not isinstance(errors, list):
        raise ValueError("errors is not an array")
    if is_success is None and not errors:
        raise ValueError("it holds neither isSuccess nor errors")
    refusals = []
    for item in errors:
        if not isinstance(item, dict):
            raise ValueError("an entry of errors is not an object")
        entry = _lower_keys(item)
        customer = entry.get("customerid")
        name = entry.get("realfieldname")
        refusals.append(
            Refusal(
                str(entry.get("error") or "UNKNOWN")[:100],
                None if customer is None else str(customer),
                None if name is None or name == "" else str(name)[:100],
            )
        )
    return is_success, refusals


def _lower_keys(data: dict[str, Any]) -> dict[str, Any]:
    return {str(key).lower(): value for key, value in data.items()}


def _boolean(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _names(folder: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    except FileNotFoundError:
        return []


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None
