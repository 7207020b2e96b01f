"""The sandbox's HTTP layer: a stdlib ``ThreadingHTTPServer`` speaking HTTP/1.1 keep-alive.

Every answer carries ``Content-Length`` and is written in one ``send`` (with Nagle disabled),
so keep-alive clients never wait on delayed ACKs. Nothing is logged per request.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from optisync.config.models import is_loopback_host
from optisync.errors import UsageError
from optisync.sandbox.state import Faults, Reply, SandboxConfig, SandboxState

MAX_BODY = 32 * 1024 * 1024


# Sent, then the connection closed, when max_connections are already open.
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
    b"Connection: close\r\n\r\n"
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: SandboxState) -> None:
        self.state = state
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(state.config.max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # One thread per connection, but not without bound: a flood of idle connections
        # would otherwise exhaust threads and memory.
        if not self.slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanished (killed, timed out) is routine here, not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Shut down open keep-alive connections so their threads end promptly."""
        with self.connections_lock:
            open_now = list(self.connections)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        # a client that stalls mid-request (or idles on keep-alive) frees its thread
        self.connection.settimeout(self.server.state.config.socket_timeout)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: no per-request logging (speed, and never echo headers)."""

    def _read_body(self) -> bytes | None:
        """The raw body (Content-Length or chunked); ``None`` when it cannot be read."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length_text = self.headers.get("Content-Length")
        if not length_text:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            return None
        if length < 0 or length > MAX_BODY:
            return None
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY:
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _dispatch(self) -> None:
        raw = self._read_body()
        if raw is None:
            self.close_connection = True
            self._write(Reply(400, b"Unreadable request body", "text/plain; charset=utf-8"))
            return
        try:
            reply = self.server.state.handle(self.command, self.path, self.headers.get, raw)
        except Exception as exc:  # a sandbox bug: answer 500 rather than hang the client
            reply = Reply(
                500, f"sandbox error: {type(exc).__name__}".encode(), "text/plain; charset=utf-8"
            )
        if reply.action != "reply":
            self.close_connection = True  # drop / lost response: close without answering
            return
        self._write(reply)

    def _write(self, reply: Reply) -> None:
        try:
            phrase = HTTPStatus(reply.status).phrase
        except ValueError:
            phrase = ""
        head = [
            f"HTTP/1.1 {reply.status} {phrase}",
            f"Content-Length: {len(reply.body)}",
        ]
        if reply.body:
            head.append(f"Content-Type: {reply.content_type}")
        head.extend(f"{name}: {value}" for name, value in reply.headers)
        if self.close_connection:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body
        try:
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch  # noqa: N815


class Sandbox:
    """A local stand-in for Optimove's REST API and events gateway on loopback.

    ``Sandbox(config).start()`` serves in a daemon thread (port 0 picks a free port); use it
    as a context manager to stop it on exit. See ``optisync.sandbox.state`` for the rules.
    """

    def __init__(self, config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        if not config.allow_remote and not is_loopback_host(host):
            raise UsageError(
                f"refusing to listen on {host}: not a loopback address",
                hint="anyone who reaches the sandbox with its key reads the member data it"
                " recorded; pass --allow-remote (allow_remote=True) if that is intended",
            )
        self.config = config
        self._state = SandboxState(config)
        self._server = _Server((host, port), self._state)
        bound_host, bound_port = self._server.server_address[:2]
        shown = f"[{bound_host!s}]" if ":" in str(bound_host) else str(bound_host)
        self.url = f"http://{shown}:{bound_port}"
        self.events_url = self.url + "/reportEvent"
        self._thread: threading.Thread | None = None
        self._serving: threading.Thread | None = None
        self._closed = False
        self._lifecycle = threading.Lock()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> Sandbox:
        """Serve in a daemon thread; returns ``self``."""
        with self._lifecycle:
            if self._closed:
                raise RuntimeError("this sandbox was stopped; create a new one")
            if self._thread is not None or self._serving is not None:
                return self
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.02},
                name=f"optisync-sandbox-{self.port}",
                daemon=True,
            )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop()`` (from another thread) or Ctrl-C."""
        with self._lifecycle:
            if self._closed:
                return
            if self._thread is not None or self._serving is not None:
                raise RuntimeError("this sandbox is already serving")
            self._serving = threading.current_thread()
        try:
            self._server.serve_forever(poll_interval=0.02)
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving, close open connections and the record file. Idempotent."""
        with self._lifecycle:
            if self._closed:
                return
            self._closed = True
            serving = self._serving
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        elif serving is not None and serving is not threading.current_thread():
            self._server.shutdown()  # serve_forever() runs in another thread: end it
        self._server.server_close()
        self._server.close_connections()
        self._state.close()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def received(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Accepted requests, oldest first: ``{"kind", "path", "body", "at", ...}``.

        Transactional records also carry ``unique_message_id``, ``send_id`` and ``status``;
        attribute records carry ``request_id``.
        """
        return self._state.received(kind)

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the counters (see ``state.STAT_KEYS``)."""
        return self._state.stats()

    @property
    def faults(self) -> Faults:
        return self._state.faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the injected faults; the random sequence restarts from ``faults.seed``."""
        self._state.set_faults(faults)

    def reset(self) -> None:
        """Forget everything received and stored; keep faults (reseeded) and the config."""
        self._state.reset()


def serve(
    config: SandboxConfig,
    host: str,
    port: int,
    *,
    ready: Callable[[Sandbox], None] | None = None,
) -> None:
    """Serve until Ctrl-C or SIGTERM (blocking, for the CLI); ``ready`` is called once listening.

    Without ``ready`` one line naming the URL goes to stderr. Either signal stops the server
    cleanly (open connections closed, record file flushed) and ``serve`` returns normally.
    """
    sandbox = Sandbox(config, host, port)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if ready is None:
            print(f"optisync sandbox listening on {sandbox.url}", file=sys.stderr, flush=True)
        else:
            ready(sandbox)
        with contextlib.suppress(KeyboardInterrupt):
            sandbox.serve_forever()
    finally:
        sandbox.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
