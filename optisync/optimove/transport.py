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


# Limits on an answer's head, as http.client sets them: a line, and the header lines.
_MAX_LINE = 65536
_MAX_HEADERS = 100
# An answer is read whole into memory: Optimove's are a few kilobytes of JSON, so a length
# past this is a broken or hostile server, refused before anything is allocated for it.
_MAX_BODY = 64 * 1024 * 1024
_HEX = frozenset(b"0123456789abcdefABCDEF")


class _ProtocolError(Exception):
    """The answer is not HTTP/1.1 optisync can read, or was cut short."""


class _Connection:
    """One keep-alive connection: its socket, and a buffered reader kept for its life, so
    an answer's head is read in one system call, not one per line."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb")

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def _head(request: httpx.Request, body: bytes) -> bytes:
    """The request line and headers. httpx's request already carries Host (with the port
    when it is not the scheme's default) and Content-Length; like http.client, optisync
    asks for an uncompressed answer unless the request says otherwise."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    names = set()
    for name, value in request.headers.raw:
        lines.append(name + b": " + value)
        names.add(name.lower())
    if b"content-length" not in names and b"transfer-encoding" not in names:
        lines.append(b"Content-Length: %d" % len(body))
    if b"accept-encoding" not in names:
        lines.append(b"Accept-Encoding: identity")
    head = b"\r\n".join(lines)
    if head.count(b"\n") != len(lines) - 1 or head.count(b"\r") != len(lines) - 1:
        # a line break inside a header would smuggle in headers (or a request) of its own
        raise httpx.LocalProtocolError("a request header holds a line break")
    return head + b"\r\n\r\n"


def _read_line(rfile: Any) -> bytes:
    line: bytes = rfile.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise _ProtocolError("a line of the answer is too long")
    if not line.endswith(b"\n"):
        raise _ProtocolError("the server closed the connection without (a whole) answer")
    return line


def _read_headers(rfile: Any) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    while True:
        line = _read_line(rfile)
        if line in (b"\r\n", b"\n"):
            return headers
        if line[:1] in (b" ", b"\t") and headers:  # a folded line continues the last header
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip())
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise _ProtocolError("a header line of the answer is malformed")
        headers.append((name, value.strip()))
        if len(headers) > _MAX_HEADERS:
            raise _ProtocolError(f"the answer has more than {_MAX_HEADERS} headers")


def _read_chunked(rfile: Any) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size_field = _read_line(rfile).split(b";", 1)[0].strip()
        if not 0 < len(size_field) <= 16 or not _HEX.issuperset(size_field):
            raise _ProtocolError("a chunk size of the answer is malformed")
        size = int(size_field, 16)
        total += size
        if total > _MAX_BODY:
            raise _ProtocolError("the answer is too large")
        if size == 0:
            _read_headers(rfile)  # trailers, if any
            return b"".join(chunks)
        chunk = rfile.read(size)
        if len(chunk) != size or _read_line(rfile) not in (b"\r\n", b"\n"):
            raise _ProtocolError("the answer was cut short")
        chunks.append(chunk)


def _read_response(rfile: Any, method: str) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
    """One answer: its status, headers, body, and whether the connection can be reused
    (only when the answer's end is certain and the server means to keep it open)."""
    while True:
        version, _, rest = _read_line(rfile).partition(b" ")
        code = rest[:3]
        if (
            not version.startswith(b"HTTP/1.")
            or not code.isdigit()
            or len(code) != 3
            or rest[3:4] not in (b"", b" ", b"\r", b"\n")
        ):
            raise _ProtocolError("the answer's status line is malformed")
        status = int(code)
        headers = _read_headers(rfile)
        if not 100 <= status < 200 or status == 101:
            break  # the final answer; an interim one (100 Continue) is skipped
    fields: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        fields.setdefault(name.lower(), []).append(value)
    connection = b",".join(fields.get(b"connection", [])).lower()
    encoding = b",".join(fields.get(b"transfer-encoding", [])).lower()
    reuse = (
        b"close" not in connection
        and (version != b"HTTP/1.0" or (b"keep-alive" in connection and not encoding))
        and status != 101  # the connection speaks another protocol from here on
    )
    if method == "HEAD" or status < 200 or status in (204, 304):
        return status, headers, b"", reuse
    if encoding:
        if encoding.rsplit(b",", 1)[-1].strip() == b"chunked":
            return status, headers, _read_chunked(rfile), reuse
        return status, headers, _read_to_close(rfile), False  # its end is the close
    lengths = {value.strip() for value in fields.get(b"content-length", [])}
    if not lengths:  # the body runs to the end of the connection
        return status, headers, _read_to_close(rfile), False
    length = lengths.pop()
    if lengths or not length.isdigit() or int(length) > _MAX_BODY:
        raise _ProtocolError("the answer's Content-Length is malformed or too large")
    content = rfile.read(int(length))
    if len(content) != int(length):
        raise _ProtocolError("the answer was cut short")
    return status, headers, content, reuse


def _read_to_close(rfile: Any) -> bytes:
    content: bytes = rfile.read(_MAX_BODY + 1)
    if len(content) > _MAX_BODY:
        raise _ProtocolError("the answer is too large")
    return content


class KeepAliveTransport(httpx.BaseTransport):
    """Direct HTTP/1.1: one keep-alive connection per thread and origin (the client's
    thread pool is small), each request written in one system call and each answer read
    from a buffer kept with its connection.

    What it reads and refuses is what http.client reads and refuses (a line over 64 KiB,
    more than 100 headers, a length that does not match); every failure becomes the httpx
    exception class that stands for it."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[_Connection] = []
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self._generation = 0  # moves on at close(): every thread's connections are gone

    def _tls_context(self) -> ssl.SSLContext:
        # httpx builds its context with the transport; this one waits for the first https
        # connection, so plain-http runs never pay for loading a CA bundle. The environment
        # is read then, by httpx's own function.
        with self._lock:
            if self._tls is None:
                self._tls = httpx.create_ssl_context()
            return self._tls

    def _connect(self, url: httpx.URL, port: int, timeout: float | None) -> _Connection:
        # the host as httpx encodes it (IDNA 2008, no IPv6 brackets), for the socket and the
        # certificate check alike, as the Host header carries it
        host = url.raw_host.decode("ascii")
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            # without it, Nagle's algorithm can hold a request's last segment until the
            # peer's delayed ACK (40 ms or more per request)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if url.scheme == "https":
                # the certificate must name the host (the context checks hostnames)
                sock = self._tls_context().wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        conn = _Connection(sock)
        with self._lock:
            self._all.append(conn)
        return conn

    def _forget(self, key: tuple[str, str, int]) -> None:
        conn = getattr(self._local, "pool", {}).pop(key, None)
        if conn is not None:
            conn.close()
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"the URL scheme {url.scheme!r} is not supported")
        port = url.port or (443 if url.scheme == "https" else 80)
        key = (url.scheme, url.host, port)
        body = request.read()
        head = _head(request, body)
        pool: dict[tuple[str, str, int], _Connection] | None = getattr(self._local, "pool", None)
        if pool is None or self._local.generation != self._generation:
            pool = self._local.pool = {}
            self._local.generation = self._generation
        conn = pool.get(key)
        connecting = conn is None
        try:
            if conn is None:
                conn = pool[key] = self._connect(url, port, timeouts.get("connect"))
                connecting = False
            conn.sock.settimeout(timeouts.get("read"))
            conn.sock.sendall(head + body)
            status, headers, content, reuse = _read_response(conn.rfile, request.method)
        except TimeoutError as exc:
            self._forget(key)
            raise (httpx.ConnectTimeout if connecting else httpx.ReadTimeout)(
                str(exc) or "timed out", request=request
            ) from exc
        except (ConnectionRefusedError, socket.gaierror) as exc:
            self._forget(key)
            raise httpx.ConnectError(str(exc), request=request) from exc
        except ssl.SSLError as exc:
            self._forget(key)
            raise httpx.ConnectError(f"TLS: {exc}", request=request) from exc
        except (_ProtocolError, OSError) as exc:
            # the server closed the connection without (a whole) answer, or sent one that
            # is not HTTP
            self._forget(key)
            raise httpx.RemoteProtocolError(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                request=request,
            ) from exc
        except BaseException:
            # an interrupt, or a failure no class above names: where the answer stopped is
            # unknown, so the connection cannot carry another request
            self._forget(key)
            raise
        if not reuse:
            self._forget(key)
        return httpx.Response(
            status,
            # the body is handed over whole: its chunking is this hop's business
            headers=[(k, v) for k, v in headers if k.lower() != b"transfer-encoding"],
            content=content,
            request=request,
        )

    def close(self) -> None:
        with self._lock:
            self._generation += 1
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
