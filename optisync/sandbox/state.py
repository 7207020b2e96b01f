"""Configuration and the HTTP-free core of the sandbox: routing, auth, limits, faults, state.

``SandboxState.handle`` turns one request (method, path, a header getter, raw body) into a
``Reply``. The HTTP layer in ``server.py`` only reads requests and writes replies, so the whole
behaviour lives here behind one lock.

Authentication, as Optimove documents it:

* Every REST path and every ``/_sandbox/...`` inspection path needs the ``X-API-KEY`` header
  (name case-insensitive): missing -> 401, wrong -> 403.
* The events gateway (``/reportEvent``) is authenticated in one of two ways:

  - ``events_token`` is ``None``: exactly like REST, ``X-API-KEY`` is required (401/403).
  - ``events_token`` is set: the HMAC signature is the credential. The request must carry
    ``X-Optimove-Signature-Version: 1`` and ``X-Optimove-Signature-Content`` = hex
    HMAC-SHA256 of the exact raw body keyed with the token, else 401. ``X-API-KEY`` may be
    omitted; if it is sent it must be right (403 otherwise).

Order of checks for every non-inspection request: injected latency, injected drop, injected
503, injected 429 burst, 404 unknown path, 405 wrong method, auth, rate limit, JSON parsing,
validation, processing; then, if drawn, the response is lost after processing. Inspection
paths skip faults and rate limits and are not counted in ``stats``.

Neither the API key nor the events token is ever recorded or echoed: records hold only the
path and the parsed JSON body.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import parse_qs, urlsplit

from optisync.durable import is_symlink_error, open_private
from optisync.errors import StorageError
from optisync.sandbox import validation as v
from optisync.sandbox.catalog import Catalog

KINDS = (
    "events",
    "attributes",
    "transactional",
    "promotions",
    "unsubscribe",
    "resubscribe",
    "customers",
)
"""Kinds of accepted (recorded) requests, as returned in ``received()`` records."""

RATE_LIMIT_BODY = {
    "status": 429,
    "error": "Too Many Requests",
    "message": "You have exceeded the rate limit for this API group",
}
DUPLICATE_ERROR = "Request for this UniqueMessageID has succeeded before"
EVENT_ERROR_PREFIX = "Failed to validate the event with the following error - "

HeaderGetter = Callable[[str], str | None]
Action = Literal["reply", "drop", "lost"]


def _check_rate(name: str, value: float, *, upper: float | None = 1.0) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    if value < 0 or (upper is not None and value > upper):
        bound = f"between 0 and {upper}" if upper is not None else ">= 0"
        raise ValueError(f"{name} must be {bound}, got {value}")


@dataclass
class Faults:
    """Faults to inject; rates are probabilities per request, drawn from ``Random(seed)``."""

    error_rate: float = 0.0  # probability of a 503 before processing
    burst_429: float = 0.0  # probability a request starts a 429 burst
    burst_length: int = 5  # consecutive 429s in a burst (including the first)
    latency_ms: float = 0.0  # added to every response
    drop_rate: float = 0.0  # close the connection without answering, BEFORE processing
    lost_response_rate: float = 0.0  # process the request, then close without answering
    slow_rate: float = 0.0  # process the request, then answer only after slow_ms
    slow_ms: float = 0.0  # past the client's read timeout, this is a timeout after processing
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("error_rate", "burst_429", "drop_rate", "lost_response_rate", "slow_rate"):
            _check_rate(name, getattr(self, name))
        _check_rate("latency_ms", self.latency_ms, upper=None)
        _check_rate("slow_ms", self.slow_ms, upper=None)
        if isinstance(self.burst_length, bool) or not isinstance(self.burst_length, int):
            raise ValueError("burst_length must be an integer")
        if self.burst_length < 1:
            raise ValueError(f"burst_length must be >= 1, got {self.burst_length}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError("seed must be an integer or null")

    @property
    def active(self) -> bool:
        """True when any fault other than latency can happen (random draws are needed)."""
        return any(
            (
                self.error_rate,
                self.burst_429,
                self.drop_rate,
                self.lost_response_rate,
                self.slow_rate,
            )
        )


def _check_limit(name: str, limit: tuple[int, float] | None) -> None:
    if limit is None:
        return
    count, window = limit
    if count < 1 or window <= 0:
        raise ValueError(f"{name} must be (requests >= 1, seconds > 0), got {limit}")


@dataclass
class SandboxConfig:
    """What the sandbox accepts; see the module docstring for the auth rules."""

    api_key: str  # required X-API-KEY; missing -> 401, wrong -> 403
    tenant_id: int = 0  # events must carry this tenant
    events_token: str | None = None  # when set, events must carry a valid HMAC signature
    enforce_limits: bool = True  # rate limits + payload caps
    rate_limit: tuple[int, float] = (50, 10.0)  # general REST: requests per sliding window
    transactional_rate_limit: tuple[int, float] = (10, 1.0)  # SendTransactionalMail's own
    events_rate_limit: tuple[int, float] | None = None  # events gateway: unlimited unless set
    templates: dict[int, frozenset[str]] | None = None  # TemplateID -> tags; None = any id
    faults: Faults = field(default_factory=Faults)
    record_path: Path | None = None  # when set, append every accepted request as JSON line
    keep_received: int | None = None  # keep only the last N accepted requests; None = all
    catalog: Catalog | None = None  # the account's attributes and template details
    # Recorded requests hold member data: other machines may connect only when asked for.
    allow_remote: bool = False
    socket_timeout: float = 30.0  # seconds a connection may sit idle or trickle bytes
    max_connections: int = 256  # open connections at once; more are answered 503 and closed
    # Customers that exist before any is created (UpsertCustomer, InsertOrUpdateCustomers);
    # the verdict on an attribute update names every other one INVALID_CUSTOMER.
    customers: frozenset[str] = frozenset()
    callback_delay: float = 0.05  # seconds between an attribute update and its verdict

    def __post_init__(self) -> None:
        if not isinstance(self.api_key, str) or not self.api_key:
            raise ValueError("api_key must be a non-empty string")
        if not self.socket_timeout > 0:
            raise ValueError(f"socket_timeout must be > 0, got {self.socket_timeout}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")
        if self.events_token is not None and not self.events_token:
            raise ValueError("events_token must be non-empty when set")
        _check_limit("rate_limit", self.rate_limit)
        _check_limit("transactional_rate_limit", self.transactional_rate_limit)
        _check_limit("events_rate_limit", self.events_rate_limit)

    def __repr__(self) -> str:  # never show secrets in tracebacks or logs
        return (
            f"SandboxConfig(api_key='***', tenant_id={self.tenant_id}, "
            f"events_token={'***' if self.events_token else None}, "
            f"enforce_limits={self.enforce_limits}, faults={self.faults!r})"
        )


@dataclass(frozen=True)
class Reply:
    """One HTTP answer, or an instruction to close the connection without one."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    action: Action = "reply"


DROP = Reply(0, action="drop")


_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _json(status: int, payload: object, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, _ENCODER.encode(payload).encode(), headers=headers)


def _text(status: int, message: str) -> Reply:
    return Reply(status, message.encode(), content_type="text/plain; charset=utf-8")


def _event_error(status: int, reason: str) -> Reply:
    return _json(status, {"status": "error", "message": EVENT_ERROR_PREFIX + reason})


def _mail(status: int, success: bool, send_id: int | None, error: str | None) -> Reply:
    return _json(status, {"IsSuccess": success, "SendID": send_id, "Error": error})


def _status_error(status: int, message: str) -> Reply:
    return _json(status, {"status": status, "error": HTTPStatus(status).phrase, "message": message})


class BadJSONError(ValueError):
    pass


def _reject_constant(name: str) -> object:
    raise BadJSONError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json(raw: bytes) -> Any:
    """Strict UTF-8 JSON (no NaN/Infinity); raises ``BadJSONError`` with a plain reason."""
    if not raw.strip():
        raise BadJSONError("the request body is empty")
    try:
        return _DECODER.decode(raw.decode("utf-8"))
    except BadJSONError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadJSONError(str(exc)) from None


@dataclass(frozen=True)
class Route:
    method: str
    name: str  # handler suffix: SandboxState._do_<name>
    group: Literal["general", "transactional", "events"]


ROUTES: dict[str, Route] = {
    "/reportevent": Route("POST", "report_event", "events"),
    "/customers/updatecustomerattributes": Route("POST", "update_attributes", "general"),
    "/customers/upsertcustomer": Route("PUT", "upsert_customer", "general"),
    "/customers/insertorupdatecustomers": Route("PUT", "insert_or_update", "general"),
    "/transactionalmail/sendtransactionalmail": Route("POST", "transactional", "transactional"),
    "/integrations/addpromotions": Route("POST", "add_promotions", "general"),
    "/integrations/getpromotions": Route("GET", "get_promotions", "general"),
    "/integrations/deletepromotions": Route("POST", "delete_promotions", "general"),
    "/optimail/addunsubscribers": Route("POST", "add_unsubscribers", "general"),
    "/optimail/deleteunsubscribers": Route("POST", "delete_unsubscribers", "general"),
    "/optimail/getunsubscribers": Route("GET", "get_unsubscribers", "general"),
    "/model/getcustomerattributelist": Route("GET", "get_attribute_list", "general"),
    "/transactionalmail/gettemplatedetails": Route("GET", "get_template_details", "general"),
}
INSPECTION: dict[str, frozenset[str]] = {
    "/_sandbox/received": frozenset({"GET"}),
    "/_sandbox/stats": frozenset({"GET"}),
    "/_sandbox/reset": frozenset({"POST"}),
    "/_sandbox/faults": frozenset({"GET", "POST"}),
}
STAT_KEYS = (
    "requests",
    "accepted",
    "events",
    *(f"accepted_{kind}" for kind in KINDS),
    "rate_limited_429",
    "faults_429",
    "faults_503",
    "dropped",
    "lost_responses",
    "slow_responses",
    "duplicates_409",
    "partial_206",
    "invalid_template",
    "bad_request_400",
    "unauthorized_401",
    "forbidden_403",
    "not_found_404",
    "method_not_allowed_405",
    "callbacks_sent",
    "callbacks_failed",
    "callbacks_refused",
)


def normalize_path(path: str) -> str:
    """Lower-case, drop a trailing slash and an optional leading ``/current``."""
    norm = path.lower().rstrip("/") or "/"
    if norm.startswith("/current/"):
        norm = norm[len("/current") :]
    return norm


def _open_record(path: Path) -> IO[str]:
    """The --record file: appended to, created 0600, never written through a planted link."""
    try:
        fd = open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except OSError as exc:
        if is_symlink_error(exc):
            raise StorageError(
                f"the record file {path} is a symbolic link; refusing to follow it",
                hint="record to a regular file: remove the link or choose another --record",
            ) from exc
        raise
    return os.fdopen(fd, "a", encoding="utf-8")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class SandboxState:
    """All mutable sandbox state behind one lock; ``handle`` is safe to call from threads."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._record_file: IO[str] | None = None
        if config.record_path is not None:
            self._record_file = _open_record(config.record_path)
        self._ids = itertools.count(1)
        self._clear()
        self._set_faults(config.faults)

    # -- state management ---------------------------------------------------------------

    def _clear(self) -> None:
        self._stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        # a long benchmark run would otherwise hold every body it ever accepted
        self._received: deque[dict[str, Any]] = deque(maxlen=self.config.keep_received)
        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._sent_ids: set[str] = set()
        self._promotions: dict[str, dict[str, str]] = {}
        self._unsubscribers: dict[tuple[int, str], dict[str, str]] = {}
        self._send_ids = itertools.count(1)
        self._customers: set[str] = set(self.config.customers)

    def _set_faults(self, faults: Faults) -> None:
        self._faults = faults
        self._rng = random.Random(faults.seed)
        self._burst_left = 0

    def set_faults(self, faults: Faults) -> None:
        """Replace the faults and restart the random sequence from ``faults.seed``."""
        with self._lock:
            self._set_faults(faults)

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def reset(self) -> None:
        """Forget records, counters, windows, promotions, unsubscribers and sent message ids.

        Faults stay as configured; their random sequence restarts from the seed. The JSONL
        record file (if any) is an append-only log and is not truncated.
        """
        with self._lock:
            self._clear()
            self._set_faults(self._faults)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def received(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            records = [r for r in self._received if kind is None or r["kind"] == kind]
            return copy.deepcopy(records)

    def close(self) -> None:
        with self._lock:
            if self._record_file is not None:
                self._record_file.close()
                self._record_file = None

    # -- request handling ---------------------------------------------------------------

    def handle(self, method: str, target: str, header: HeaderGetter, raw: bytes) -> Reply:
        """Answer one request; never raises for bad input."""
        parts = urlsplit(target)
        path = normalize_path(parts.path)
        if path in INSPECTION:
            return self._inspect(method, path, parts.query, header, raw)

        with self._lock:
            self._stats["requests"] += 1
            fault, lost = self._draw_faults()
            latency = self._faults.latency_ms
            slow = 0.0
            # drawn only when asked for, so older seeded sequences stay as they were
            if (
                fault is None
                and not lost
                and self._faults.slow_rate
                and self._rng.random() < self._faults.slow_rate
            ):
                slow = self._faults.slow_ms
        if latency:
            time.sleep(latency / 1000.0)
        if fault is not None:
            return fault

        route = ROUTES.get(path)
        if route is None:
            return self._count(_status_error(404, f"No endpoint at {parts.path}"), "not_found_404")
        if method != route.method:
            reply = _status_error(405, "Method Not Allowed")
            reply = Reply(reply.status, reply.body, headers=(("Allow", route.method),))
            return self._count(reply, "method_not_allowed_405")

        identity, denied = self._authenticate(route, header, raw)
        if denied is not None:
            return denied
        limit = self._limit_for(route)
        if limit is not None and not self._admit(identity, route.group, limit):
            return self._count(_json(429, RATE_LIMIT_BODY), "rate_limited_429")

        body: Any = None
        if method in ("POST", "PUT"):
            try:
                body = parse_json(raw)
            except BadJSONError as exc:
                reason = f"Malformed JSON: {exc}"
                reply = _event_error(400, reason) if route.group == "events" else _text(400, reason)
                return self._count(reply, "bad_request_400")
        handler: Callable[[str, str, Any], Reply] = getattr(self, f"_do_{route.name}")
        reply = handler(parts.path, parts.query, body)
        if slow:
            with self._lock:
                self._stats["slow_responses"] += 1
            time.sleep(slow / 1000.0)
        if lost:
            with self._lock:
                self._stats["lost_responses"] += 1
            return Reply(0, action="lost")
        return reply

    def _count(self, reply: Reply, stat: str) -> Reply:
        with self._lock:
            self._stats[stat] += 1
        return reply

    def _draw_faults(self) -> tuple[Reply | None, bool]:
        """Decide this request's injected fault (lock held). Four draws whenever active."""
        faults = self._faults
        if not faults.active:
            return None, False
        r_drop, r_error, r_burst, r_lost = (self._rng.random() for _ in range(4))
        lost = r_lost < faults.lost_response_rate
        if r_drop < faults.drop_rate:
            self._stats["dropped"] += 1
            return DROP, False
        if r_error < faults.error_rate:
            self._stats["faults_503"] += 1
            return _status_error(503, "Service temporarily unavailable (sandbox fault)"), False
        if self._burst_left > 0:
            self._burst_left -= 1
            self._stats["faults_429"] += 1
            return _json(429, RATE_LIMIT_BODY), False
        if r_burst < faults.burst_429:
            self._burst_left = faults.burst_length - 1
            self._stats["faults_429"] += 1
            return _json(429, RATE_LIMIT_BODY), False
        return None, lost

    def _key_check(self, header: HeaderGetter) -> Reply | None:
        key = header("X-API-KEY")
        if key is None or key == "":
            return self._count(
                _status_error(401, "The X-API-KEY header is missing"), "unauthorized_401"
            )
        if not hmac.compare_digest(key.encode(), self.config.api_key.encode()):
            return self._count(_status_error(403, "The API key is invalid"), "forbidden_403")
        return None

    def _authenticate(
        self, route: Route, header: HeaderGetter, raw: bytes
    ) -> tuple[str, Reply | None]:
        token = self.config.events_token
        if route.group != "events" or token is None:
            return "api-key", self._key_check(header)
        if header("X-API-KEY") is not None:
            denied = self._key_check(header)
            if denied is not None:
                return "", denied
        version = header("X-Optimove-Signature-Version")
        signature = (header("X-Optimove-Signature-Content") or "").strip().lower()
        expected = hmac.new(token.encode(), raw, hashlib.sha256).hexdigest()
        if version is None or version.strip() != "1" or not signature:
            reason = "Missing or unsupported X-Optimove-Signature headers"
        elif not hmac.compare_digest(signature.encode(), expected.encode()):
            reason = "Invalid X-Optimove-Signature-Content"
        else:
            return "events-hmac", None
        return "", self._count(
            _json(401, {"status": "error", "message": reason}), "unauthorized_401"
        )

    def _limit_for(self, route: Route) -> tuple[int, float] | None:
        if not self.config.enforce_limits:
            return None
        if route.group == "transactional":
            return self.config.transactional_rate_limit
        if route.group == "events":
            return self.config.events_rate_limit
        return self.config.rate_limit

    def _admit(self, identity: str, group: str, limit: tuple[int, float]) -> bool:
        count, window = limit
        now = time.monotonic()
        with self._lock:
            stamps = self._windows.setdefault((identity, group), deque())
            while stamps and stamps[0] <= now - window:
                stamps.popleft()
            if len(stamps) >= count:
                return False
            stamps.append(now)
            return True

    def _record(self, kind: str, path: str, body: Any, **extra: Any) -> None:
        """Store one accepted request (lock held)."""
        record: dict[str, Any] = {"kind": kind, "path": path, "body": body, "at": _now_iso()}
        record.update(extra)
        self._received.append(record)
        self._stats["accepted"] += 1
        self._stats[f"accepted_{kind}"] += 1
        if self._record_file is not None:
            self._record_file.write(_ENCODER.encode(record) + "\n")
            self._record_file.flush()

    # -- endpoints -----------------------------------------------------------------------

    def _do_report_event(self, path: str, query: str, body: Any) -> Reply:
        problem = v.check_events_body(body, self.config.tenant_id, self.config.enforce_limits)
        if problem:
            return self._count(_event_error(400, problem), "bad_request_400")
        with self._lock:
            self._record("events", path, body)
            self._stats["events"] += len(body) if isinstance(body, list) else 1
            event_id = next(self._ids)
        return _json(200, {"status": "success", "message": str(event_id)})

    def _do_update_attributes(self, path: str, query: str, body: Any) -> Reply:
        problem = v.check_update_attributes(body, self.config.enforce_limits)
        if problem:
            return self._count(_text(400, problem), "bad_request_400")
        request_id = str(uuid.uuid4())
        with self._lock:
            self._record("attributes", path, body, request_id=request_id)
            callback = body.get("CallbackURL")
            if callback:
                errors = [
                    error
                    for entry in body["CustomerNewAttributesValuesList"]
                    for error in self._refusals(str(entry["CustomerID"]), entry["Attributes"])
                ]
        if callback:
            self._send_verdict(callback, request_id, errors)
        return _json(202, {"requestId": request_id})

    def _refusals(
        self, customer: str, attributes: list[dict[str, Any]], *, creating: bool = False
    ) -> list[dict[str, str]]:
        """What Optimove's verdict says of one customer's update (lock held): unknown
        customers and attributes the account lacks (when the catalog lists them)."""
        errors = []
        known = self.config.catalog.attributes if self.config.catalog else None
        for attribute in attributes:
            name = str(attribute["RealFieldName"])
            if not creating and customer not in self._customers:
                error = "INVALID_CUSTOMER"
            elif known is not None and name not in known:
                error = "INVALID_FIELD"
            else:
                continue
            errors.append({"error": error, "customerId": customer, "realFieldName": name})
        return errors

    def _send_verdict(self, url: str, request_id: str, errors: list[dict[str, str]]) -> None:
        """POST the verdict to the call's callback URL a little later, as Optimove does."""
        from optisync.config.models import is_loopback_host

        host = urlsplit(url).hostname
        if not self.config.allow_remote and not is_loopback_host(host):
            # the verdict names members: it goes to other machines only when asked for
            self._count(Reply(0), "callbacks_refused")
            return
        verdict: dict[str, Any] = {"isSuccess": not errors, "requestId": request_id}
        if errors:
            verdict["errors"] = errors
        timer = threading.Timer(self.config.callback_delay, self._post_verdict, (url, verdict))
        timer.daemon = True
        timer.start()

    def _post_verdict(self, url: str, verdict: dict[str, Any]) -> None:
        import httpx

        try:
            response = httpx.post(url, json=verdict, timeout=10.0, trust_env=False)
            ok = response.is_success
        except httpx.HTTPError:
            ok = False
        self._count(Reply(0), "callbacks_sent" if ok else "callbacks_failed")

    def _do_upsert_customer(self, path: str, query: str, body: Any) -> Reply:
        problem = v.check_upsert_customer(body)
        if problem:
            return self._count(_json(400, {"errors": [{"error": problem}]}), "bad_request_400")
        customer = str(body["CustomerId"])
        request_id = str(uuid.uuid4())
        with self._lock:
            errors = self._refusals(customer, body.get("Attributes") or [], creating=True)
            self._customers.add(customer)
            self._record("customers", path, body, request_id=request_id)
        callback = body.get("CallbackUrl")
        if callback:
            self._send_verdict(callback, request_id, errors)
        if errors:
            return _json(200, {"requestId": request_id, "errors": errors})
        return _json(200, {"requestId": request_id})

    def _do_insert_or_update(self, path: str, query: str, body: Any) -> Reply:
        problem = v.check_insert_or_update(body, self.config.enforce_limits)
        if problem:
            return self._count(_text(400, problem), "bad_request_400")
        with self._lock:
            self._customers.update(str(c["CustomerId"]) for c in body["Customers"])
            self._record("customers", path, body)
        return Reply(202)

    def _do_transactional(self, path: str, query: str, body: Any) -> Reply:
        problem = v.check_transactional(body, self.config.enforce_limits)
        if problem:
            return self._count(_mail(400, False, None, problem), "bad_request_400")
        unique = body.get("UniqueMessageID")
        templates = self.config.templates
        with self._lock:
            if unique is not None and unique in self._sent_ids:
                self._stats["duplicates_409"] += 1
                return _mail(409, False, None, DUPLICATE_ERROR)
            if templates is not None and body["TemplateID"] not in templates:
                self._stats["invalid_template"] += 1
                return _mail(200, False, None, "Invalid template")
            missing = v.missing_tags(body, templates[body["TemplateID"]]) if templates else []
            send_id = next(self._send_ids)
            if unique is not None:
                self._sent_ids.add(unique)
            status = 206 if missing else 200
            self._record(
                "transactional",
                path,
                body,
                unique_message_id=unique,
                send_id=send_id,
                status=status,
            )
            if not missing:
                return _mail(200, True, send_id, None)
            self._stats["partial_206"] += 1
        error = "Missing personalization tags: " + "; ".join(missing)
        return _mail(206, True, send_id, error)

    def _do_add_promotions(self, path: str, query: str, body: Any) -> Reply:
        problem = v.check_promotions(body, self.config.enforce_limits, need_name=True)
        if problem:
            return self._count(_text(400, problem), "bad_request_400")
        with self._lock:
            for promo in body:
                code = str(promo["PromoCode"])
                self._promotions[code] = {
                    "PromoCode": code,
                    "PromotionName": promo["PromotionName"],
                }
            self._record("promotions", path, body)
        return Reply(200)

    def _do_delete_promotions(self, path: str, query: str, body: Any) -> Reply:
        problem = v.check_promotions(body, self.config.enforce_limits, need_name=False)
        if problem:
            return self._count(_text(400, problem), "bad_request_400")
        with self._lock:
            for promo in body:
                self._promotions.pop(str(promo["PromoCode"]), None)
            self._record("promotions", path, body)
        return Reply(200)

    def _do_get_promotions(self, path: str, query: str, body: Any) -> Reply:
        with self._lock:
            promotions = list(self._promotions.values())
        return _json(200, promotions)

    def _do_add_unsubscribers(self, path: str, query: str, body: Any) -> Reply:
        problem = v.check_add_unsubscribers(body, self.config.enforce_limits)
        if problem:
            return self._count(_json(400, {"Error": problem}), "bad_request_400")
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        brand = body["BrandId"]
        with self._lock:
            for email in body["EmailAddresses"]:
                self._unsubscribers.setdefault(
                    (brand, email.lower()), {"Email": email, "UnsubscribedTime": stamp}
                )
            self._record("unsubscribe", path, body)
        return _json(200, {"Error": None})

    def _do_delete_unsubscribers(self, path: str, query: str, body: Any) -> Reply:
        problem = v.check_delete_unsubscriber(body)
        if problem:
            return self._count(_json(400, {"Error": problem}), "bad_request_400")
        with self._lock:
            self._unsubscribers.pop((body["BrandId"], body["EmailAddress"].lower()), None)
            self._record("resubscribe", path, body)
        return _json(200, {"Error": None})

    def _do_get_unsubscribers(self, path: str, query: str, body: Any) -> Reply:
        params = {k.lower(): vals[-1] for k, vals in parse_qs(query).items()}
        try:
            brand = int(params["brandid"]) if "brandid" in params else None
            skip = int(params.get("$skip", "0"))
        except ValueError:
            return self._count(_text(400, "BrandID and $skip must be integers"), "bad_request_400")
        start, end = params.get("startdate"), params.get("enddate")
        with self._lock:
            rows = [
                dict(row)
                for (row_brand, _), row in self._unsubscribers.items()
                if brand is None or row_brand == brand
            ]
        if start:
            rows = [r for r in rows if r["UnsubscribedTime"][:10] >= start]
        if end:
            rows = [r for r in rows if r["UnsubscribedTime"][:10] <= end]
        return _json(200, rows[max(skip, 0) : max(skip, 0) + 10_000])

    def _do_get_attribute_list(self, path: str, query: str, body: Any) -> Reply:
        catalog = self.config.catalog or Catalog()
        return _json(200, catalog.attribute_list())

    def _do_get_template_details(self, path: str, query: str, body: Any) -> Reply:
        if self.config.catalog is not None:
            return _json(200, self.config.catalog.template_details())
        known = self.config.templates or {}
        return _json(
            200,
            [
                {
                    "TemplateID": tid,
                    "TemplateName": f"template {tid}",
                    "TemplateContent": "",
                    "TemplateAttributes": sorted(tags),
                }
                for tid, tags in sorted(known.items())
            ],
        )

    # -- inspection ----------------------------------------------------------------------

    def _inspect(
        self, method: str, path: str, query: str, header: HeaderGetter, raw: bytes
    ) -> Reply:
        if method not in INSPECTION[path]:
            return Reply(
                405,
                b'{"error":"Method Not Allowed"}',
                headers=(("Allow", ", ".join(sorted(INSPECTION[path]))),),
            )
        key = header("X-API-KEY")
        if not key:
            return _status_error(401, "The X-API-KEY header is missing")
        if not hmac.compare_digest(key.encode(), self.config.api_key.encode()):
            return _status_error(403, "The API key is invalid")
        if path == "/_sandbox/received":
            kinds = parse_qs(query).get("kind")
            kind = kinds[-1] if kinds else None
            if kind is not None and kind not in KINDS:
                return _text(400, f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
            return _json(200, self.received(kind))
        if path == "/_sandbox/stats":
            return _json(200, self.stats())
        if path == "/_sandbox/reset":
            self.reset()
            return _json(200, {"status": "reset"})
        if method == "GET":
            return _json(200, asdict(self.faults))
        return self._post_faults(raw)

    def _post_faults(self, raw: bytes) -> Reply:
        try:
            body = parse_json(raw)
        except BadJSONError as exc:
            return _text(400, f"Malformed JSON: {exc}")
        known = {f.name for f in fields(Faults)}
        if not isinstance(body, dict) or set(body) - known:
            return _text(400, f"body must be an object with fields among {sorted(known)}")
        try:
            faults = Faults(**body)
        except ValueError as exc:
            return _text(400, str(exc))
        self.set_faults(faults)
        return _json(200, asdict(faults))
