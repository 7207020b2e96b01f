"""HTTP for the Optimove client: the environment honoured exactly as httpx honours it.

Two ways to send, chosen when the client is built:

- When the environment names a proxy (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` or their
  lowercase forms, read by ``urllib.request.getproxies`` as httpx reads them), requests go
  through an ``httpx.Client(trust_env=True)``. httpx itself then picks the proxy for each URL,
  bypasses it for the hosts in ``NO_PROXY``, and verifies certificates as below.
- Otherwise no proxy can apply, and :class:`KeepAliveTransport` sends directly. httpx's own
  transport (httpcore + h11) costs about 0.5 ms of CPU per request in pure Python; on a
  machine whose other core runs the receiving end, that CPU is the ceiling of a real-time
  push. This one does the same job (keep-alive connections, timeouts, certificate
  verification) at a fraction of the cost, and maps every failure onto httpx's exception
  classes so retries and classification are unchanged. Its TLS context is httpx's:
  ``httpx.create_ssl_context()``, which trusts ``SSL_CERT_FILE`` if set, else
  ``SSL_CERT_DIR``, else certifi's bundle (httpx does not read ``REQUESTS_CA_BUNDLE``, so
  neither does optisync).

Either way the request's ``timeout`` extension (connect, read) applies.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from typing import Any
from urllib.request import getproxies

import httpx

from optisync.errors import ConfigError


def environment_names_a_proxy() -> bool:
    """Whether the environment names a proxy for a scheme httpx proxies (http, https, all).

    ``NO_PROXY`` is left to httpx, which applies it URL by URL.
    """
    proxies = getproxies()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


class _OneWrite:
    """http.client writes a request's header block and its body with two send() calls:
    two system calls, and a receiver woken twice. Set ``body`` before ``endheaders()`` and
    the header block and the body leave in one write."""

    body: bytes | None = None

    def send(self, data: Any) -> None:
        body, self.body = self.body, None
        if body is not None:
            data = bytes(data) + body
        super().send(data)  # type: ignore[misc]


class _HTTPConnection(_OneWrite, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_OneWrite, http.client.HTTPSConnection):
    pass


_Connection = _HTTPConnection | _HTTPSConnection


class KeepAliveTransport(httpx.BaseTransport):
    """Direct HTTP/1.1 on http.client: one keep-alive connection per thread and origin
    (http.client connections are not thread-safe, and the client's thread pool is small)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[_Connection] = []
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def _tls_context(self) -> ssl.SSLContext:
        # httpx builds its context with the transport; this one waits for the first https
        # connection, so plain-http runs never pay for loading a CA bundle. The environment
        # is read then, by httpx's own function.
        with self._lock:
            if self._tls is None:
                self._tls = httpx.create_ssl_context()
            return self._tls

    def _connection(self, url: httpx.URL, timeout: float | None) -> _Connection:
        pool: dict[tuple[str, str, int], _Connection] = getattr(self._local, "pool", None) or {}
        self._local.pool = pool
        port = url.port or (443 if url.scheme == "https" else 80)
        key = (url.scheme, url.host, port)
        conn: _Connection | None = pool.get(key)
        if conn is None:
            if url.scheme == "https":
                conn = _HTTPSConnection(
                    url.host, port, timeout=timeout, context=self._tls_context()
                )
            else:
                conn = _HTTPConnection(url.host, port, timeout=timeout)
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
            # what conn.request() does, with the body handed over to leave with the headers
            names = {k.lower() for k in headers}
            conn.putrequest(
                request.method,
                target,
                skip_host="host" in names,
                skip_accept_encoding="accept-encoding" in names,
            )
            if "content-length" not in names and "transfer-encoding" not in names:
                conn.putheader("Content-Length", str(len(body)))
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.body = body or None
            conn.endheaders()
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


class EnvironmentTransport(httpx.BaseTransport):
    """httpx with ``trust_env``: each request through the proxy the environment names for
    its URL, or directly when ``NO_PROXY`` covers it. Redirects are not followed."""

    def __init__(self, connections: int = 4) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        try:
            self._client = httpx.Client(trust_env=True, limits=limits, follow_redirects=False)
        except (ValueError, ImportError) as exc:
            # httpx refuses a proxy scheme it cannot speak (socks without socksio, ftp...)
            raise ConfigError(
                f"the proxy named in the environment cannot be used: {exc}",
                hint="check HTTP_PROXY, HTTPS_PROXY and ALL_PROXY (and their lowercase forms)",
            ) from None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._client.send(request)

    def close(self) -> None:
        self._client.close()


def default_transport(connections: int = 4) -> httpx.BaseTransport:
    """The lean transport, unless the environment names a proxy: then httpx's own routing."""
    if environment_names_a_proxy():
        return EnvironmentTransport(connections)
    return KeepAliveTransport()
