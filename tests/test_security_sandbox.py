"""The sandbox holds recorded member data: it stays on loopback unless told otherwise, has no
well-known key, and neither idle nor numerous connections can exhaust it (docs/security.md)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from optisync.errors import ExitCode, StorageError, UsageError
from optisync.sandbox import Sandbox, SandboxConfig
from tests.support import invoke

KEY = "test-key-sec-2b7e"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.test"])
def test_non_loopback_address_is_refused_without_allow_remote(host: str) -> None:
    with pytest.raises(UsageError, match=f"refusing to listen on {host}"):
        Sandbox(SandboxConfig(api_key=KEY), host, 0)


def _never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Were the refusal gone, the command would serve for ever: fail instead of hanging."""

    def serve_forever(self: Sandbox) -> None:  # pragma: no cover - only on regression
        pytest.fail("the sandbox started serving")

    monkeypatch.setattr(Sandbox, "serve_forever", serve_forever)


def test_cli_refuses_0_0_0_0(monkeypatch: pytest.MonkeyPatch) -> None:
    _never_serve(monkeypatch)
    result = invoke("sandbox", "--host", "0.0.0.0", "--port", "0", expect=ExitCode.USAGE)
    assert "not a loopback address" in result.stderr and "--allow-remote" in result.stderr


# (::1 passes the loopback check too, but the sandbox's HTTP server binds IPv4 only)
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_addresses_are_served(host: str) -> None:
    sandbox = Sandbox(SandboxConfig(api_key=KEY), host, 0)
    with sandbox, httpx.Client(base_url=sandbox.url, headers={"X-API-KEY": KEY}) as client:
        assert client.get("/_sandbox/stats").status_code == 200


def test_cli_allow_remote_reaches_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[SandboxConfig] = []
    monkeypatch.setattr("optisync.sandbox.serve", lambda config, host, port: seen.append(config))
    invoke("sandbox", "--api-key", "k", "--host", "0.0.0.0", "--allow-remote")
    invoke("sandbox", "--api-key", "k")
    assert [c.allow_remote for c in seen] == [True, False]


def test_cli_customers_file_lists_the_customers_that_exist(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[SandboxConfig] = []
    monkeypatch.setattr("optisync.sandbox.serve", lambda config, host, port: seen.append(config))
    listed = tmp_path / "customers.txt"
    listed.write_text("M1\n  M2  \n\nM-ü3\n", encoding="utf-8")
    invoke("sandbox", "--api-key", "k", "--customers", str(listed))
    invoke("sandbox", "--api-key", "k")
    assert [c.customers for c in seen] == [frozenset({"M1", "M2", "M-ü3"}), frozenset()]


def test_default_key_is_random_and_printed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[SandboxConfig] = []
    monkeypatch.setattr("optisync.sandbox.serve", lambda config, host, port: seen.append(config))
    first = invoke("sandbox")
    second = invoke("sandbox")
    keys = [c.api_key for c in seen]
    assert keys[0] != keys[1] and "sandbox-key" not in keys
    assert all(len(k) >= 20 for k in keys)
    assert first.stderr.count(keys[0]) == 1 and second.stderr.count(keys[1]) == 1
    # a key given explicitly is used as is and not echoed
    given = invoke("sandbox", "--api-key", "demo-key")
    assert seen[-1].api_key == "demo-key" and "demo-key" not in given.stderr


def test_idle_connection_is_closed_after_the_socket_timeout() -> None:
    with (
        Sandbox(SandboxConfig(api_key=KEY, socket_timeout=0.3)) as sandbox,
        socket.create_connection(("127.0.0.1", sandbox.port), timeout=5) as conn,
    ):
        conn.sendall(b"GET /_sandbox/stats HTTP/1.1\r\nHost: x\r\n")  # never finished
        start = time.monotonic()
        assert conn.recv(1024) == b""  # the server gave up on it
        assert time.monotonic() - start < 4


def test_connections_beyond_the_cap_are_answered_503() -> None:
    with Sandbox(SandboxConfig(api_key=KEY, max_connections=2)) as sandbox:
        idle = [socket.create_connection(("127.0.0.1", sandbox.port), timeout=5) for _ in range(2)]
        try:
            time.sleep(0.2)  # both accepted and held by their threads
            with socket.create_connection(("127.0.0.1", sandbox.port), timeout=5) as extra:
                answer = extra.recv(1024)
            assert answer.startswith(b"HTTP/1.1 503")
        finally:
            for conn in idle:
                conn.close()
        deadline = time.monotonic() + 5
        while True:  # the slots come back once the idle connections are gone
            with httpx.Client(base_url=sandbox.url, headers={"X-API-KEY": KEY}) as client:
                status = client.get("/_sandbox/stats").status_code
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status == 200


def test_config_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="socket_timeout"):
        SandboxConfig(api_key=KEY, socket_timeout=0)
    with pytest.raises(ValueError, match="max_connections"):
        SandboxConfig(api_key=KEY, max_connections=0)


def test_record_file_refuses_a_planted_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _never_serve(monkeypatch)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    record = tmp_path / "record.jsonl"
    record.symlink_to(victim)
    with pytest.raises(StorageError, match="symbolic link"):
        Sandbox(SandboxConfig(api_key=KEY, record_path=record))
    assert victim.read_text() == "precious\n"
    result = invoke(
        "sandbox", "--api-key", "k", "--port", "0", "--record", str(record),
        expect=ExitCode.UNAVAILABLE,
    )  # fmt: skip
    assert "symbolic link" in result.stderr
    assert victim.read_text() == "precious\n"


def test_record_file_is_private(tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    with Sandbox(SandboxConfig(api_key=KEY, record_path=record)):
        pass
    assert record.stat().st_mode & 0o777 == 0o600
