"""Latency of a continuous feed: from a message entering optisync to its request reaching
Optimove (the sandbox), per target, at a low and a high message rate.

    .venv/bin/python benchmarks/latency.py [--seconds 60] [--rates 10,500] [--linger-ms 500]

Each message is handed to a feeder at its scheduled time (an even pace). Feeders
(``--feeder``): ``pipe``, ``push-event --input -`` on a pipe that stays open for the whole
run; ``serve``, ``optisync serve`` with one POST per message (from 16 client threads, as a
gateway would post); ``serve-ndjson``, ``optisync serve`` with the messages of every 20 ms
in one NDJSON POST. A message enters when it is written to the pipe, or when the POST
carrying it starts. Every other
message is a tier change (a server-side event and an attribute update), every other one a
purchase (a transactional mail), each with its own member, so every request the sandbox
records is matched to the messages it carries. The sandbox runs in its own process with
Optimove's quotas enforced, and stamps each request with the wall-clock time it accepted
it; optisync's client keeps under the quotas, so the figures are "while under quota".

Reported per rate and target: messages, how many arrived, p50 and p99 of (accepted at -
written at), and PASS when every message arrived and p99 <= linger_ms + 250 ms.

Another feeder is a class with ``start``, ``send`` and ``close`` like ``PipeFeeder``, added
to ``FEEDERS``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

BIN = Path(sys.executable).parent
OPTISYNC = os.environ.get("BENCH_OPTISYNC", str(BIN / "optisync"))
KEY = "bench-latency-key"
PORT = 18911
SERVE_PORT = 18912
CALLER_TOKEN = "bench-latency-caller"
MARGIN_MS = 250

CONFIG = """\
optimove:
  api_url: http://127.0.0.1:{port}
  events_url: http://127.0.0.1:{port}/reportEvent
  tenant_id: 1234
  api_key: {key}
  events_auth: api_key_header
  linger_ms: {linger}
  state_dir: {state}
attributes:
  realtime:
    - {{name: TierName, type: string, source: data.tier, events: [MEMBER_TIER]}}
  emd: {{opt_in_key: email_opt_in}}
events:
  MEMBER_TIER: {{name: member_tier, context: {{message_id: id, tier: data.tier}}}}
templates:
  receipt:
    kind: transactional
    template_id: 1002
    event: PURCHASE
    attribute_mappings:
      ORDER_ID: data.order_id
routing:
  rules:
    - {{types: MEMBER_TIER, to: [events, attributes]}}
    - {{types: PURCHASE, to: ["email:receipt"]}}
dead_letter: {{dir: {dl}}}
serve: {{listen: "127.0.0.1:{serve_port}", spool_dir: {spool}}}
"""


def message(i: int) -> dict[str, Any]:
    if i % 2 == 0:
        return {
            "id": f"m-{i}",
            "type": "MEMBER_TIER",
            "member_id": f"M{i}",
            "occurred_at": "2026-11-25T10:00:00Z",
            "data": {"tier": "Gold"},
        }
    return {
        "id": f"m-{i}",
        "type": "PURCHASE",
        "member_id": f"M{i}",
        "email": f"m{i}@example.com",
        "occurred_at": "2026-11-25T10:00:00Z",
        "data": {"order_id": f"O{i}", "amount": {"amount": "10.00", "currency": "CAD"}},
    }


def expected_targets(i: int) -> tuple[str, ...]:
    return ("events", "attributes") if i % 2 == 0 else ("mail",)


Stamp = Callable[[list[int]], None]  # "these messages enter now"


class Feeder(Protocol):
    name: str
    tick: float  # messages due within this many seconds go together (0: each alone)

    def start(self, config: Path) -> None: ...

    def send(self, numbers: list[int], payload: bytes, stamp: Stamp) -> None: ...

    def close(self) -> int:
        """End the feed; the feeder's exit code (0 when all went well)."""
        ...


class PipeFeeder:
    """``optisync push-event --input -`` with its stdin held open until ``close``."""

    name = "push-event --input -"
    tick = 0.0

    def start(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [OPTISYNC, "--config", str(config), "push-event", "--input", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # let it start (imports) before the clock starts

    def send(self, numbers: list[int], payload: bytes, stamp: Stamp) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(payload)
        self.proc.stdin.flush()
        stamp(numbers)

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=120)


class ServeFeeder:
    """``optisync serve``, posted to from a pool of client threads; ``close`` stops it with
    SIGTERM, and its exit code is the feeder's (a POST not answered 202 makes it 1)."""

    name = "serve, one POST per message"
    tick = 0.0
    content_type = "application/json"

    def start(self, config: Path) -> None:
        env = {**os.environ, "OPTISYNC_SERVE__TOKENS": CALLER_TOKEN}
        self.proc = subprocess.Popen(
            [OPTISYNC, "--config", str(config), "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{SERVE_PORT}",
            headers={"Authorization": f"Bearer {CALLER_TOKEN}"},
            timeout=30,
            limits=httpx.Limits(max_connections=16),
        )
        self.pool = ThreadPoolExecutor(16, thread_name_prefix="bench-post")
        self.refused = 0
        for _ in range(300):
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("optisync serve did not start")

    def send(self, numbers: list[int], payload: bytes, stamp: Stamp) -> None:
        self.pool.submit(self._post, numbers, payload, stamp)

    def _post(self, numbers: list[int], payload: bytes, stamp: Stamp) -> None:
        stamp(numbers)
        answer = self.http.post(
            "/v1/events", content=payload, headers={"Content-Type": self.content_type}
        )
        if answer.status_code != 202:
            self.refused += 1

    def close(self) -> int:
        self.pool.shutdown(wait=True)
        self.http.close()
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # still draining: a failure in itself
            self.proc.kill()
            code = self.proc.wait()
            code = code or 1
        return 1 if self.refused else code


class ServeNdjsonFeeder(ServeFeeder):
    """``optisync serve`` given the messages of every 20 ms in one NDJSON POST."""

    name = "serve, NDJSON every 20 ms"
    tick = 0.02
    content_type = "application/x-ndjson"


FEEDERS: dict[str, type[Any]] = {
    "pipe": PipeFeeder,
    "serve": ServeFeeder,
    "serve-ndjson": ServeNdjsonFeeder,
}


def sandbox(path: str, method: str = "GET") -> Any:
    response = httpx.request(
        method, f"http://127.0.0.1:{PORT}{path}", headers={"X-API-KEY": KEY}, timeout=60
    )
    response.raise_for_status()
    return response.json()


def start_sandbox() -> subprocess.Popen[bytes]:
    args = [OPTISYNC, "sandbox", "--port", str(PORT), "--api-key", KEY, "--keep", "1000000"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            sandbox("/_sandbox/stats")
            return proc
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("sandbox did not start")


def arrivals(records: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """(target, message number) -> when the sandbox accepted the request carrying it."""
    out: dict[tuple[str, int], float] = {}
    for rec in records:
        at = datetime.fromisoformat(rec["at"]).timestamp()
        body = rec["body"]
        if rec["kind"] == "events":
            for event in body if isinstance(body, list) else [body]:
                out.setdefault(("events", int(event["context"]["message_id"][2:])), at)
        elif rec["kind"] == "attributes":
            for entry in body["CustomerNewAttributesValuesList"]:
                out.setdefault(("attributes", int(entry["CustomerID"][1:])), at)
        elif rec["kind"] == "transactional":
            for recipient in body["Recipients"]:
                number = int(recipient["Email"].split("@")[0][1:])
                out.setdefault(("mail", number), at)
    return out


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values)
    )


def run(feeder: Feeder, config: Path, rate: float, seconds: float) -> dict[str, Any]:
    sandbox("/_sandbox/reset", "POST")
    n = max(1, int(rate * seconds))
    lines = [(json.dumps(message(i)) + "\n").encode() for i in range(n)]
    written: list[float] = [0.0] * n
    wall0 = time.time() - time.perf_counter()  # perf_counter -> wall clock

    def stamp(numbers: list[int]) -> None:
        now = wall0 + time.perf_counter()
        for i in numbers:
            written[i] = now

    feeder.start(config)
    t0 = time.perf_counter() + 0.05
    i = 0
    while i < n:
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        # every message due by now (and within the feeder's tick) goes in this send
        due = time.perf_counter() + feeder.tick - t0
        last = min(n, max(i + 1, int(due * rate) + 1))
        numbers = list(range(i, last))
        feeder.send(numbers, b"".join(lines[j] for j in numbers), stamp)
        i = last
    time.sleep(2.0)  # the feed is still open: whatever arrives now was sent without its end
    got = arrivals(sandbox("/_sandbox/received"))
    code = feeder.close()
    stats = sandbox("/_sandbox/stats")
    result: dict[str, Any] = {
        "rate": rate,
        "messages": n,
        "exit": code,
        "429": stats["rate_limited_429"],
    }
    for target in ("events", "attributes", "mail"):
        wanted = [i for i in range(n) if target in expected_targets(i)]
        lat = [(got[(target, i)] - written[i]) * 1000 for i in wanted if (target, i) in got]
        result[target] = {
            "messages": len(wanted),
            "arrived_while_open": len(lat),
            "p50_ms": round(percentile(lat, 50), 1) if lat else None,
            "p99_ms": round(percentile(lat, 99), 1) if lat else None,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each feed")
    parser.add_argument("--rates", default="10,500", help="messages a second, comma-separated")
    parser.add_argument(
        "--linger-ms", type=int, default=500, help="-1: leave the key out (older builds)"
    )
    parser.add_argument(
        "--feeder", default="pipe", help=f"comma-separated, of {', '.join(sorted(FEEDERS))}"
    )
    args = parser.parse_args()
    box = start_sandbox()
    failed = False
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "optisync.yaml"
            text = CONFIG.format(
                port=PORT,
                key=KEY,
                linger=args.linger_ms,
                dl=Path(tmp) / "dl",
                state=Path(tmp) / "state",
                serve_port=SERVE_PORT,
                spool=Path(tmp) / "spool",
            )
            if args.linger_ms < 0:  # a build from before the key: leave it out
                text = text.replace(f"  linger_ms: {args.linger_ms}\n", "")
            config.write_text(text)
            target_ms = max(args.linger_ms, 500) + MARGIN_MS
            runs = [
                (name, float(rate))
                for name in args.feeder.split(",")
                for rate in args.rates.split(",")
            ]
            for name, rate in runs:
                feeder = FEEDERS[name]()
                result = run(feeder, config, rate, args.seconds)
                print(
                    f"{feeder.name} at {rate:g} msg/s for {args.seconds:g} s:"
                    f" {result['messages']} messages, exit {result['exit']},"
                    f" 429s {result['429']}"
                )
                for target in ("events", "attributes", "mail"):
                    r = result[target]
                    ok = (
                        r["arrived_while_open"] == r["messages"]
                        and r["p99_ms"] is not None
                        and r["p99_ms"] <= target_ms
                    )
                    failed |= not ok
                    print(
                        f"  {target:<10} {r['arrived_while_open']}/{r['messages']} arrived,"
                        f" p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms"
                        f" (target p99 <= {target_ms} ms): {'PASS' if ok else 'FAIL'}"
                    )
                failed |= result["exit"] != 0 or result["429"] != 0
    finally:
        box.terminate()
        box.wait(timeout=10)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
