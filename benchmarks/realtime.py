"""Real-time delivery benchmarks, each checked against a target measured in the same run.

    .venv/bin/python benchmarks/realtime.py [--quick] [--only NAME] [--skip-memory]

Input is shaped like the bundled example (``MEMBER_PROFILE_UPDATE`` with names, a postal
code and Extended Member Data; ``PURCHASE`` for mail), not a minimal event.

1. cold_start: one `optisync push-event` vs a bare `python -c "import httpx; httpx.post(...)"`
   of the same event (median of N runs each, interleaved), and `optisync --help`;
2. pipeline: 100,000 profile updates (`--only attributes`, sandbox limits off): updates per
   second from the command's start to its end, everything parsed, validated, routed,
   planned, packed and accepted;
3. events: 20,000 events (`--only events`, limits off) vs a plain sequential httpx loop,
   and vs the same loop on a pool of `optimove.concurrency` threads, each against the same
   server: the fast loopback gateway of `loopback.py` (the target; the sandbox serves too
   few requests a second to tell a fast client from a slow one), then the sandbox; optisync
   runs at concurrency 4 (the default) and 16;
4. attributes: 100,000 profile updates (`--only attributes`) with the sandbox enforcing 50
   requests / 10 s, vs the sliding-window floor (ceil(calls / 50) - 1) x 10 s + one round
   trip; 429s counted;
5. transactional: 10,000 mails of one template at 10 calls / s, vs the floor
   (ceil(calls / 10) - 1) x 1 s + one round trip; 429s counted;
6. memory: peak RSS of a push of a large newline-delimited input (default 1 GB).

Every measurement checks that the sandbox accepted all the work (calls, customers,
events, recipients) and prints PASS or FAIL per target. The sandboxes run in their own
processes, so client and server each have a core.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OPTISYNC = os.environ.get("BENCH_OPTISYNC", str(BIN / "optisync"))  # or another build
KEY = "bench-key"
PORT_LIMITED, PORT_OPEN, PORT_FAST = 18901, 18902, 18903
WIDE = 16  # the events run is repeated with this optimove.concurrency
KEEP = 400  # requests each sandbox keeps, enough to count every customer and recipient

GENERAL = (50, 10.0)  # Optimove's general quota: requests per sliding window of seconds
TRANSACTIONAL = (10, 1.0)
CUSTOMERS_PER_CALL = 1000
RECIPIENTS_PER_CALL = 200

CONFIG = """\
optimove:
  api_url: http://127.0.0.1:{port}
  events_url: http://127.0.0.1:{events_port}/reportEvent
  tenant_id: 1234
  api_key: {key}
  events_auth: api_key_header  # as the httpx baselines send it; both gateways take it
  concurrency: {concurrency}
  rate_limit: {{requests: {general}, per_seconds: 10}}
  transactional_rate_limit: {{requests: {transactional}, per_seconds: 1}}
attributes:
  realtime:
    - {{name: FirstName, type: string, source: data.first_name, events: [MEMBER_PROFILE_UPDATE]}}
    - {{name: LastName, type: string, source: data.last_name, events: [MEMBER_PROFILE_UPDATE]}}
    - {{name: PreferredLanguage, type: string, source: data.language,
        events: [MEMBER_PROFILE_UPDATE]}}
    - {{name: FavouriteStore, type: string, source: data.emd.favourite_store,
        events: [MEMBER_PROFILE_UPDATE]}}
    - {{name: TierName, type: string, source: data.tier, events: [MEMBER_TIER]}}
  emd: {{opt_in_key: email_opt_in, map: {{favourite_store: FavouriteStore}}}}
events:
  MEMBER_PROFILE_UPDATE: {{name: member_profile_update, context: {{language: data.language}}}}
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
    - {{types: MEMBER_PROFILE_UPDATE, to: [events, attributes, opt_in, promotions]}}
    - {{types: MEMBER_TIER, to: [events, attributes]}}
    - {{types: PURCHASE, to: ["email:receipt"]}}
dead_letter: {{dir: {dl}}}
"""

FIRST = ["Ann", "Marc", "Li", "Sofia", "Jean-Luc", "Priya", "Omar", "Zoë", "Élise", "Kofi"]
LAST = ["Lee-Smith", "Tremblay", "O'Neil", "Nguyen", "Gagnon", "Roy", "Côté", "Singh"]
STORES = ["Queen St", "Rue Ste-Catherine", "Robson", "Spadina", "Sainte-Foy"]


def profile_update(i: int, rng: random.Random) -> dict[str, object]:
    """Shaped like the example's MEMBER_PROFILE_UPDATE (examples/events.ndjson)."""
    return {
        "id": f"evt-{i:08d}",
        "type": "MEMBER_PROFILE_UPDATE",
        "member_id": f"M{i:09d}",
        "occurred_at": "2026-11-25T11:00:00Z",
        "email": f"member{i}@example.com",
        "data": {
            "first_name": rng.choice(FIRST),
            "last_name": rng.choice(LAST),
            "language": rng.choice(["en", "fr"]),
            "postal_code": f"M5V {i % 10}T{i % 7}",
            "emd": {
                "email_opt_in": rng.choice("YN"),
                "favourite_store": rng.choice(STORES),
                "shoe_size": 4 + i % 9,
            },
        },
    }


def write_events(path: Path, n: int) -> None:
    rng = random.Random(13)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps(profile_update(i, rng), ensure_ascii=False) + "\n")


def start_sandbox(port: int, limits: bool) -> subprocess.Popen[bytes]:
    args = [OPTISYNC, "sandbox", "--port", str(port), "--api-key", KEY, "--keep", str(KEEP)]
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


def sandbox_call(port: int, path: str, method: str = "GET") -> Any:
    r = httpx.request(
        method,
        f"http://127.0.0.1:{port}/_sandbox/{path}",
        headers={"X-API-KEY": KEY},
        timeout=120,
    )
    return r.json() if r.content else {}


def accepted_items(port: int, kind: str, key: str) -> int:
    """How many customers (or recipients) the sandbox accepted in its kept requests."""
    return sum(len(r["body"][key]) for r in sandbox_call(port, f"received?kind={kind}"))


def config(tmp: Path, port: int, concurrency: int = 4, events_port: int | None = None) -> Path:
    """The benchmark's config; against the open sandbox the client's own quotas are off
    too (a million calls a window), so that "limits off" means off at both ends.
    ``events_port`` sends events elsewhere (the fast loopback gateway)."""
    path = tmp / f"optisync-{port}-{concurrency}-{events_port}.yaml"
    limited = port == PORT_LIMITED
    path.write_text(
        CONFIG.format(
            port=port,
            events_port=events_port or port,
            key=KEY,
            dl=tmp / f"dl-{port}",
            concurrency=concurrency,
            general=GENERAL[0] if limited else 1_000_000,
            transactional=TRANSACTIONAL[0] if limited else 1_000_000,
        )
    )
    return path


def timed(args: list[str], **kw: object) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - start


def push(cfg: Path, only: str, source: Path) -> float:
    return timed(
        [OPTISYNC, "-c", str(cfg), "push-event", "--fresh", "--only", only, "--input", str(source)]
    )


def push_peak(cfg: Path, only: str, source: Path) -> tuple[float, float]:
    """``push`` run under /usr/bin/time -f %M: its seconds and its own peak RSS in MB (the
    harness's children peak would hold every earlier child's)."""
    out = Path(tempfile.mkstemp()[1])
    seconds = timed(
        [
            "/usr/bin/time",
            "-f",
            "%M",
            "-o",
            str(out),
            OPTISYNC,
            "-c",
            str(cfg),
            "push-event",
            "--fresh",
            "--only",
            only,
            "--input",
            str(source),
        ]
    )
    peak_kb = float(out.read_text().split()[-1])
    out.unlink()
    return seconds, peak_kb / 1024


def round_trip(body: Any, path: str) -> float:
    """One request of this size to the open sandbox (median of 5): the floor's last leg."""
    times = []
    with httpx.Client(headers={"X-API-KEY": KEY}) as client:
        for _ in range(5):
            start = time.perf_counter()
            client.post(f"http://127.0.0.1:{PORT_OPEN}{path}", json=body).raise_for_status()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def window_floor(calls: int, quota: tuple[int, float], rtt: float) -> float:
    """The least time a sliding-window quota allows: a full window between call k and call
    k + requests, so the last batch starts (ceil(calls / requests) - 1) windows in."""
    requests, window = quota
    return (math.ceil(calls / requests) - 1) * window + rtt


def bench_cold_start(tmp: Path, runs: int) -> dict[str, Any]:
    cfg = config(tmp, PORT_OPEN)
    push_ = [
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
    for args in (push_, bare, help_):  # warm the page cache and the .pyc files
        timed(args)
    t_push, t_bare, t_help = [], [], []
    for _ in range(runs):  # interleaved, so machine noise hits both alike
        t_push.append(timed(push_))
        t_bare.append(timed(bare))
        t_help.append(timed(help_))
    push_s, bare_s = statistics.median(t_push), statistics.median(t_bare)
    ratio = push_s / bare_s
    return {
        "push_s": push_s,
        "bare_httpx_s": bare_s,
        "ratio": ratio,
        "help_s": statistics.median(t_help),
        "targets": {"ratio <= 1.5": ratio <= 1.5},
    }


def bench_pipeline(tmp: Path, n: int) -> dict[str, Any]:
    source = tmp / f"profiles-{n}.ndjson"
    if not source.exists():
        write_events(source, n)
    cfg = config(tmp, PORT_OPEN)
    sandbox_call(PORT_OPEN, "reset", "POST")
    seconds = push(cfg, "attributes", source)
    stats = sandbox_call(PORT_OPEN, "stats")
    customers = accepted_items(PORT_OPEN, "attributes", "CustomerNewAttributesValuesList")
    rate = n / seconds
    return {
        "updates": n,
        "calls": stats["accepted_attributes"],
        "customers_accepted": customers,
        "seconds": seconds,
        "updates_per_s": rate,
        "targets": {
            "all accepted": customers == n
            and stats["accepted_attributes"] == math.ceil(n / CUSTOMERS_PER_CALL),
            ">= 10,000 updates/s": rate >= 10_000,
        },
    }


def start_loopback(port: int) -> subprocess.Popen[bytes]:
    """The fast events gateway of benchmarks/loopback.py, in its own process."""
    script = str(Path(__file__).with_name("loopback.py"))
    proc = subprocess.Popen([sys.executable, script, str(port), KEY, "1234"])
    for _ in range(100):
        try:
            httpx.post(f"http://127.0.0.1:{port}/_reset")
            return proc
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("loopback gateway did not start")


def gateway_events(port: int) -> int:
    """Events accepted since the last reset, by the sandbox or the fast gateway."""
    if port == PORT_FAST:
        stats = httpx.get(f"http://127.0.0.1:{port}/_stats").json()
        assert stats["rejected"] == 0, stats
        return int(stats["events"])
    return int(sandbox_call(port, "stats")["events"])


def reset_gateway(port: int) -> None:
    if port == PORT_FAST:
        httpx.post(f"http://127.0.0.1:{port}/_reset")
    else:
        sandbox_call(port, "reset", "POST")


def bench_events(tmp: Path, n: int) -> dict[str, Any]:
    """optisync and the two httpx loops, against the fast loopback gateway (the target: it
    measures the clients) and against the sandbox (what it serves caps every client)."""
    source = tmp / f"profiles-{n}.ndjson"
    if not source.exists():
        write_events(source, n)
    concurrency = 4
    results: dict[str, Any] = {"events": n, "concurrency": concurrency}
    for server, port in (("fast_gateway", PORT_FAST), ("sandbox", PORT_OPEN)):
        results[server] = events_against(tmp, source, n, port, concurrency)
    fast = results["fast_gateway"]
    results["targets"] = {
        "all accepted": all(results[s]["all_accepted"] for s in ("fast_gateway", "sandbox")),
        ">= 3x the sequential loop (fast gateway)": fast["ratio_to_sequential"] >= 3.0,
        f">= 3x the sequential loop (fast gateway, concurrency {WIDE})": fast[
            f"ratio_to_sequential_concurrency_{WIDE}"
        ]
        >= 3.0,
    }
    return results


def events_against(tmp: Path, source: Path, n: int, port: int, concurrency: int) -> dict[str, Any]:
    cfg = config(tmp, PORT_OPEN, concurrency=concurrency, events_port=port)
    reset_gateway(port)
    ours = push(cfg, "events", source)
    accepted = gateway_events(port)
    # the same run with more connections, as optimove.concurrency allows (up to 64)
    reset_gateway(port)
    wide = push(config(tmp, PORT_OPEN, concurrency=WIDE, events_port=port), "events", source)
    wide_accepted = gateway_events(port)
    # The baselines build the same body from each line, as a hand-written client would.
    loop = f"""
import json, sys, httpx
from concurrent.futures import ThreadPoolExecutor
url = 'http://127.0.0.1:{port}/reportEvent'
def body(line):
    e = json.loads(line)
    return {{'tenant': 1234, 'event': 'member_profile_update', 'customer': e['member_id'],
            'timestamp': '2026-11-25 11:00:00.000000 UTC',
            'context': {{'language': e['data']['language']}}}}
with httpx.Client(headers={{'X-API-KEY': '{KEY}'}},
                  limits=httpx.Limits(max_connections={concurrency})) as c:
    lines = open({str(source)!r}, encoding='utf-8')
    if sys.argv[1] == '1':
        for line in lines:
            c.post(url, json=body(line)).raise_for_status()
    else:
        with ThreadPoolExecutor(int(sys.argv[1])) as pool:
            for r in pool.map(lambda line: c.post(url, json=body(line)), lines):
                r.raise_for_status()
"""
    reset_gateway(port)
    sequential = timed([sys.executable, "-c", loop, "1"])
    seq_accepted = gateway_events(port)
    reset_gateway(port)
    pooled = timed([sys.executable, "-c", loop, str(concurrency)])
    pool_accepted = gateway_events(port)
    return {
        "accepted": accepted,
        "optisync_s": ours,
        "optisync_events_per_s": n / ours,
        f"optisync_concurrency_{WIDE}_s": wide,
        f"optisync_concurrency_{WIDE}_events_per_s": n / wide,
        f"ratio_to_sequential_concurrency_{WIDE}": sequential / wide,
        "httpx_sequential_s": sequential,
        "httpx_sequential_events_per_s": n / sequential,
        "httpx_pool_s": pooled,
        "httpx_pool_events_per_s": n / pooled,
        "ratio_to_sequential": sequential / ours,
        "ratio_to_same_concurrency_pool": pooled / ours,
        "all_accepted": accepted == n == wide_accepted and seq_accepted == n == pool_accepted,
    }


def bench_attributes(tmp: Path, n: int) -> dict[str, Any]:
    source = tmp / f"profiles-{n}.ndjson"
    if not source.exists():
        write_events(source, n)
    cfg = config(tmp, PORT_LIMITED)
    calls = math.ceil(n / CUSTOMERS_PER_CALL)
    rng = random.Random(1)
    full = {
        "CustomerNewAttributesValuesList": [
            {
                "CustomerID": f"X{i:09d}",
                "Attributes": [
                    {"RealFieldName": "FirstName", "Value": rng.choice(FIRST)},
                    {"RealFieldName": "LastName", "Value": rng.choice(LAST)},
                    {"RealFieldName": "PreferredLanguage", "Value": "en"},
                    {"RealFieldName": "FavouriteStore", "Value": rng.choice(STORES)},
                ],
            }
            for i in range(min(n, CUSTOMERS_PER_CALL))
        ]
    }
    rtt = round_trip(full, "/Customers/UpdateCustomerAttributes")
    sandbox_call(PORT_LIMITED, "reset", "POST")
    seconds, peak_mb = push_peak(cfg, "attributes", source)
    stats = sandbox_call(PORT_LIMITED, "stats")
    customers = accepted_items(PORT_LIMITED, "attributes", "CustomerNewAttributesValuesList")
    floor = window_floor(calls, GENERAL, rtt)
    ratio = seconds / floor
    return {
        "updates": n,
        "calls": stats["accepted_attributes"],
        "customers_accepted": customers,
        "seconds": seconds,
        "round_trip_s": rtt,
        "floor_s": floor,
        "ratio_to_floor": ratio,
        "rate_limited_429": stats["rate_limited_429"],
        "peak_rss_mb": peak_mb,
        "targets": {
            "all accepted": customers == n and stats["accepted_attributes"] == calls,
            "<= 1.15x the floor": ratio <= 1.15,
            "no 429": stats["rate_limited_429"] == 0,
        },
    }


def bench_transactional(tmp: Path, n: int) -> dict[str, Any]:
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
    calls = math.ceil(n / RECIPIENTS_PER_CALL)
    body = {
        "TemplateID": 1002,
        "UniqueMessageID": "bench-rtt",
        "Recipients": [
            {
                "Email": f"m{i}@example.com",
                "Personalizations": [
                    {"Tag": "AMOUNT", "Value": "1 234,50 $"},
                    {"Tag": "ORDER_ID", "Value": f"O{i}"},
                ],
            }
            for i in range(min(n, RECIPIENTS_PER_CALL))
        ],
    }
    times = []
    with httpx.Client(headers={"X-API-KEY": KEY}) as client:
        for k in range(5):  # a fresh id each time: a repeat would be answered 409 at once
            body["UniqueMessageID"] = f"bench-rtt-{k}-{time.time()}"
            start = time.perf_counter()
            client.post(
                f"http://127.0.0.1:{PORT_OPEN}/TransactionalMail/SendTransactionalMail", json=body
            ).raise_for_status()
            times.append(time.perf_counter() - start)
    rtt = statistics.median(times)
    sandbox_call(PORT_LIMITED, "reset", "POST")
    seconds = push(cfg, "email", source)
    stats = sandbox_call(PORT_LIMITED, "stats")
    recipients = accepted_items(PORT_LIMITED, "transactional", "Recipients")
    floor = window_floor(calls, TRANSACTIONAL, rtt)
    ratio = seconds / floor
    return {
        "emails": n,
        "calls": stats["accepted_transactional"],
        "recipients_accepted": recipients,
        "seconds": seconds,
        "round_trip_s": rtt,
        "floor_s": floor,
        "ratio_to_floor": ratio,
        "rate_limited_429": stats["rate_limited_429"],
        "targets": {
            "all accepted": recipients == n and stats["accepted_transactional"] == calls,
            "<= 1.15x the floor": ratio <= 1.15,
            "no 429": stats["rate_limited_429"] == 0,
        },
    }


def bench_memory(tmp: Path, megabytes: int) -> dict[str, Any]:
    source = tmp / "big.ndjson"
    target = megabytes * 1024 * 1024
    rng = random.Random(7)
    with source.open("w", encoding="utf-8") as f:
        i = 0
        while f.tell() < target:
            f.write(json.dumps(profile_update(i, rng), ensure_ascii=False) + "\n")
            i += 1
    cfg = config(tmp, PORT_OPEN)
    sandbox_call(PORT_OPEN, "reset", "POST")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    seconds = push(cfg, "attributes", source)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    source.unlink()
    return {
        "input_mb": megabytes,
        "lines": i,
        "seconds": seconds,
        "peak_rss_mb": peak_kb / 1024,
        "earlier_children_peak_mb": before / 1024,
        "targets": {"< 150 MB": peak_kb / 1024 < 150},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-mb", type=int, default=1024)
    names = ["cold_start", "pipeline", "events", "attributes", "transactional", "memory"]
    parser.add_argument(
        "--only", action="append", choices=names, help="run only these measurements (repeatable)"
    )
    args = parser.parse_args()
    os.environ.pop("OPTIMOVE_API_KEY", None)
    # An installed package has its bytecode compiled at install time; an editable checkout
    # under PYTHONDONTWRITEBYTECODE=1 would recompile every module on every start.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "optisync")], check=True)
    results: dict[str, Any] = {"load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        limited, open_ = start_sandbox(PORT_LIMITED, True), start_sandbox(PORT_OPEN, False)
        fast = start_loopback(PORT_FAST)
        try:
            quick = args.quick
            plan = {
                "cold_start": lambda: bench_cold_start(tmp, 3 if quick else 9),
                "pipeline": lambda: bench_pipeline(tmp, 10000 if quick else 100000),
                "events": lambda: bench_events(tmp, 2000 if quick else 20000),
                "attributes": lambda: bench_attributes(tmp, 10000 if quick else 100000),
                "transactional": lambda: bench_transactional(tmp, 2000 if quick else 10000),
                "memory": lambda: bench_memory(tmp, 20 if quick else args.memory_mb),
            }
            for name, run in plan.items():
                if (args.only and name not in args.only) or (name == "memory" and args.skip_memory):
                    continue
                results[name] = result = run()
                result["load_average"] = os.getloadavg()[0]
                print(json.dumps({name: result}), flush=True)
                for target, ok in result["targets"].items():
                    print(f"{'PASS' if ok else 'FAIL'}  {name}: {target}", file=sys.stderr)
        finally:
            limited.terminate()
            open_.terminate()
            fast.terminate()
    print(json.dumps(results, indent=2))
    verdicts = [ok for r in results.values() if isinstance(r, dict) for ok in r["targets"].values()]
    print(f"{sum(verdicts)}/{len(verdicts)} targets met", file=sys.stderr)


if __name__ == "__main__":
    main()
