"""A fast events gateway on loopback, for benchmarks only: the yardstick of a client's speed.

    python benchmarks/loopback.py PORT API_KEY TENANT_ID

The sandbox is a ``ThreadingHTTPServer`` (a thread and a handler object per connection,
``http.server``'s header parsing per request): on a two-core machine it answers a few
thousand requests a second, so a fast client only measures the sandbox. This server keeps
each connection on one asyncio protocol, parses HTTP/1.1 requests itself and answers with
keep-alive, so that a client's speed, not the server's, sets the pace. It still checks what
matters for a count to mean something: the API key, and every body as the sandbox checks it
(``check_events_body``: the tenant, the event name, the customer, the timestamp, the
context), and counts what it accepted.

- ``POST /reportEvent``: 200 ``{"status": "success", ...}``, 400 for a bad body, 401 for a
  missing or wrong key;
- ``GET /_stats``: ``{"requests": n, "events": n, "rejected": n}``;
- ``POST /_reset``: the counts back to zero.

Not Optimove, not the sandbox: no quotas, no other endpoint, nothing recorded.
"""

from __future__ import annotations

import asyncio
import json
import sys

from optisync.sandbox.validation import check_events_body

_OK = b'{"status":"success","message":"1"}'


def _reply(status: int, body: bytes, reason: str = "OK") -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


_REPLY_OK = _reply(200, _OK)


class Stats:
    def __init__(self) -> None:
        self.requests = self.events = self.rejected = 0


class Gateway(asyncio.Protocol):
    def __init__(self, stats: Stats, key: bytes, tenant: int) -> None:
        self.stats, self.key, self.tenant = stats, key, tenant
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                break  # the body is still on its way
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, path, _ = head[0].split(" ", 2)
            out.append(self.answer(method, path, headers, body))
        if out:
            assert self.transport is not None
            self.transport.write(b"".join(out))

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        stats = self.stats
        if path == "/_stats":
            counts = {"requests": stats.requests, "events": stats.events}
            counts["rejected"] = stats.rejected
            return _reply(200, json.dumps(counts).encode())
        if path == "/_reset":
            stats.requests = stats.events = stats.rejected = 0
            return _reply(200, b"{}")
        stats.requests += 1
        if method != "POST" or path.lower() != "/reportevent":
            stats.rejected += 1
            return _reply(404, b'{"status":"error"}', "Not Found")
        if headers.get("x-api-key", "").encode() != self.key:
            stats.rejected += 1
            return _reply(401, b'{"status":"error"}', "Unauthorized")
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        problem = check_events_body(event, self.tenant, True) if event is not None else "JSON"
        if problem:
            stats.rejected += 1
            return _reply(400, json.dumps({"status": "error", "message": problem}).encode())
        stats.events += len(event) if isinstance(event, list) else 1
        return _REPLY_OK


async def serve(port: int, key: str, tenant: int) -> None:
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Gateway(stats, key.encode(), tenant), "127.0.0.1", port, backlog=128
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
