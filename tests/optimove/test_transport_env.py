"""The real client honours the environment as httpx does: proxies by scheme, ``NO_PROXY``,
and the CA bundle of ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` (against a private CA on loopback).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from optisync.config.models import OptimoveSettings
from optisync.errors import ConfigError, ExitCode
from optisync.optimove.client import OptimoveClient
from optisync.optimove.outcome import Endpoint
from optisync.sandbox import Faults, Sandbox, SandboxConfig
from tests.optimove.loopback import ForwardingProxy, PrivateCA, TLSFront, make_private_ca

KEY = "env-key"
PROMOS = [{"PromoCode": "P1", "PromotionName": "x"}]
ENVIRONMENT = [
    *(f"{n}_PROXY" for n in ("HTTP", "HTTPS", "ALL", "NO")),
    *(f"{n}_proxy" for n in ("http", "https", "all", "no")),
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(api_key=KEY, enforce_limits=False)) as sandbox:
        yield sandbox


@pytest.fixture
def proxy() -> Iterator[ForwardingProxy]:
    with ForwardingProxy() as running:
        yield running


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return make_private_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def tls(box: Sandbox, ca: PrivateCA) -> Iterator[TLSFront]:
    with TLSFront(box.url, ca) as front:
        yield front


def client(api_url: str, events_url: str | None = None, **settings: Any) -> OptimoveClient:
    """The client as optisync builds it: no transport given, so the environment decides."""
    data: dict[str, Any] = {
        "api_url": api_url,
        "events_url": events_url,
        "tenant_id": 1,
        "api_key": KEY,
        "retry": {"max_attempts": 1},
        "timeouts": {"connect": 2, "read": 5},
        **settings,
    }
    return OptimoveClient(OptimoveSettings.model_validate(data))


def add_promotions(api_url: str, **settings: Any) -> tuple[bool, str | None]:
    with client(api_url, **settings) as c:
        delivery = c.send(Endpoint.ADD_PROMOTIONS, PROMOS)
    return delivery.ok, delivery.error


# -- proxies -----------------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])
def test_http_goes_through_the_proxy_the_environment_names(
    box: Sandbox, proxy: ForwardingProxy, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, proxy.url)
    assert add_promotions(box.url) == (True, None)
    assert proxy.seen == [f"POST {box.url}/Integrations/AddPromotions"]
    assert box.stats["accepted_promotions"] == 1


def test_a_proxy_for_https_leaves_http_direct(
    box: Sandbox, proxy: ForwardingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    assert add_promotions(box.url) == (True, None)
    assert proxy.seen == []
    assert box.stats["accepted_promotions"] == 1


def test_a_dead_proxy_fails_the_send(box: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    with ForwardingProxy() as gone:
        url = gone.url
    monkeypatch.setenv("HTTP_PROXY", url)
    ok, error = add_promotions(box.url)
    assert not ok
    assert error is not None
    assert error.startswith("ConnectError")
    assert box.stats["accepted_promotions"] == 0


@pytest.mark.parametrize(
    ("variable", "hosts"),
    [
        ("NO_PROXY", "127.0.0.1"),
        ("no_proxy", "127.0.0.1"),
        ("NO_PROXY", "example.test, 127.0.0.1"),
        ("NO_PROXY", "*"),
    ],
)
def test_no_proxy_bypasses_the_proxy(
    box: Sandbox,
    proxy: ForwardingProxy,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    hosts: str,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv(variable, hosts)
    assert add_promotions(box.url) == (True, None)
    assert proxy.seen == []
    assert box.stats["accepted_promotions"] == 1


def test_no_proxy_is_decided_per_host(
    box: Sandbox, proxy: ForwardingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost")
    events_url = f"http://127.0.0.1:{box.port}/reportEvent"
    with client(f"http://localhost:{box.port}", events_url, events_auth="api_key_header") as c:
        assert c.send(Endpoint.ADD_PROMOTIONS, PROMOS).ok
        event = c.send(Endpoint.EVENTS, {"tenant": 1, "event": "x", "customer": "C1"})
    assert event.status is not None  # answered by the sandbox, whatever its verdict
    assert proxy.seen == [f"POST {events_url}"]


@pytest.mark.parametrize("proxy_url", ["ftp://127.0.0.1:21", "socks5://127.0.0.1:1080"])
def test_a_proxy_httpx_cannot_use_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, proxy_url: str
) -> None:
    if proxy_url.startswith("socks") and importlib.util.find_spec("socksio") is not None:
        pytest.skip("socksio is installed: httpx can use a socks proxy")
    monkeypatch.setenv("ALL_PROXY", proxy_url)
    with pytest.raises(ConfigError, match="proxy named in the environment") as info:
        client("http://127.0.0.1:9")
    assert info.value.exit_code is ExitCode.CONFIG


def test_timeouts_apply_through_the_proxy(
    box: Sandbox, proxy: ForwardingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    box.set_faults(Faults(latency_ms=1000))
    ok, error = add_promotions(box.url, timeouts={"connect": 2, "read": 0.2})
    assert not ok
    assert error is not None
    assert error.startswith("ReadTimeout")


# -- a private certificate authority -------------------------------------------------------


def ca_setting(variable: str, ca: PrivateCA) -> str:
    return str(ca.dir if variable == "SSL_CERT_DIR" else ca.cert)


def httpx_trusts(url: str) -> bool:
    try:
        with httpx.Client(trust_env=True) as plain:
            plain.post(url + "/Integrations/AddPromotions", json=PROMOS)
    except httpx.ConnectError:
        return False
    return True


@pytest.mark.parametrize(
    ("variable", "trusted"),
    [
        (None, False),
        ("SSL_CERT_FILE", True),
        ("SSL_CERT_DIR", True),
        # httpx does not read it (requests does); optisync follows httpx
        ("REQUESTS_CA_BUNDLE", False),
    ],
)
def test_a_private_ca_is_trusted_as_httpx_trusts_it(
    tls: TLSFront,
    box: Sandbox,
    ca: PrivateCA,
    monkeypatch: pytest.MonkeyPatch,
    variable: str | None,
    trusted: bool,
) -> None:
    if variable is not None:
        monkeypatch.setenv(variable, ca_setting(variable, ca))
    ok, error = add_promotions(tls.url)
    assert ok is trusted
    if not trusted:
        assert error is not None
        assert "CERTIFICATE_VERIFY_FAILED" in error
    assert box.stats["accepted_promotions"] == int(trusted)
    assert httpx_trusts(tls.url) is trusted  # the reference: httpx on its own


@pytest.mark.parametrize(("variable", "trusted"), [(None, False), ("SSL_CERT_FILE", True)])
def test_https_through_the_proxy_tunnels_and_checks_the_ca(
    tls: TLSFront,
    proxy: ForwardingProxy,
    ca: PrivateCA,
    monkeypatch: pytest.MonkeyPatch,
    variable: str | None,
    trusted: bool,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    if variable is not None:
        monkeypatch.setenv(variable, ca_setting(variable, ca))
    ok, _ = add_promotions(tls.url)
    assert ok is trusted
    assert proxy.seen == [f"CONNECT 127.0.0.1:{tls.port}"]
