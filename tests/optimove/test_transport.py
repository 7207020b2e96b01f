"""The lean keep-alive transport against the live sandbox: answers, reuse, and failures
mapped onto httpx's exception classes (so retries and classification hold)."""

from __future__ import annotations

import socket
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
