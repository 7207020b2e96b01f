"""Loopback stand-ins for a corporate network: a forwarding proxy that records what it
forwards, a private certificate authority, and a TLS front that serves the sandbox with a
certificate from that authority."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import ipaddress
import select
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Headers that belong to one hop, not to the request a proxy forwards.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer"}
    | {"transfer-encoding", "upgrade", "content-length", "server", "date"}
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str | None) -> None:
        super().__init__(("127.0.0.1", 0), _Forwarder)
        self.upstream = upstream  # where origin-form requests go; None: a proxy
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client refusing our certificate is what some tests expect


class _Forwarder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _record(self) -> None:
        with self.server.lock:
            self.server.seen.append(f"{self.command} {self.path}")

    def do_CONNECT(self) -> None:
        self._record()
        host, port = self.path.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)), timeout=5)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        _pipe(self.connection, upstream)

    def do_POST(self) -> None:
        self._record()
        target = self.path if self.server.upstream is None else self.server.upstream + self.path
        url = urlsplit(target)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=5)
        try:
            path = url.path + (f"?{url.query}" if url.query else "")
            conn.request(self.command, path or "/", body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        self.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes (a CONNECT tunnel)."""
    try:
        while True:
            readable, _, _ = select.select([a, b], [], [], 5)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (b if sock is a else a).sendall(data)
    finally:
        b.close()


class _Running:
    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def seen(self) -> list[str]:
        with self._server.lock:
            return list(self._server.seen)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


class ForwardingProxy(_Running):
    """An HTTP proxy: absolute-form requests are forwarded, CONNECT is tunnelled; ``seen``
    lists every request line it got (``POST http://host:port/path``, ``CONNECT host:port``)."""

    def __init__(self) -> None:
        super().__init__(_Server(upstream=None))
        self.url = f"http://127.0.0.1:{self.port}"


class TLSFront(_Running):
    """HTTPS on loopback with ``cert``, forwarding every request to ``upstream`` (http)."""

    def __init__(self, upstream: str, ca: PrivateCA) -> None:
        server = _Server(upstream=upstream)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ca.server_cert, ca.server_key)
        # The handshake runs in the request's thread, so a refused one blocks nothing.
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        super().__init__(server)
        self.url = f"https://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class PrivateCA:
    cert: Path  # the authority's certificate (PEM): what SSL_CERT_FILE names
    dir: Path  # a directory holding it under OpenSSL's hashed name: what SSL_CERT_DIR names
    server_cert: Path
    server_key: Path


def make_private_ca(where: Path) -> PrivateCA:
    """A certificate authority nobody trusts, and a server certificate for 127.0.0.1 and
    localhost signed by it."""
    where.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # One lowercase UTF8String attribute: its DER is already OpenSSL's canonical form.
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "optisync test ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    (where / "ca.pem").write_bytes(ca_pem)
    hashed = where / "certs"
    hashed.mkdir(exist_ok=True)
    (hashed / f"{_subject_hash(ca_name):08x}.0").write_bytes(ca_pem)
    (where / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (where / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return PrivateCA(where / "ca.pem", hashed, where / "server.pem", where / "server.key")


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _subject_hash(name: x509.Name) -> int:
    """OpenSSL's X509_NAME_hash (what ``openssl rehash`` names files by): SHA-1 of the
    name's canonical DER without its outer SEQUENCE, first four bytes, little-endian."""
    der = name.public_bytes()
    assert der[0] == 0x30 and der[1] < 0x80  # a short SEQUENCE: the header is two bytes
    digest = hashlib.sha1(der[2:]).digest()
    return int.from_bytes(digest[:4], "little")
