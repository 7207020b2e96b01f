"""One quota per API key: optisync processes sharing a key share one request budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from optisync.optimove.quota import SharedQuota
from optisync.sandbox import Sandbox, SandboxConfig
from tests.support import FakeClock, config_yaml, report

KEY = "quota-key"


def test_two_holders_of_one_file_share_the_budget(tmp_path: Path) -> None:
    clock = FakeClock(start=1000.0)
    path = tmp_path / "q.json"
    a = SharedQuota(path, 3, 10.0, hold=5.0, clock=clock, sleep=clock.sleep, margin=0)
    b = SharedQuota(path, 3, 10.0, hold=5.0, clock=clock, sleep=clock.sleep, margin=0)
    for quota in (a, b, a):
        quota.acquire().release()
    start = clock.now
    b.acquire().release()  # the fourth waits for the first slot's window to pass
    assert clock.now == pytest.approx(start + 10.0)


def test_a_dead_holder_frees_its_slot_after_hold_and_window(tmp_path: Path) -> None:
    clock = FakeClock(start=1000.0)
    quota = SharedQuota(
        tmp_path / "q.json", 1, 1.0, hold=5.0, clock=clock, sleep=clock.sleep, margin=0
    )
    quota.acquire()  # never released: its process was killed mid-request
    start = clock.now
    quota.acquire().release()
    assert clock.now == pytest.approx(start + 6.0)


def test_a_waiter_sees_an_in_flight_slot_freed_without_waiting_out_its_hold(
    tmp_path: Path,
) -> None:
    clock = FakeClock(start=1000.0)
    waits: list[float] = []
    quota = SharedQuota(
        tmp_path / "q.json", 1, 1.0, hold=35.0, clock=clock, sleep=clock.sleep, margin=0
    )
    first = quota.acquire()  # in flight; its answer comes while the second one waits

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.sleep(seconds)
        if len(waits) == 1:
            first.release()

    quota._sleep = sleep
    start = clock.now
    quota.acquire().release()
    assert waits[0] <= SharedQuota.POLL
    assert clock.now - start == pytest.approx(SharedQuota.POLL + 1.0)  # not hold + window


def test_torn_file_is_read_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    quota = SharedQuota(path, 1, 1.0, hold=1.0)
    path.write_text('[["abc", 12')
    quota.acquire().release()
    assert json.loads(path.read_text())[0][1] > 0


def run_three(tmp_path: Path, box: Sandbox, shared: bool) -> list[int]:
    procs = []
    for n in range(3):
        state = tmp_path / ("state" if shared else f"state{n}")
        cfg = tmp_path / f"c{n}.yaml"
        cfg.write_text(
            config_yaml(
                box.url,
                dead_letters=tmp_path / f"dl{n}",
                events_token=False,
                optimove={
                    "events_auth": "api_key_header",  # this sandbox has no events token
                    "events_rate_limit": {"requests": 10, "per_seconds": 1},
                    "retry": {"max_attempts": 8, "base_delay": 0.05, "max_delay": 0.5},
                    "state_dir": str(state),
                },
                events={"MEMBER_TIER": {"name": "member_tier", "context": {"tier": "data.tier"}}},
                routing={"rules": [{"types": ["MEMBER_TIER"], "to": ["events"]}]},
            )
        )
        source = tmp_path / f"in{n}.ndjson"
        source.write_text(
            "\n".join(
                json.dumps(
                    {
                        "id": f"{n}-{i}",
                        "type": "MEMBER_TIER",
                        "member_id": f"M{n}{i}",
                        "occurred_at": "2026-11-25T10:00:00Z",
                        "data": {"tier": "Gold"},
                    }
                )
                for i in range(30)
            )
        )
        env = {**os.environ, "OPTIMOVE_API_KEY": KEY}
        env.pop("OPTISYNC_OPTIMOVE__STATE_DIR", None)  # each config names its own state
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "optisync",
                    "-c",
                    str(cfg),
                    "push-event",
                    "--input",
                    str(source),
                ],
                env=env,
                stderr=subprocess.PIPE,
            )
        )
    codes = []
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert b"Traceback" not in err
        codes.append(proc.returncode)
    return codes


@pytest.mark.slow
def test_three_processes_at_once_provoke_no_429(tmp_path: Path) -> None:
    config = SandboxConfig(api_key=KEY, tenant_id=1234, events_rate_limit=(10, 1.0))
    with Sandbox(config) as box:
        assert run_three(tmp_path, box, shared=True) == [0, 0, 0]
        stats = box.stats
        assert stats["events"] == 90
        assert stats["rate_limited_429"] == 0
        # the control: each process on its own budget overruns the key's quota
        box.reset()
        control = tmp_path / "control"
        control.mkdir()
        run_three(control, box, shared=False)
        assert box.stats["rate_limited_429"] > 0, box.stats
        report(
            f"shared quota: 3 processes x 30 events, 429s shared=0"
            f" separate={box.stats['rate_limited_429']}"
        )


def test_concurrent_threads_never_exceed_the_budget(tmp_path: Path) -> None:
    import time

    quota = SharedQuota(tmp_path / "q.json", 5, 0.5, hold=2.0)
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(4):
            permit = quota.acquire()
            with lock:
                stamps.append(time.monotonic())
            permit.release()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps.sort()
    for i in range(len(stamps) - 5):
        assert stamps[i + 5] - stamps[i] >= 0.5 - 0.01
