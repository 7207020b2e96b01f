"""A lean keep-alive HTTP/1.1 transport for httpx, on the standard library's http.client.

httpx's default transport (httpcore + h11) costs about 0.5 ms of CPU per request in pure
Python; on a machine whose other core runs the receiving end, that CPU is the ceiling of a
real-time push. This transport does the same job — keep-alive connections, timeouts,
certificate verification against certifi's bundle — at a fraction of the cost, and maps every
failure onto httpx's exception classes so retries and classification are unchanged.

One connection per thread and origin: http.client connections are not thread-safe, and the
client's thread pool is small. Proxies are not supported here; ``default_transport()`` falls
back to httpx's own transport when a proxy is configured in the environment.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import threading
from functools import cache

import httpx

_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")


@cache
def _tls_context() -> ssl.SSLContext:
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class KeepAliveTransport(httpx.BaseTransport):
    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self, url: httpx.URL, timeout: float | None) -> http.client.HTTPConnection:
        pool: dict[tuple[str, str, int], http.client.HTTPConnection] = (
            getattr(self._local, "pool", None) or {}
        )
        self._local.pool = pool
        port = url.port or (443 if url.scheme == "https" else 80)
        key = (url.scheme, url.host, port)
        conn = pool.get(key)
        if conn is None:
            if url.scheme == "https":
                conn = http.client.HTTPSConnection(
                    url.host, port, timeout=timeout, context=_tls_context()
                )
            else:
                conn = http.client.HTTPConnection(url.host, port, timeout=timeout)
            pool[key] = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _forget(self, url: httpx.URL) -> None:
        pool = getattr(self._local, "pool", {})
        port = url.port or (443 if url.scheme == "https" else 80)
        conn = pool.pop((url.scheme, url.host, port), None)
        if conn is not None:
            conn.close()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        connect_timeout = timeouts.get("connect")
        read_timeout = timeouts.get("read")
        url = request.url
        conn = self._connection(url, connect_timeout)
        target = url.raw_path.decode("ascii")
        body = request.read()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw}
        headers.pop("Host", None)
        headers.pop("host", None)
        connecting = conn.sock is None
        try:
            if connecting:
                conn.timeout = connect_timeout
                conn.connect()
                connecting = False
                assert conn.sock is not None
                # http.client writes the headers and the body separately: without
                # TCP_NODELAY, Nagle's algorithm holds the body until the peer's delayed
                # ACK (40 ms or more per request).
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assert conn.sock is not None
            conn.sock.settimeout(read_timeout)
            conn.request(request.method, target, body=body, headers=headers)
            response = conn.getresponse()
            content = response.read()
        except TimeoutError as exc:
            self._forget(url)
            raise (httpx.ConnectTimeout if connecting else httpx.ReadTimeout)(
                str(exc) or "timed out", request=request
            ) from exc
        except (ConnectionRefusedError, socket.gaierror) as exc:
            self._forget(url)
            raise httpx.ConnectError(str(exc), request=request) from exc
        except ssl.SSLError as exc:
            self._forget(url)
            raise httpx.ConnectError(f"TLS: {exc}", request=request) from exc
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            # the server closed the connection without (a whole) answer
            self._forget(url)
            raise httpx.RemoteProtocolError(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                request=request,
            ) from exc
        if response.will_close:
            self._forget(url)
        return httpx.Response(
            response.status,
            headers=[(k, v) for k, v in response.getheaders() if k.lower() != "transfer-encoding"],
            content=content,
            request=request,
        )

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def default_transport(connections: int = 4) -> httpx.BaseTransport:
    """The lean transport, unless a proxy is configured: then httpx's own, through it."""
    proxy = next((os.environ[n] for n in _PROXY_VARS if os.environ.get(n)), None)
    if proxy:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.HTTPTransport(proxy=proxy, limits=limits)
    return KeepAliveTransport()
