"""Real-time delivery benchmarks (issue 3), each a ratio against a baseline in the same run.

    .venv/bin/python benchmarks/realtime.py [--quick] [--skip-memory]

1. cold start: one `optisync push-event` vs a bare `python -c "import httpx; httpx.post(...)"`
   of the same event (median of N runs each), and `optisync --help`;
2. 20,000 events (--only events, sandbox limits off) vs a plain sequential httpx loop;
3. 100,000 attribute updates (--only attributes) with the sandbox enforcing 50 requests / 10 s,
   vs the floor that quota allows: ceil(N / 1,000) calls at 5 per second; 429s counted;
4. peak memory (max RSS) of a push of a large newline-delimited input (default 1 GB);
5. 10,000 transactional emails of one template with the sandbox enforcing 10 calls / s, vs
   the floor: ceil(N / 200) calls at 10 per second; 429s counted.

The sandbox runs in its own process, so client and server each have a core.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OPTISYNC = str(BIN / "optisync")
KEY = "bench-key"
PORT_LIMITED, PORT_OPEN = 18901, 18902

CONFIG = """\
optimove:
  api_url: http://127.0.0.1:{port}
  events_url: http://127.0.0.1:{port}/reportEvent
  tenant_id: 1234
  api_key: {key}
  concurrency: {concurrency}
  rate_limit: {{requests: 50, per_seconds: 10}}
attributes:
  realtime:
    - {{name: TierName, type: string, source: data.tier, events: [MEMBER_TIER]}}
  emd: {{opt_in_key: email_opt_in}}
events:
  MEMBER_TIER: {{name: member_tier, context: {{tier: data.tier}}}}
templates:
  receipt:
    kind: transactional
    template_id: 1002
    event: PURCHASE
    attribute_mappings:
      AMOUNT: {{source: data.amount, format: currency}}
      ORDER_ID: data.order_id
routing:
  rules:
    - {{types: MEMBER_TIER, to: [events, attributes]}}
    - {{types: PURCHASE, to: ["email:receipt"]}}
dead_letter: {{dir: {dl}}}
"""


def event(i: int) -> dict[str, object]:
    return {
        "id": f"e{i}",
        "type": "MEMBER_TIER",
        "member_id": f"M{i:09d}",
        "occurred_at": "2026-11-25T10:00:00Z",
        "data": {"tier": "Gold"},
    }


def write_events(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps(event(i)) + "\n")


def start_sandbox(port: int, limits: bool) -> subprocess.Popen[bytes]:
    args = [OPTISYNC, "sandbox", "--port", str(port), "--api-key", KEY, "--keep", "100"]
    if not limits:
        args.append("--no-limits")
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/_sandbox/stats", headers={"X-API-KEY": KEY})
            return proc
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("sandbox did not start")


def sandbox_call(port: int, path: str, method: str = "GET") -> dict[str, int]:
    r = httpx.request(
        method, f"http://127.0.0.1:{port}/_sandbox/{path}", headers={"X-API-KEY": KEY}
    )
    return r.json() if r.content else {}


def config(tmp: Path, port: int, concurrency: int = 4) -> Path:
    path = tmp / f"optisync-{port}.yaml"
    path.write_text(
        CONFIG.format(port=port, key=KEY, dl=tmp / f"dl-{port}", concurrency=concurrency)
    )
    return path


def timed(args: list[str], **kw: object) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - start


def bench_cold_start(tmp: Path, runs: int) -> dict[str, float]:
    cfg = config(tmp, PORT_OPEN)
    push = [
        OPTISYNC,
        "-c",
        str(cfg),
        "push-event",
        "--only",
        "events",
        "--type",
        "MEMBER_TIER",
        "--member",
        "M1",
        "--id",
        "cold",
        "--occurred-at",
        "2026-11-25T10:00:00Z",
        "--data",
        '{"tier": "Gold"}',
    ]
    body = {
        "tenant": 1234,
        "event": "member_tier",
        "customer": "M1",
        "timestamp": "2026-11-25 10:00:00.000000 UTC",
        "context": {"tier": "Gold"},
    }
    bare = [
        sys.executable,
        "-c",
        f"import httpx; httpx.post('http://127.0.0.1:{PORT_OPEN}/reportEvent', "
        f"json={body!r}, headers={{'X-API-KEY': '{KEY}'}})",
    ]
    help_ = [OPTISYNC, "--help"]
    for args in (push, bare, help_):  # warm the page cache and the .pyc files
        timed(args)
    t_push, t_bare, t_help = [], [], []
    for _ in range(runs):  # interleaved, so machine noise hits both alike
        t_push.append(timed(push))
        t_bare.append(timed(bare))
        t_help.append(timed(help_))
    push_s, bare_s = statistics.median(t_push), statistics.median(t_bare)
    return {
        "push_s": push_s,
        "bare_httpx_s": bare_s,
        "ratio": push_s / bare_s,
        "help_s": statistics.median(t_help),
    }


def bench_events(tmp: Path, n: int) -> dict[str, float]:
    source = tmp / "events.ndjson"
    write_events(source, n)
    cfg = config(tmp, PORT_OPEN)
    sandbox_call(PORT_OPEN, "reset", "POST")
    ours = timed(
        [OPTISYNC, "-c", str(cfg), "push-event", "--only", "events", "--input", str(source)]
    )
    accepted = sandbox_call(PORT_OPEN, "stats")["events"]
    loop = f"""
import json, httpx
with httpx.Client(headers={{'X-API-KEY': '{KEY}'}}) as c:
    for line in open({str(source)!r}):
        e = json.loads(line)
        c.post('http://127.0.0.1:{PORT_OPEN}/reportEvent', json={{
            'tenant': 1234, 'event': 'member_tier', 'customer': e['member_id'],
            'timestamp': '2026-11-25 10:00:00.000000 UTC', 'context': e['data']}})
"""
    sandbox_call(PORT_OPEN, "reset", "POST")
    base = timed([sys.executable, "-c", loop])
    return {
        "events": n,
        "accepted": accepted,
        "optisync_s": ours,
        "optisync_events_per_s": n / ours,
        "httpx_loop_s": base,
        "httpx_loop_events_per_s": n / base,
        "ratio": base / ours,
    }


def bench_attributes(tmp: Path, n: int) -> dict[str, float]:
    source = tmp / "attrs.ndjson"
    write_events(source, n)
    cfg = config(tmp, PORT_LIMITED)
    sandbox_call(PORT_LIMITED, "reset", "POST")
    seconds = timed(
        [OPTISYNC, "-c", str(cfg), "push-event", "--only", "attributes", "--input", str(source)]
    )
    stats = sandbox_call(PORT_LIMITED, "stats")
    calls = math.ceil(n / 1000)
    floor = calls / 5.0
    return {
        "updates": n,
        "calls": stats["accepted_attributes"],
        "seconds": seconds,
        "floor_s": floor,
        "ratio_to_floor": seconds / floor,
        "rate_limited_429": stats["rate_limited_429"],
    }


def bench_transactional(tmp: Path, n: int) -> dict[str, float]:
    source = tmp / "purchases.ndjson"
    with source.open("w") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "id": f"p{i}",
                        "type": "PURCHASE",
                        "member_id": f"M{i:09d}",
                        "email": f"m{i}@example.com",
                        "locale": "fr_CA",
                        "occurred_at": "2026-11-25T10:00:00Z",
                        "data": {
                            "order_id": f"O{i}",
                            "amount": {"amount": "1234.50", "currency": "CAD"},
                        },
                    }
                )
                + "\n"
            )
    cfg = config(tmp, PORT_LIMITED, concurrency=int(os.environ.get("BENCH_CONCURRENCY", "4")))
    sandbox_call(PORT_LIMITED, "reset", "POST")
    seconds = timed(
        [OPTISYNC, "-c", str(cfg), "push-event", "--only", "email", "--input", str(source)]
    )
    stats = sandbox_call(PORT_LIMITED, "stats")
    floor = math.ceil(n / 200) / 10.0
    return {
        "emails": n,
        "calls": stats["accepted_transactional"],
        "seconds": seconds,
        "floor_s": floor,
        "ratio_to_floor": seconds / floor,
        "rate_limited_429": stats["rate_limited_429"],
    }


def bench_memory(tmp: Path, megabytes: int) -> dict[str, float]:
    source = tmp / "big.ndjson"
    target = megabytes * 1024 * 1024
    with source.open("w") as f:
        i = 0
        pad = "x" * 120
        while f.tell() < target:
            e = event(i)
            e["data"] = {"tier": "Gold", "previous_tier": pad}
            f.write(json.dumps(e) + "\n")
            i += 1
    cfg = config(tmp, PORT_OPEN)
    sandbox_call(PORT_OPEN, "reset", "POST")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    seconds = timed(
        [OPTISYNC, "-c", str(cfg), "push-event", "--only", "attributes", "--input", str(source)]
    )
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    source.unlink()
    return {
        "input_mb": megabytes,
        "lines": i,
        "seconds": seconds,
        "peak_rss_mb": peak_kb / 1024,
        "earlier_children_peak_mb": before / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-mb", type=int, default=1024)
    parser.add_argument(
        "--only",
        action="append",
        choices=["cold_start", "events", "attributes", "transactional", "memory"],
        help="run only these measurements (repeatable)",
    )
    args = parser.parse_args()
    os.environ.pop("OPTIMOVE_API_KEY", None)
    # An installed package has its bytecode compiled at install time; an editable checkout
    # under PYTHONDONTWRITEBYTECODE=1 would recompile every module on every start.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "optisync")], check=True)
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        limited, open_ = start_sandbox(PORT_LIMITED, True), start_sandbox(PORT_OPEN, False)
        try:
            quick = args.quick
            plan = {
                "cold_start": lambda: bench_cold_start(tmp, 3 if quick else 9),
                "events": lambda: bench_events(tmp, 2000 if quick else 20000),
                "attributes": lambda: bench_attributes(tmp, 10000 if quick else 100000),
                "transactional": lambda: bench_transactional(tmp, 2000 if quick else 10000),
                "memory": lambda: bench_memory(tmp, 20 if quick else args.memory_mb),
            }
            for name, run in plan.items():
                if (args.only and name not in args.only) or (name == "memory" and args.skip_memory):
                    continue
                results[name] = run()
                print(json.dumps({name: results[name]}), flush=True)
        finally:
            limited.terminate()
            open_.terminate()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
