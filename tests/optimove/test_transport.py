"""The lean keep-alive transport against the live sandbox: answers, reuse, and failures
mapped onto httpx's exception classes (so retries and classification hold)."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from optisync.optimove.transport import (
    EnvironmentTransport,
    KeepAliveTransport,
    default_transport,
)
from optisync.sandbox import Faults, Sandbox, SandboxConfig

KEY = "transport-key"
TIMEOUT = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(api_key=KEY, enforce_limits=False)) as sandbox:
        yield sandbox


PROMO = b'[{"PromoCode": "P1", "PromotionName": "x"}]'


def post(
    transport: httpx.BaseTransport,
    url: str,
    body: bytes = PROMO,
    timeout: dict[str, float] = TIMEOUT,
) -> httpx.Response:
    request = httpx.Request(
        "POST",
        url,
        content=body,
        extensions={"timeout": timeout},
        headers={"X-API-KEY": KEY, "Content-Type": "application/json"},
    )
    response = transport.handle_request(request)
    response.read()
    return response


def test_answers_and_reuses_one_connection(box: Sandbox) -> None:
    transport = KeepAliveTransport()
    url = box.url + "/Integrations/AddPromotions"
    body = b'[{"PromoCode": "P1", "PromotionName": "x"}]'
    first = post(transport, url, body)
    conn = next(iter(transport._local.pool.values()))
    second = post(transport, url, body)
    assert (first.status_code, second.status_code) == (200, 200)
    assert next(iter(transport._local.pool.values())) is conn
    assert box.stats["accepted_promotions"] == 2
    transport.close()


def test_error_status_comes_back_as_a_response(box: Sandbox) -> None:
    response = post(KeepAliveTransport(), box.url + "/Integrations/AddPromotions", b"{bad")
    assert response.status_code == 400


def test_read_timeout(box: Sandbox) -> None:
    box.set_faults(Faults(latency_ms=500))
    with pytest.raises(httpx.ReadTimeout):
        post(
            KeepAliveTransport(),
            box.url + "/Integrations/AddPromotions",
            timeout={**TIMEOUT, "read": 0.1},
        )


@pytest.mark.parametrize("fault", ["drop_rate", "lost_response_rate"])
def test_closed_without_answer_is_a_protocol_error(box: Sandbox, fault: str) -> None:
    box.set_faults(Faults(**{fault: 1.0}, seed=1))  # type: ignore[arg-type]
    transport = KeepAliveTransport()
    with pytest.raises(httpx.RemoteProtocolError):
        post(transport, box.url + "/Integrations/AddPromotions")
    box.set_faults(Faults())
    assert post(transport, box.url + "/Integrations/AddPromotions").status_code == 200


def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        post(KeepAliveTransport(), f"http://127.0.0.1:{port}/x")


@pytest.mark.parametrize(
    ("environment", "lean"),
    [
        ({}, True),
        ({"NO_PROXY": "127.0.0.1"}, True),
        ({"FTP_PROXY": "http://127.0.0.1:3128"}, True),  # httpx reads http, https, all only
        ({"HTTPS_PROXY": "http://127.0.0.1:3128"}, False),
        ({"http_proxy": "http://127.0.0.1:3128"}, False),
        ({"ALL_PROXY": "http://127.0.0.1:3128", "NO_PROXY": "*"}, False),
    ],
)
def test_the_lean_transport_only_when_no_proxy_is_named(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], lean: bool
) -> None:
    for scheme in ("http", "https", "all", "no", "ftp"):
        monkeypatch.delenv(f"{scheme}_proxy", raising=False)
        monkeypatch.delenv(f"{scheme.upper()}_PROXY", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    transport = default_transport()
    expected = KeepAliveTransport if lean else EnvironmentTransport
    assert isinstance(transport, expected)
    transport.close()


class Scripted:
    """A loopback server answering each request with the next of ``answers`` (raw bytes),
    closing the connection after an answer marked ``close``; it keeps every request it
    read and counts connections."""

    def __init__(self, *answers: bytes | tuple[bytes, str]) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/x?y=1"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.answers:
            conn, _ = self.sock.accept()
            self.connections += 1
            with conn, conn.makefile("rb") as rfile:
                while self.answers:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = rfile.readline()
                        if not line:
                            break
                        head += line
                    if not head:
                        break
                    length = re.search(rb"(?i)content-length: *(\d+)", head)
                    self.requests.append(head + rfile.read(int(length[1]) if length else 0))
                    answer = self.answers.pop(0)
                    raw, close = answer if isinstance(answer, tuple) else (answer, "")
                    conn.sendall(raw)
                    if close:
                        break

    def close(self) -> None:
        self.sock.close()


def ok(body: bytes = b'{"status":"success"}', *headers: bytes) -> bytes:
    head = b"".join(h + b"\r\n" for h in headers)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), head, body)


def test_request_is_written_whole_with_host_and_identity_encoding() -> None:
    server = Scripted(ok())
    response = post(KeepAliveTransport(), server.url, b'{"a":1}')
    assert response.status_code == 200
    request = server.requests[0]
    port = server.url.split(":")[2].split("/")[0]
    assert request.startswith(b"POST /x?y=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{port}\r\n".encode() in request
    assert b"Accept-Encoding: identity\r\n" in request
    assert b"Content-Length: 7\r\n" in request
    assert request.endswith(b'\r\n\r\n{"a":1}')
    server.close()


def test_chunked_interim_and_folded_answers_are_read_whole() -> None:
    chunked = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Folded: a\r\n b\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: t\r\n\r\n"
    )
    server = Scripted(chunked, ok(b"again"))
    transport = KeepAliveTransport()
    first = post(transport, server.url)
    assert first.content == b"hello world"
    assert first.headers["x-folded"] == "a b"
    assert "transfer-encoding" not in first.headers  # the body is handed over whole
    assert post(transport, server.url).content == b"again"
    assert server.connections == 1  # the same connection, kept alive
    server.close()


@pytest.mark.parametrize(
    "answer",
    [
        (ok(b"bye", b"Connection: close"), "close"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nbye", "close"),
        (b"HTTP/1.1 200 OK\r\n\r\nbye", "close"),  # no length: the body runs to the close
        # a coding other than chunked last: the body ends at the close, whatever its length
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 1\r\n\r\nbye",
            "close",
        ),
        (ok(b"bye", b"Connection: keep-alive", b"Connection: close"), "close"),
    ],
)
def test_an_answer_that_ends_its_connection_is_not_reused(answer: tuple[bytes, str]) -> None:
    server = Scripted(answer, ok(b"next"))
    transport = KeepAliveTransport()
    assert post(transport, server.url).content == b"bye"
    assert post(transport, server.url).content == b"next"
    assert server.connections == 2
    server.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # cut short
        b"SMTP ready\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 101 + b"Content-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x10\r\n",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 1\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n",
    ],
)
def test_a_malformed_answer_is_a_protocol_error(answer: bytes) -> None:
    server = Scripted((answer, "close"), ok(b"fine"))
    transport = KeepAliveTransport()
    with pytest.raises(httpx.RemoteProtocolError):
        post(transport, server.url)
    assert post(transport, server.url).content == b"fine"  # a new connection
    server.close()


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    server = Scripted(ok())
    request = httpx.Request("POST", server.url, headers={"X-API-KEY": "k\r\nX-Evil: 1"})
    with pytest.raises(httpx.LocalProtocolError):
        KeepAliveTransport().handle_request(request)
    assert server.requests == [] and server.connections == 0
    server.close()


def test_a_closed_transport_connects_again_on_every_thread() -> None:
    server = Scripted(ok(b"one"), ok(b"two"))
    transport = KeepAliveTransport()
    assert post(transport, server.url).content == b"one"
    transport.close()
    assert post(transport, server.url).content == b"two"
    assert server.connections == 2
    server.close()
