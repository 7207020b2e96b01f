"""The HTTP face of ``optisync serve`` (Starlette routes; uvicorn runs them).

``POST /v1/events`` takes one JSON event, a JSON array of them, or NDJSON; each message is
checked exactly as push-event checks a line, and the good ones are spooled durably before
the 202 names their message ids (docs/serve.md).
"""

from __future__ import annotations

import hmac
import io
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from optisync.errors import StorageError
from optisync.realtime.inputs import Record, TooDeepError, check, decode, read_ndjson
from optisync.serve.metrics import ServeMetrics
from optisync.serve.spool import Spool, SpoolFullError

log = logging.getLogger(__name__)

#: Query parameters and raw body of an Optimove callback -> status and JSON answer.
CallbackHandler = Callable[[Mapping[str, str], bytes], tuple[int, dict[str, Any]]]

RETRY_AFTER_SECONDS = 5
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


class BodyTooLargeError(Exception):
    pass


@dataclass
class ServeState:
    spool: Spool
    tokens: list[bytes]
    max_body: int
    metrics: ServeMetrics
    callback: CallbackHandler | None = None
    ready: Callable[[], bool] = field(default=lambda: True)
    accepting: bool = True


def authorized(header: str | None, tokens: list[bytes]) -> bool:
    """Whether the Authorization header carries one of ``tokens``; every token is compared
    in constant time, so timing tells nothing about any of them."""
    if not header or not tokens:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    presented = given.strip().encode("utf-8", "replace")
    found = False
    for token in tokens:
        found |= hmac.compare_digest(presented, token)
    return found


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes ``limit`` bytes (never held beyond it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(body: bytes, content_type: str) -> tuple[list[tuple[Record, bytes]], bool]:
    """Each message of ``body`` with the bytes to spool for it, and whether the body was a
    single event (one JSON object) rather than an array or NDJSON."""
    text = body.removeprefix(b"\xef\xbb\xbf")
    ndjson = content_type.split(";")[0].strip().lower() in NDJSON_TYPES
    if not ndjson:
        try:
            value = decode(text)
        except TooDeepError as exc:
            return [(Record(1, None, error=str(exc)), b"")], True
        except (ValueError, UnicodeDecodeError) as exc:
            if text.strip().count(b"\n") == 0:
                return [(Record(1, None, error=f"bad JSON: {exc}"), b"")], True
            ndjson = True  # several lines that are not one document: read them as NDJSON
        else:
            if isinstance(value, list):
                return [(check(item, i, None), _dump(item)) for i, item in enumerate(value)], False
            return [(check(value, None, None), _dump(value))], True
    lines = text.split(b"\n")
    records = read_ndjson(io.BytesIO(text), None)
    return [(record, lines[(record.line or 1) - 1]) for record in records], False


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def build_app(state: ServeState) -> Starlette:
    async def events(request: Request) -> Response:
        if not authorized(request.headers.get("authorization"), state.tokens):
            return JSONResponse(
                {"error": "unauthorized"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="optisync"'},
            )
        if not state.accepting:
            return _unavailable("shutting down")
        try:
            body = await read_limited(request, state.max_body)
        except BodyTooLargeError:
            mb = state.max_body / (1 << 20)
            return JSONResponse({"error": f"body over {mb:g} MB"}, status_code=413)
        if not body.strip():
            return JSONResponse({"error": "empty body"}, status_code=400)
        if state.spool.full():
            return _unavailable("spool full")
        items, single = await run_in_threadpool(
            parse_body, body, request.headers.get("content-type", "")
        )
        good = [(r, raw) for r, raw in items if r.envelope is not None]
        state.metrics.invalid.inc(len(items) - len(good))
        if single and not good:
            return JSONResponse({"error": items[0][0].error or "invalid"}, status_code=400)
        if good:
            try:
                await run_in_threadpool(state.spool.put, [raw for _, raw in good])
            except SpoolFullError:
                return _unavailable("spool full")
            except StorageError as exc:
                log.error("%s", exc.message)
                return JSONResponse({"error": "cannot store the messages"}, status_code=500)
            state.metrics.received.inc(len(good))
        if single:
            envelope = good[0][0].envelope
            assert envelope is not None
            return JSONResponse({"accepted": 1, "ids": [envelope.message_id]}, status_code=202)
        results: list[dict[str, Any]] = []
        for index, (record, _) in enumerate(items):
            if record.envelope is not None:
                results.append(
                    {"index": index, "status": "accepted", "id": record.envelope.message_id}
                )
            else:
                results.append({"index": index, "status": "invalid", "error": record.error})
        return JSONResponse(
            {"accepted": len(good), "invalid": len(items) - len(good), "results": results},
            status_code=202 if good else 400,
        )

    async def callback(request: Request) -> Response:
        if state.callback is None:
            return JSONResponse({"error": "no callback handler configured"}, status_code=404)
        try:
            body = await read_limited(request, state.max_body)
        except BodyTooLargeError:
            return JSONResponse({"error": "body too large"}, status_code=413)
        status, answer = await run_in_threadpool(state.callback, dict(request.query_params), body)
        return JSONResponse(answer, status_code=status)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        problems = []
        if not state.accepting:
            problems.append("shutting down")
        if not state.spool.writable():
            problems.append("spool not writable")
        if state.spool.full():
            problems.append("spool full")
        if not state.ready():
            problems.append("delivery not running")
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(request: Request) -> Response:
        state.metrics.spool_bytes.set(state.spool.size)
        state.metrics.spooled.set(state.spool.messages)
        return Response(
            state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return Starlette(
        routes=[
            Route("/v1/events", events, methods=["POST"]),
            Route("/v1/optimove/callback", callback, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


def _unavailable(reason: str) -> Response:
    return JSONResponse(
        {"error": reason}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )
