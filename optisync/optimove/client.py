"""The Optimove client: one keep-alive connection pool, auth, signing, rate limits, retries.

:meth:`OptimoveClient.send` takes an endpoint and an already-built JSON body and returns a
:class:`Delivery`; the endpoint decides the URL, the credential and the rate limit.
Every body is checked for card numbers here, whoever built it (push-event, replay of a
stored letter, any target): one that holds one, or that JSON cannot carry (NaN,
Infinity), is not sent and comes back as outcome ``invalid``, which the caller keeps as a
letter like any other invalid part.

HTTP outcomes never raise, with one exception: when Optimove rejects the credentials
(401/403) the client raises :class:`OptimoveAuthError` (an :class:`optisync.errors.AuthError`,
exit code 5) carrying the failed ``Delivery``. A bad key fails every later message too, so
it must stop the run rather than be counted as one undelivered message; the caller
dead-letters ``exc.delivery`` and everything not yet sent.

When retries run out the ``Delivery`` comes back with ``ok=False`` and outcome
``transient`` or ``rate_limited``; deciding what that means for the run (dead letter,
exit 6) is the caller's job.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import httpx

from optisync import __version__
from optisync.cards import find_card_numbers, may_hold_card
from optisync.errors import AuthError, ConfigError
from optisync.optimove import limits
from optisync.optimove.outcome import (
    ACCEPTED,
    CALLBACK_FIELDS,
    PUT_ENDPOINTS,
    Delivery,
    Endpoint,
    Outcome,
    classify,
    classify_exception,
)
from optisync.optimove.ratelimit import AllOf, Limiter, RateLimiter, UnlimitedLimiter
from optisync.redact import redact, register

if TYPE_CHECKING:
    from typing import Self

    from tenacity import RetryCallState

    from optisync.config.models import OptimoveSettings

log = logging.getLogger("optisync.optimove")

#: A request body: JSON-able data, or bytes already serialized (e.g. from a dead letter).
Body = dict[str, Any] | list[Any] | bytes

#: The unsubscribe endpoints' own caps, as (quota group, requests, window) of the one
#: rate-limit algorithm: the calls a minute, and the calls in flight (a permit counts while
#: in flight and one window after; a window of a millisecond leaves the calls in flight).
UNSUBSCRIBE_QUOTAS = (
    ("unsubscribe-parallel", limits.UNSUBSCRIBE_PARALLEL, 0.001),
    ("unsubscribe", limits.UNSUBSCRIBE_REQUESTS, limits.UNSUBSCRIBE_WINDOW_SECONDS),
)
UNSUBSCRIBE_ENDPOINTS = frozenset(
    {Endpoint.ADD_UNSUBSCRIBERS, Endpoint.DELETE_UNSUBSCRIBERS, Endpoint.GET_UNSUBSCRIBERS}
)

SIGNATURE_VERSION_HEADER = "X-Optimove-Signature-Version"
SIGNATURE_CONTENT_HEADER = "X-Optimove-Signature-Content"


class Callbacks(Protocol):
    """Where Optimove should report the verdict on a call, and the record that lets it be
    matched: ``register`` stores the pending call durably and returns its id and the URL to
    put in the body; ``discard`` forgets a call that Optimove did not accept."""

    def register(self, endpoint: Endpoint, body: dict[str, Any]) -> tuple[str, str]: ...

    def discard(self, call_id: str) -> None: ...


class OptimoveAuthError(AuthError):
    """Optimove rejected the API key or events token (401/403); ``delivery`` is the failed send."""

    def __init__(self, message: str, *, delivery: Delivery, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.delivery = delivery

    @classmethod
    def from_delivery(cls, delivery: Delivery, events_auth: str = "token") -> OptimoveAuthError:
        """``events_auth`` (the setting) says which credential the events host was given."""
        hint = "check {}: it may be wrong, revoked, or lack rights for this call"
        if delivery.endpoint != Endpoint.EVENTS:
            credential, hint = "API key", hint.format("optimove.api_key")
        elif events_auth == "api_key_header":
            credential = "API key in X-API-KEY"
            hint = hint.format("optimove.api_key") + (
                ", or the events host may want the events token (optimove.events_auth: token)"
            )
        elif events_auth == "none":
            credential = "unauthenticated request"
            hint = (
                "optimove.events_auth is none, but the events host wants a credential: set"
                " optimove.events_token with events_auth: token"
            )
        else:
            credential, hint = "events token", hint.format("optimove.events_token")
        message = (
            f"Optimove refused the {credential} (HTTP {delivery.status}) on {delivery.endpoint}"
        )
        if delivery.error:
            message += f": {delivery.error}"
        return cls(message, delivery=delivery, hint=hint)


def encode_body(body: Body) -> bytes:
    """Serialize a body once: compact UTF-8 JSON, non-ASCII kept as is; bytes pass through.

    Raises:
        ValueError: for NaN/Infinity, which JSON cannot carry.
        TypeError: for values JSON cannot represent.
    """
    if isinstance(body, bytes):
        return body
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
        "utf-8"
    )


def card_refusal(content: bytes) -> str | None:
    """Why ``content`` (a JSON body) must not be sent, or None: it holds a card number.

    The reason names the paths (card numbers in them masked), never the number.
    """
    if not may_hold_card(content):
        return None
    try:
        value = json.loads(content)
    except ValueError:
        return "the body is not JSON; it cannot be checked for card numbers, so it is not sent"
    except RecursionError:
        return "the body is nested too deeply to be checked for card numbers, so it is not sent"
    paths = [p for p in find_card_numbers(value) if not _generated_id(value, p)]
    if not paths:
        return None
    return f"{', '.join(paths)}: holds a card-number-like value; such messages are never sent"


# The idempotency key optisync derives from a hash (realtime.plan, realtime.batching): its
# 40 hex digits hold a Luhn-valid run of 13+ digits by chance now and then, and it carries
# no member data. Only that exact shape is let through.
_GENERATED_ID = re.compile(r"optisync-(?:b[0-9]+-)?[0-9a-f]{40}")


def _generated_id(value: Any, path: str) -> bool:
    if path != "UniqueMessageID" or not isinstance(value, dict):
        return False
    unique = value.get("UniqueMessageID")
    return isinstance(unique, str) and _GENERATED_ID.fullmatch(unique) is not None


def sign_body(content: bytes, token: str) -> str:
    """Hex HMAC-SHA256 of the exact request bytes keyed by the events token."""
    return hmac.new(token.encode("utf-8"), content, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class _Route:
    endpoint: Endpoint
    url: str
    limiter: Limiter
    transactional: bool = False
    method: str = "POST"


@dataclass(frozen=True)
class Fetched:
    """The result of a GET: how it went, and the decoded JSON when it went well."""

    delivery: Delivery
    data: Any


class OptimoveClient:
    """Client for Optimove's REST API and the server-side events gateway.

    Safe to share between the threads of a small pool. Use it as a context manager, or
    call :meth:`close`.

    Args:
        settings: the ``optimove`` config section.
        transport: httpx transport (tests pass ``httpx.MockTransport``).
        sleep: what rate limiting and retry backoff wait with (tests record it).
        clock: monotonic clock for rate limiting and the retry time budget.
        general_limiter, transactional_limiter, events_limiter: override the limiters
            built from ``settings`` (e.g. with one shared between processes).
        callbacks: when given, every call in ``CALLBACK_FIELDS`` carries a callback URL
            from it (any URL already in the body is replaced: a replayed body gets its own).
        unsubscribe_limiter: overrides the unsubscribe endpoints' own caps (built from
            :data:`UNSUBSCRIBE_QUOTAS`); those calls take the general quota as well.
    """

    def __init__(
        self,
        settings: OptimoveSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        general_limiter: Limiter | None = None,
        transactional_limiter: Limiter | None = None,
        events_limiter: Limiter | None = None,
        callbacks: Callbacks | None = None,
        unsubscribe_limiter: Limiter | None = None,
    ) -> None:
        self._settings = settings
        self._callbacks = callbacks
        self._sleep = sleep
        self._clock = clock
        self._api_url = settings.api_url.rstrip("/")
        self._general = general_limiter or RateLimiter.from_config(
            settings.rate_limit, clock=clock, sleep=sleep
        )
        self._transactional = transactional_limiter or RateLimiter.from_config(
            settings.transactional_rate_limit, clock=clock, sleep=sleep
        )
        if events_limiter is not None:
            self._events: Limiter = events_limiter
        elif settings.events_rate_limit is not None:
            self._events = RateLimiter.from_config(
                settings.events_rate_limit, clock=clock, sleep=sleep
            )
        else:
            self._events = UnlimitedLimiter()
        own = unsubscribe_limiter or AllOf(
            *(RateLimiter(n, per, clock=clock, sleep=sleep) for _, n, per in UNSUBSCRIBE_QUOTAS)
        )
        self._unsubscribe = AllOf(own, self._general)
        self._secrets = [
            s.get_secret_value()
            for s in (settings.api_key, settings.events_token)
            if s is not None and s.get_secret_value()
        ]
        register(*self._secrets)
        if transport is None:
            from optisync.optimove.transport import default_transport

            transport = default_transport(settings.concurrency)
        # The transport is driven directly (an httpx.Client only behind a proxy): the client
        # layer's URL merging, cookie jar and redirect logic cost more CPU per request than
        # the HTTP exchange, and optisync needs none of them. Redirects are never followed,
        # so the key stays home.
        self._transport = transport
        self._timeout = {
            "connect": settings.timeouts.connect,
            "read": settings.timeouts.read,
            "write": settings.timeouts.read,
            "pool": settings.timeouts.connect,
        }
        self._base_headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"optisync/{__version__}",
        }
        self._urls: dict[str, httpx.URL] = {}
        self._closed = False
        # Told of every attempt: its endpoint, the seconds spent waiting for a rate-limit
        # permit, and its outcome (a long-running service counts 429s and waits from it).
        self.observer: Callable[[Endpoint, float, Outcome], None] | None = None

    # -- the one send path -----------------------------------------------------------------

    def send(self, endpoint: Endpoint | str, body: Body) -> Delivery:
        """Send ``body`` to ``endpoint`` with rate limiting and retries.

        Events go to ``events_url`` with what ``events_auth`` names: by default signed with
        HMAC-SHA256 of the exact bytes sent, keyed by ``events_token``; REST calls carry
        the API key. SendTransactionalMail has its
        own rate limit: 206 there is ``partial`` (sent; ``error`` names missing tags), 409
        ``duplicate``, and ``IsSuccess: false`` ``fatal``.

        Raises:
            ValueError: ``endpoint`` is not an :class:`Endpoint` value.
            ConfigError: the URL or credential this endpoint needs is not configured.
            OptimoveAuthError: Optimove answered 401/403.
        """
        route = self._route(Endpoint(endpoint))
        refused: str | None
        try:
            content = encode_body(body)
        except (ValueError, TypeError, RecursionError) as exc:
            # NaN/Infinity (a 1e999 that slipped past decoding, an edited letter): this one
            # body is refused, never the run
            content, refused = b"", f"the body cannot be sent as JSON: {exc}"
        else:
            refused = card_refusal(content)
        if refused is not None:
            log.warning("not sent to %s: %s", route.endpoint.value, refused)
            return Delivery(
                ok=False,
                status=None,
                outcome="invalid",
                error=refused,
                attempts=0,
                endpoint=route.endpoint.value,
                body=content,
            )
        # after the card check: the URL's random id and signature are ours, not member data
        call_id: str | None = None
        if self._callbacks is not None and route.endpoint in CALLBACK_FIELDS:
            content, call_id = self._with_callback(route.endpoint, content)
        try:
            delivery = self._exchange(route, content)
        except BaseException:
            self._discard(call_id)
            raise
        if not delivery.ok:
            # the part becomes a letter of its own; no verdict is awaited for it
            self._discard(call_id)
        return delivery

    def _with_callback(self, endpoint: Endpoint, content: bytes) -> tuple[bytes, str | None]:
        assert self._callbacks is not None
        try:
            payload = json.loads(content)
        except ValueError:
            return content, None  # Optimove will refuse it; there is nothing to await
        if not isinstance(payload, dict):
            return content, None
        for name in list(payload):
            if name.lower() == "callbackurl":
                del payload[name]
        call_id, url = self._callbacks.register(endpoint, payload)
        payload[CALLBACK_FIELDS[endpoint]] = url
        return encode_body(payload), call_id

    def _discard(self, call_id: str | None) -> None:
        if call_id is not None and self._callbacks is not None:
            self._callbacks.discard(call_id)

    def fetch(
        self, endpoint: Endpoint | str, params: dict[str, str | int] | None = None
    ) -> Fetched:
        """GET a read-only ``endpoint`` with the API key, the general quota and retries.

        ``data`` is the decoded JSON answer when ``delivery.ok``, else ``None``.

        Raises:
            ConfigError: the API key is not configured.
            OptimoveAuthError: Optimove answered 401/403.
        """
        route = self._route(Endpoint(endpoint))
        url = route.url
        if params:
            from urllib.parse import urlencode

            url += "?" + urlencode(params, safe="$")
        route = _Route(route.endpoint, url, route.limiter, method="GET")
        answers: list[bytes] = []
        delivery = self._exchange(route, b"", answers)
        data: Any = None
        if delivery.ok:
            try:
                data = json.loads(answers[-1]) if answers and answers[-1].strip() else None
            except ValueError:
                delivery = Delivery(
                    ok=False,
                    status=delivery.status,
                    outcome="fatal",
                    error="the answer is not JSON",
                    attempts=delivery.attempts,
                    endpoint=delivery.endpoint,
                    body=b"",
                )
        return Fetched(delivery, data)

    def _exchange(
        self, route: _Route, content: bytes, answers: list[bytes] | None = None
    ) -> Delivery:
        """Attempt ``content`` on ``route`` under its limiter, retrying what may be retried;
        ``answers`` collects each attempt's response body. The one attempt-and-retry
        sequence of every call, sent (POST) or fetched (GET).

        Raises:
            ConfigError: the credential the route needs is not configured.
            OptimoveAuthError: Optimove answered 401/403.
        """
        headers = self._headers(route, content)
        started = self._clock()
        # Most calls succeed first time: only a retryable answer pays for tenacity.
        first = self._attempt(route, content, headers, answers)
        outcome, attempts = first, 1
        if first.retryable and self._settings.retry.max_attempts > 1:
            outcome, attempts = self._retry(route, content, headers, first, started, answers)
        delivery = Delivery(
            ok=outcome.kind in ACCEPTED,
            status=outcome.status,
            outcome=outcome.kind,
            error=self._redact(outcome.error),
            attempts=attempts,
            endpoint=route.endpoint.value,
            body=content,
        )
        if delivery.outcome == "auth":
            raise OptimoveAuthError.from_delivery(delivery, self._settings.events_auth)
        return delivery

    def _retry(
        self,
        route: _Route,
        content: bytes,
        headers: dict[str, str],
        first: Outcome,
        started: float,
        answers: list[bytes] | None = None,
    ) -> tuple[Outcome, int]:
        from tenacity import Retrying, retry_if_result, wait_random_exponential

        policy = self._settings.retry
        attempts = 0

        def attempt() -> Outcome:
            nonlocal attempts
            attempts += 1
            return first if attempts == 1 else self._attempt(route, content, headers, answers)

        jitter = wait_random_exponential(multiplier=policy.base_delay, max=policy.max_delay)

        def wait(state: RetryCallState) -> float:
            last = _outcome_of(state)
            if policy.respect_retry_after and last.retry_after is not None:
                return min(last.retry_after, policy.max_delay)
            return float(jitter(state))

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= policy.max_attempts:
                return True
            elapsed = self._clock() - started
            return elapsed + state.upcoming_sleep > policy.max_total_seconds

        def log_retry(state: RetryCallState) -> None:
            last = _outcome_of(state)
            # A status, or the transport error's class name (its message stays out of logs).
            cause = str(last.status) if last.status is not None else (last.error or "error")
            cause = cause.split(":", 1)[0]
            log.info(
                "retry %d/%d in %.1fs after %s on %s",
                state.attempt_number + 1,
                policy.max_attempts,
                state.upcoming_sleep,
                cause,
                route.endpoint.value,
            )

        retrying = Retrying(
            sleep=self._sleep,
            stop=stop,
            wait=wait,
            retry=retry_if_result(lambda o: isinstance(o, Outcome) and o.retryable),
            before_sleep=log_retry,
            retry_error_callback=_outcome_of,
        )
        outcome: Outcome = retrying(attempt)
        return outcome, attempts

    def _attempt(
        self,
        route: _Route,
        content: bytes,
        headers: dict[str, str],
        answers: list[bytes] | None = None,
    ) -> Outcome:
        asked = self._clock()
        # The permit is held until the answer is in, so the limiter can count from then.
        with route.limiter.acquire():
            waited = self._clock() - asked
            try:
                response = self._post(route.url, content, headers, route.method)
            except httpx.TransportError as exc:
                outcome = classify_exception(exc)
                if self.observer is not None:
                    self.observer(route.endpoint, waited, outcome)
                return outcome
        if answers is not None:
            answers.append(response.content)
        outcome = classify(response, transactional=route.transactional)
        if self.observer is not None:
            self.observer(route.endpoint, waited, outcome)
        return outcome

    def _post(
        self, url: str, content: bytes, headers: dict[str, str], method: str = "POST"
    ) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the Optimove client is closed")
        target = self._urls.get(url)
        if target is None:
            target = self._urls[url] = httpx.URL(url)
        request = httpx.Request(
            method,
            target,
            headers={**self._base_headers, **headers},
            content=content,
            extensions={"timeout": self._timeout},
        )
        response = self._transport.handle_request(request)
        try:
            response.read()
        finally:
            response.close()
        return response

    def _route(self, endpoint: Endpoint) -> _Route:
        if endpoint is Endpoint.EVENTS:
            if not self._settings.events_url:
                raise ConfigError(
                    "optimove.events_url is not set; it is needed to report events",
                    hint="set it to the events endpoint Optimove gave you at onboarding",
                )
            return _Route(endpoint, self._settings.events_url, self._events)
        limiter = self._general
        transactional = endpoint is Endpoint.SEND_TRANSACTIONAL_MAIL
        if transactional:
            limiter = self._transactional
        elif endpoint in UNSUBSCRIBE_ENDPOINTS:
            limiter = self._unsubscribe
        method = "PUT" if endpoint in PUT_ENDPOINTS else "POST"
        return _Route(endpoint, self._api_url + endpoint.value, limiter, transactional, method)

    def _headers(self, route: _Route, content: bytes) -> dict[str, str]:
        if route.endpoint is Endpoint.EVENTS and self._settings.events_auth != "api_key_header":
            # the API key never goes to the events host unless the config says it takes it
            if self._settings.events_auth == "none":
                return {}
            token = self._settings.events_token
            if token is None or not token.get_secret_value():
                raise ConfigError(
                    "optimove.events_token is not set; it is needed to sign events",
                    hint="set optimove.events_token or events_token_file, or say what the"
                    " events host takes with optimove.events_auth",
                )
            return {
                SIGNATURE_VERSION_HEADER: "1",
                SIGNATURE_CONTENT_HEADER: sign_body(content, token.get_secret_value()),
            }
        key = self._settings.api_key
        if key is None or not key.get_secret_value():
            raise ConfigError(
                f"optimove.api_key is not set; it is needed for {route.endpoint.value}",
                hint="set optimove.api_key (or its environment variable)",
            )
        return {"X-API-KEY": key.get_secret_value()}

    def _redact(self, text: str | None) -> str | None:
        return None if text is None else redact(text)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections."""
        self._closed = True
        self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        events = urlsplit(self._settings.events_url).netloc if self._settings.events_url else None
        return f"OptimoveClient(api_url={self._api_url!r}, events_host={events!r})"


def _outcome_of(state: RetryCallState) -> Outcome:
    assert state.outcome is not None  # tenacity only calls back after an attempt
    result = state.outcome.result()
    assert isinstance(result, Outcome)
    return result
