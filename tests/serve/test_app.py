"""The HTTP intake of ``optisync serve``, in process: authentication, limits, validation,
the durable spool, health and metrics. Delivery is not running here; the spool is read
back to see exactly what would be delivered."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from optisync.config import load_config
from optisync.serve.app import ServeState, authorized, build_app
from optisync.serve.metrics import ServeMetrics
from optisync.serve.spool import Spool
from tests.support import tier_or_redemption

TOKEN = "caller-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make(
    tmp_path: Path, *, max_body: int = 1 << 20, max_spool: int = 1 << 20, **kw: Any
) -> tuple[TestClient, ServeState]:
    state = ServeState(
        spool=Spool(tmp_path / "spool", max_spool),
        tokens=[b"other-token", TOKEN.encode()],
        max_body=max_body,
        metrics=ServeMetrics(),
        **kw,
    )
    return TestClient(build_app(state)), state


def spooled(state: ServeState) -> list[dict[str, Any]]:
    """Every message in the spool, in delivery order."""
    return [
        json.loads(line)
        for path in sorted(state.spool.dir.glob("*.ndjson"))
        for line in path.read_bytes().splitlines()
    ]


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer ", f"bearer {TOKEN}x", TOKEN],
)
def test_events_refused_without_the_right_token(tmp_path: Path, header: str | None) -> None:
    client, state = make(tmp_path)
    headers = {"Authorization": header} if header is not None else {}
    answer = client.post("/v1/events", json=tier_or_redemption(1, False), headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert spooled(state) == []


def test_every_configured_token_is_accepted() -> None:
    tokens = [b"first-token", b"second-token"]
    assert authorized("Bearer first-token", tokens)
    assert authorized("Bearer second-token", tokens)
    assert not authorized("Bearer third-token", tokens)
    assert not authorized("Bearer first-token", [])


def test_one_event_is_spooled_before_202_with_its_id(tmp_path: Path) -> None:
    client, state = make(tmp_path)
    answer = client.post("/v1/events", json=tier_or_redemption(1, False), headers=AUTH)
    assert answer.status_code == 202
    assert answer.json() == {"accepted": 1, "ids": ["t-1"]}
    assert spooled(state) == [tier_or_redemption(1, False)]
    files = list(state.spool.dir.glob("*.ndjson"))
    assert len(files) == 1 and files[0].stat().st_mode & 0o077 == 0


def test_a_single_bad_event_is_400_with_its_reason(tmp_path: Path) -> None:
    client, state = make(tmp_path)
    bad = {**tier_or_redemption(1, False), "member_id": None}
    answer = client.post("/v1/events", json=bad, headers=AUTH)
    assert answer.status_code == 400
    assert "member_id" in answer.json()["error"]
    answer = client.post("/v1/events", content=b"{not json", headers=AUTH)
    assert answer.status_code == 400 and "bad JSON" in answer.json()["error"]
    assert spooled(state) == []


def test_a_card_number_is_refused(tmp_path: Path) -> None:
    client, state = make(tmp_path)
    event = {**tier_or_redemption(1, False), "data": {"tier": "4111 1111 1111 1111"}}
    answer = client.post("/v1/events", json=event, headers=AUTH)
    assert answer.status_code == 400
    assert "4111" not in answer.text
    assert spooled(state) == []


def test_a_mixed_array_gets_per_item_results(tmp_path: Path) -> None:
    client, state = make(tmp_path)
    body = [tier_or_redemption(1, False), {"type": "MEMBER_TIER"}, tier_or_redemption(2, True)]
    answer = client.post("/v1/events", json=body, headers=AUTH)
    assert answer.status_code == 202
    data = answer.json()
    assert (data["accepted"], data["invalid"]) == (2, 1)
    assert [r["status"] for r in data["results"]] == ["accepted", "invalid", "accepted"]
    assert [r.get("id") for r in data["results"]] == ["t-1", None, "r-2"]
    assert "member_id" in data["results"][1]["error"]
    assert spooled(state) == [body[0], body[2]]


def test_an_array_of_only_bad_events_is_400(tmp_path: Path) -> None:
    client, state = make(tmp_path)
    answer = client.post("/v1/events", json=[{"a": 1}, 3], headers=AUTH)
    assert answer.status_code == 400
    assert [r["status"] for r in answer.json()["results"]] == ["invalid", "invalid"]
    assert spooled(state) == []


@pytest.mark.parametrize("content_type", ["application/x-ndjson", "text/plain"])
def test_ndjson_lines_are_checked_one_by_one(tmp_path: Path, content_type: str) -> None:
    client, state = make(tmp_path)
    events = [tier_or_redemption(i, i % 2 == 0) for i in range(3)]
    lines = [json.dumps(events[0]), "", "{broken", json.dumps(events[1]), json.dumps(events[2])]
    answer = client.post(
        "/v1/events",
        content="\r\n".join(lines).encode(),
        headers={**AUTH, "Content-Type": content_type},
    )
    assert answer.status_code == 202
    data = answer.json()
    assert [r["status"] for r in data["results"]] == ["accepted", "invalid", *["accepted"] * 2]
    assert spooled(state) == events


def test_an_oversized_body_is_413_and_not_spooled(tmp_path: Path) -> None:
    client, state = make(tmp_path, max_body=2000)
    events = [tier_or_redemption(i, False) for i in range(40)]
    answer = client.post("/v1/events", json=events, headers=AUTH)
    assert answer.status_code == 413

    def chunks() -> Any:  # no Content-Length: the limit holds while streaming
        for event in events:
            yield json.dumps(event).encode() + b"\n"

    answer = client.post("/v1/events", content=chunks(), headers=AUTH)
    assert answer.status_code == 413
    assert spooled(state) == []


def test_a_full_spool_answers_503_with_retry_after(tmp_path: Path) -> None:
    client, state = make(tmp_path, max_spool=100)
    first = client.post("/v1/events", json=tier_or_redemption(1, False), headers=AUTH)
    assert first.status_code == 202  # under the limit when it came; now over it
    answer = client.post("/v1/events", json=tier_or_redemption(2, False), headers=AUTH)
    assert answer.status_code == 503
    assert int(answer.headers["retry-after"]) > 0
    assert client.get("/readyz").status_code == 503
    assert "spool full" in client.get("/readyz").json()["problems"]
    assert len(spooled(state)) == 1


def test_health_and_readiness(tmp_path: Path) -> None:
    alive = {"yes": True}
    client, state = make(tmp_path, ready=lambda: alive["yes"])
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"status": "ready"}
    alive["yes"] = False
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["problems"] == ["delivery not running"]
    state.accepting = False
    answer = client.post("/v1/events", json=tier_or_redemption(1, False), headers=AUTH)
    assert answer.status_code == 503


def test_metrics_parse_as_prometheus_text(tmp_path: Path) -> None:
    client, state = make(tmp_path)
    client.post("/v1/events", json=[tier_or_redemption(1, False), {"x": 1}], headers=AUTH)
    state.metrics.count_rejected(2)
    state.metrics.latency.observe(0.3)
    answer = client.get("/metrics")
    assert answer.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    value = {s.name: s.value for f in families.values() for s in f.samples if not s.labels}
    assert value["optisync_serve_messages_received_total"] == 1
    assert value["optisync_serve_messages_invalid_total"] == 1
    assert value["optisync_serve_messages_rejected_by_optimove_total"] == 2
    assert value["optisync_serve_messages_spooled"] == 1
    assert value["optisync_serve_delivery_seconds_count"] == 1
    for name in (
        "optisync_serve_messages_delivered",
        "optisync_serve_messages_dead_lettered",
        "optisync_serve_optimove_429",
        "optisync_serve_quota_waits",
    ):
        assert name in families
    assert families["optisync_serve_delivery_seconds"].type == "histogram"


def test_callback_route_needs_a_handler(tmp_path: Path) -> None:
    client, _ = make(tmp_path)
    assert client.post("/v1/optimove/callback?part=1&sig=x", content=b"{}").status_code == 404
    seen: list[tuple[dict[str, str], bytes]] = []

    def handler(query: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        seen.append((dict(query), body))
        return (403, {"error": "bad signature"}) if query.get("sig") != "ok" else (200, {})

    client, _ = make(tmp_path, callback=handler)
    # no bearer token: Optimove cannot send one; the handler checks its own signature
    assert client.post("/v1/optimove/callback?part=1&sig=no", content=b"{}").status_code == 403
    answer = client.post("/v1/optimove/callback?part=1&sig=ok", content=b'{"isSuccess":true}')
    assert answer.status_code == 200
    assert seen[-1] == ({"part": "1", "sig": "ok"}, b'{"isSuccess":true}')


def test_tokens_from_the_environment_are_taken_verbatim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "optisync.yaml"
    path.write_text("serve:\n  listen: 127.0.0.1:9999\n")
    monkeypatch.setenv("OPTISYNC_SERVE__TOKENS", "0123, true ,abc")
    config = load_config(path)
    assert config.serve.token_list() == ["0123", "true", "abc"]
    assert "0123" not in repr(config.serve)
    assert config.serve.address() == ("127.0.0.1", 9999)


def test_tokens_file_adds_one_token_a_line(tmp_path: Path) -> None:
    path = tmp_path / "optisync.yaml"
    (tmp_path / "tokens").write_text("first-token\n\nsecond-token\n")
    path.write_text("serve:\n  tokens_file: tokens\n")
    config = load_config(path)
    assert config.serve.token_list(config.path) == ["first-token", "second-token"]


@pytest.mark.parametrize("listen", ["8787", "host:", ":80", "127.0.0.1:99999"])
def test_a_bad_listen_address_is_a_config_error(tmp_path: Path, listen: str) -> None:
    from optisync.errors import ConfigError

    path = tmp_path / "optisync.yaml"
    path.write_text(f"serve:\n  listen: '{listen}'\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_validate_config_warns_about_a_serve_section_without_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optisync.config.load import validate_config

    path = tmp_path / "optisync.yaml"
    path.write_text("serve:\n  spool_dir: spool\n")
    warned = [p.message for p in validate_config(path).warnings if p.key == "serve"]
    assert warned and "refuse every request" in warned[0]
    monkeypatch.setenv("OPTISYNC_SERVE__TOKENS", "some-token")
    assert not [p for p in validate_config(path).warnings if p.key.startswith("serve")]
    path.write_text("optimove:\n  concurrency: 2\n")  # no serve section: nothing to say
    monkeypatch.delenv("OPTISYNC_SERVE__TOKENS")
    assert not [p for p in validate_config(path).warnings if p.key.startswith("serve")]
