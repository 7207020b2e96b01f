"""The Optimove client: transport, auth, signing, rate limits, retries, endpoints."""

from __future__ import annotations

from optisync.optimove.client import (
    Body,
    OptimoveAuthError,
    OptimoveClient,
    encode_body,
    sign_body,
)
from optisync.optimove.formats import batch_datetime, timestamp_for_optimove
from optisync.optimove.outcome import (
    Delivery,
    Endpoint,
    Outcome,
    OutcomeKind,
    classify,
    classify_exception,
    error_text,
    parse_retry_after,
)
from optisync.optimove.ratelimit import Limiter, Permit, RateLimiter, UnlimitedLimiter

__all__ = [
    "Body",
    "Delivery",
    "Endpoint",
    "Limiter",
    "OptimoveAuthError",
    "OptimoveClient",
    "Outcome",
    "OutcomeKind",
    "Permit",
    "RateLimiter",
    "UnlimitedLimiter",
    "batch_datetime",
    "classify",
    "classify_exception",
    "encode_body",
    "error_text",
    "parse_retry_after",
    "sign_body",
    "timestamp_for_optimove",
]
