"""What became of a request: the single HTTP classifier and the ``Delivery`` result.

Every answer the client gets goes through :func:`classify`, so "what counts as delivered,
retriable or fatal" is decided in exactly one place.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Final, Literal

import httpx

# "invalid" is the client's own verdict, never an answer's: the body was not sent (it holds
# a card number, or a value JSON cannot carry).
OutcomeKind = Literal[
    "delivered", "duplicate", "partial", "rate_limited", "transient", "fatal", "auth", "invalid"
]

#: Outcomes that are worth another attempt.
RETRYABLE: Final = frozenset({"rate_limited", "transient"})
#: Outcomes that mean Optimove has the message.
ACCEPTED: Final = frozenset({"delivered", "duplicate", "partial"})

#: How much of Optimove's error text is kept.
ERROR_TEXT_LIMIT: Final = 500

# JSON keys Optimove (and its gateways) use for an error text, most specific first.
_ERROR_KEYS: Final = ("Error", "message", "Message", "error", "errorMsg", "detail", "title")


class Endpoint(StrEnum):
    """The Optimove calls optisync makes; the value is the REST path (or ``events``)."""

    EVENTS = "events"
    UPDATE_CUSTOMER_ATTRIBUTES = "/Customers/UpdateCustomerAttributes"
    # customer creation (PUT): one customer with its verdict's callback, or up to 1,000
    UPSERT_CUSTOMER = "/Customers/UpsertCustomer"
    INSERT_OR_UPDATE_CUSTOMERS = "/Customers/InsertOrUpdateCustomers"
    SEND_TRANSACTIONAL_MAIL = "/TransactionalMail/SendTransactionalMail"
    ADD_PROMOTIONS = "/Integrations/AddPromotions"
    ADD_UNSUBSCRIBERS = "/Optimail/AddUnsubscribers"
    DELETE_UNSUBSCRIBERS = "/Optimail/DeleteUnsubscribers"
    # read-only calls (GET), for checking a config against the account
    GET_CUSTOMER_ATTRIBUTE_LIST = "/current/model/GetCustomerAttributeList"
    GET_TEMPLATE_DETAILS = "/current/transactionalmail/GetTemplateDetails"
    GET_UNSUBSCRIBERS = "/current/optimail/GetUnsubscribers"


#: Calls sent with PUT; every other send is a POST.
PUT_ENDPOINTS: Final = frozenset({Endpoint.UPSERT_CUSTOMER, Endpoint.INSERT_OR_UPDATE_CUSTOMERS})

#: Calls whose outcome Optimove reports later to a callback URL, and the body field that
#: carries it (the two endpoints spell it differently).
CALLBACK_FIELDS: Final = {
    Endpoint.UPDATE_CUSTOMER_ATTRIBUTES: "CallbackURL",
    Endpoint.UPSERT_CUSTOMER: "CallbackUrl",
}

# UpsertCustomer answers input errors in the body of a 2xx, as an ``errors`` array.
_ERRORS_IN_BODY: Final = ("/customers/upsertcustomer", "/customers/insertorupdatecustomers")


@dataclass(frozen=True)
class Outcome:
    """The verdict on one HTTP response (or one transport failure)."""

    kind: OutcomeKind
    status: int | None
    error: str | None = None
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


@dataclass(frozen=True)
class Delivery:
    """The final result of one message after all attempts.

    ``ok`` is true when Optimove has the message: ``delivered``, ``duplicate`` (a repeated
    UniqueMessageID that succeeded before) or ``partial`` (transactional 206: sent, but
    template tags were missing; ``error`` names them). Otherwise ``outcome`` says why, with
    ``error`` holding Optimove's error text (never headers or secrets).

    ``body`` is the exact request body sent (for dead letters and replay); it is kept out of
    ``repr`` because it holds member data.
    """

    ok: bool
    status: int | None
    outcome: OutcomeKind
    error: str | None
    attempts: int
    endpoint: str
    body: bytes = field(repr=False)

    @property
    def warning(self) -> str | None:
        """The text to warn about when the message was accepted with a remark."""
        return self.error if self.ok else None

    def json_body(self) -> object:
        """The request body, decoded."""
        return json.loads(self.body)


def is_transactional(response: httpx.Response) -> bool:
    """Whether the request was a transactional-mail call (206/409/IsSuccess rules)."""
    try:
        path = response.request.url.path
    except RuntimeError:  # a Response built without a request
        return False
    return "/transactionalmail/" in path.lower()


def errors_in_body(response: httpx.Response) -> bool:
    """Whether the request was a customer-creation call (input errors come in a 2xx body)."""
    try:
        path = response.request.url.path
    except RuntimeError:
        return False
    return path.lower().endswith(_ERRORS_IN_BODY)


def classify(
    response: httpx.Response,
    *,
    transactional: bool | None = None,
    now: datetime | None = None,
) -> Outcome:
    """Sort an Optimove response into one :data:`OutcomeKind`.

    * 2xx → ``delivered``, except: a JSON body saying ``IsSuccess: false`` or
      ``status: "error"`` (event gateway validation), or carrying a non-empty ``Error``
      without an ``IsSuccess`` verdict (AddUnsubscribers ``"Invalid email"``) → ``fatal``;
      transactional 206 → ``partial`` with the text naming the missing tags; a
      customer-creation call whose body holds a non-empty ``errors`` array → ``fatal``.
    * transactional 409 (repeated UniqueMessageID) → ``duplicate``.
    * 401/403 → ``auth``; 429 → ``rate_limited``; 408 and 5xx → ``transient``.
    * any other status (other 4xx, unexpected 1xx/3xx) → ``fatal``.

    Args:
        response: a response whose body has been read.
        transactional: whether this was a transactional-mail call; by default taken from
            the request path.
        now: the current time for an HTTP-date ``Retry-After`` (tests).
    """
    if transactional is None:
        transactional = is_transactional(response)
    status = response.status_code
    payload = _json_or_none(response)  # once: each answer's body is parsed a single time
    text = _text_of(response, payload)

    if 200 <= status < 300:
        if isinstance(payload, dict):
            if payload.get("IsSuccess") is False or _is_error_status(payload.get("status")):
                return Outcome("fatal", status, text or f"HTTP {status} reported failure")
            if transactional and status == 206:
                return Outcome("partial", status, text)
            if (
                "IsSuccess" not in payload
                and isinstance(payload.get("Error"), str)
                and payload["Error"].strip()
            ):
                return Outcome("fatal", status, text)
            if errors_in_body(response) and _has_errors(payload):
                return Outcome("fatal", status, text or f"HTTP {status} reported errors")
        if transactional and status == 206:
            return Outcome("partial", status, text)
        return Outcome("delivered", status, None)

    fallback = text or f"HTTP {status} {response.reason_phrase}".strip()
    if status == 409 and transactional:
        return Outcome("duplicate", status, fallback)
    if status in (401, 403):
        return Outcome("auth", status, fallback)
    if status == 429:
        return Outcome("rate_limited", status, fallback, parse_retry_after(response, now=now))
    if status == 408 or 500 <= status < 600:
        return Outcome("transient", status, fallback, parse_retry_after(response, now=now))
    return Outcome("fatal", status, fallback)


def classify_exception(exc: httpx.TransportError) -> Outcome:
    """Sort a transport failure: network trouble is ``transient``, a bad request ``fatal``."""
    name = type(exc).__name__
    # httpx messages name the failure (and at most host/port), never headers or bodies.
    text = f"{name}: {exc}" if str(exc) else name
    text = text[:ERROR_TEXT_LIMIT]
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        # Our own request is malformed (bad URL scheme, bad header): retrying cannot help.
        return Outcome("fatal", None, text)
    # Timeouts, connect/read/write errors, RemoteProtocolError (server closed without
    # answering), proxy errors.
    return Outcome("transient", None, text)


def error_text(response: httpx.Response) -> str | None:
    """Optimove's error text from the body (JSON ``Error``/``message``/…, or plain text).

    Truncated to :data:`ERROR_TEXT_LIMIT` characters; ``None`` for an empty body.
    """
    return _text_of(response, _json_or_none(response))


def _text_of(response: httpx.Response, payload: object) -> str | None:
    text: str | None
    if isinstance(payload, dict):
        text = None
        for key in _ERROR_KEYS:
            value = payload.get(key)
            if isinstance(value, str) and value.strip():
                text = value.strip()
                break
        if text is None:
            errors = payload.get("errors")
            if errors:
                text = json.dumps(errors, ensure_ascii=False, separators=(",", ":"))
    elif isinstance(payload, str):
        text = payload.strip() or None
    elif payload is not None:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    else:
        try:
            text = response.text.strip() or None
        except UnicodeDecodeError:
            text = None
    if text is not None and len(text) > ERROR_TEXT_LIMIT:
        text = text[: ERROR_TEXT_LIMIT - 1] + "…"
    return text


def parse_retry_after(response: httpx.Response, *, now: datetime | None = None) -> float | None:
    """Seconds from a positive ``Retry-After`` (delta-seconds or HTTP-date), else ``None``."""
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


def _json_or_none(response: httpx.Response) -> object:
    if not response.content:
        return None
    try:
        return json.loads(response.content)
    except ValueError:  # includes JSONDecodeError and UnicodeDecodeError
        return None


def _has_errors(payload: dict[str, object]) -> bool:
    for key, value in payload.items():
        if key.lower() == "errors" and isinstance(value, list) and value:
            return True
        if key.lower() == "issuccess" and value is False:
            return True
    return False


def _is_error_status(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower() == "error"
