"""Crash suite: push-event and replay killed with SIGKILL at seeded random moments.

After every kill: no half-written dead letter is visible, the lock is recovered, and a
rerun finishes the work without losing a message or mailing anyone twice.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from optisync.realtime.deadletter import DeadLetterStore
from optisync.sandbox import Faults, Sandbox, SandboxConfig
from tests import oracle
from tests.support import (
    EXAMPLES,
    report,
    tier_or_redemption,
    tier_or_redemption_config,
)

KEY, TOKEN = "crash-key", "crash-token"
TRIALS = 20
OPTISYNC = [sys.executable, "-m", "optisync"]


def messages(n: int) -> list[dict[str, Any]]:
    return [tier_or_redemption(i, redemption=i % 2 == 0) for i in range(n)]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Sandbox, dict[str, str], Path]]:
    config = SandboxConfig(
        api_key=KEY, tenant_id=1234, events_token=TOKEN, enforce_limits=False, keep_received=None
    )
    with Sandbox(config) as box:
        path = tmp_path / "optisync.yaml"
        path.write_text(tier_or_redemption_config(box.url, tmp_path))
        environ = {
            **os.environ,
            "OPTISYNC_CONFIG": str(path),
            "OPTIMOVE_API_KEY": KEY,
            "OPTIMOVE_EVENTS_TOKEN": TOKEN,
        }
        yield box, environ, tmp_path


CRASH_TABLE = {
    "MEMBER_TIER": ("event:member_tier", "attributes"),
    "REDEMPTION": ("event:redemption", "mail:11"),
}
# Requests that may be in the air when a run is killed: sent, maybe accepted, but their
# answer not yet settled into the journal, so a rerun may send their calls again.
IN_THE_AIR = 16


def run(args: list[str], environ: dict[str, str]) -> int:
    proc = subprocess.Popen(
        [*OPTISYNC, *args], env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err, err.decode()
    return proc.returncode


def kill_after_requests(args: list[str], environ: dict[str, str], box: Sandbox, n: int) -> str:
    """Start optisync, SIGKILL it once the sandbox has seen ``n`` more requests, and say
    where the kill landed: "mid-send" (alive, n requests seen) or "finished" (it ended
    first). The process is frozen with SIGSTOP before the count is read, so what is read is
    where it was when it died."""
    target = box.stats["requests"] + n
    proc = subprocess.Popen(
        [*OPTISYNC, *args], env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and box.stats["requests"] < target:
        assert time.monotonic() < deadline, "no progress within 60 s"
        time.sleep(0.001)
    phase = "finished"
    if proc.poll() is None:
        proc.send_signal(signal.SIGSTOP)
        seen = box.stats["requests"]
        proc.send_signal(signal.SIGKILL)
        assert seen >= target, "killed before the n-th request"
        phase = "mid-send"
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err, err.decode()
    if phase == "mid-send":
        assert proc.returncode == -signal.SIGKILL
    return phase


def quiet_count(box: Sandbox) -> int:
    """How many requests the sandbox accepted, once the ones a killed run left in the air
    have been answered (the count holds still for a while)."""
    last, still_since = -1, time.monotonic()
    while time.monotonic() - still_since < 0.3:
        now = len(box.received())
        if now != last:
            last, still_since = now, time.monotonic()
        time.sleep(0.02)
    return last


def check_folder(store: DeadLetterStore) -> None:
    """Every letter visible in new/ is whole (it parses); tmp/ is never read."""
    for path in store.new_dir.iterdir():
        json.loads(path.read_bytes())


def resent_after_acknowledged(got: oracle.Arrived, kills: list[int]) -> list[tuple[str, str]]:
    """Calls sent again although their first arrival was settled before any kill: only
    the last IN_THE_AIR requests before a kill may come again."""
    first: dict[tuple[str, str], int] = {}
    bad = []
    for position, calls in enumerate(got.order):
        for call in calls:
            if call not in first:
                first[call] = position
                continue
            was = first[call]
            if not any(k - IN_THE_AIR <= was < k <= position for k in kills):
                bad.append(call)
    return bad


@pytest.mark.slow
def test_push_killed_mid_send_then_rerun(env: tuple[Sandbox, dict[str, str], Path]) -> None:
    box, environ, tmp = env
    rng = random.Random(20261126)
    source = tmp / "in.ndjson"
    msgs = messages(800)
    source.write_text("\n".join(json.dumps(m) for m in msgs) + "\n")
    index = oracle.Index(msgs)
    expected = oracle.expected_table(msgs, CRASH_TABLE)
    box.set_faults(Faults(latency_ms=2))
    store = DeadLetterStore(tmp / "dl")
    phases: Counter[str] = Counter()
    kills: list[int] = []
    for _ in range(TRIALS):
        phase = kill_after_requests(
            ["push-event", "--input", str(source)], environ, box, rng.randint(1, 40)
        )
        phases[phase] += 1
        if phase == "mid-send":
            kills.append(quiet_count(box))
        check_folder(store)
    # the lock is recovered and the rerun finishes
    assert run(["push-event", "--input", str(source)], environ) == 0
    assert store.count() == 0
    got = oracle.arrived(index, box.received())
    assert oracle.missing(expected, got) == [], "a call was lost"
    assert oracle.unexpected(expected, got) == []
    assert got.duplicated_mail() == 0, "a member was mailed twice"
    resent = resent_after_acknowledged(got, kills)
    assert resent == [], f"{len(resent)} acknowledged calls sent again, e.g. {resent[:3]}"
    report(
        f"crash suite (push): trials={TRIALS} kill phases={dict(phases)} messages={len(msgs)}"
        f" calls={sum(expected.values())} duplicated_events={got.duplicated('event:')}"
        f" duplicated_attributes={got.duplicated('attributes')} (all in the air at a kill)"
        f" duplicated_mail=0 lost=0"
    )
    assert phases["mid-send"] >= TRIALS * 3 // 4  # the kills really cut runs mid-send


@pytest.mark.slow
def test_replay_killed_mid_send_then_rerun(env: tuple[Sandbox, dict[str, str], Path]) -> None:
    box, environ, tmp = env
    rng = random.Random(7)
    source = tmp / "in.ndjson"
    msgs = messages(300)
    source.write_text("\n".join(json.dumps(m) for m in msgs) + "\n")
    index = oracle.Index(msgs)
    expected = oracle.expected_table(msgs, CRASH_TABLE)
    box.set_faults(Faults(error_rate=1.0, seed=1))
    assert run(["push-event", "--input", str(source)], environ) == 6
    store = DeadLetterStore(tmp / "dl")
    before = store.count()
    assert before == sum(expected.values())  # one letter per call, none sent
    box.reset()
    box.set_faults(Faults(latency_ms=15))
    phases: Counter[str] = Counter()
    kills: list[int] = []
    for _ in range(TRIALS):
        phase = kill_after_requests(["replay"], environ, box, rng.randint(1, 15))
        phases[phase] += 1
        if phase == "mid-send":
            kills.append(quiet_count(box))
        check_folder(store)
        if store.count() == 0:
            break
    assert run(["replay"], environ) == 0
    assert store.count() == 0
    got = oracle.arrived(index, box.received())
    assert oracle.missing(expected, got) == [], "a call was lost"
    assert got.duplicated_mail() == 0, "a member was mailed twice"
    resent = resent_after_acknowledged(got, kills)
    assert resent == [], f"{len(resent)} acknowledged calls sent again, e.g. {resent[:3]}"
    report(
        f"crash suite (replay): kill phases={dict(phases)} letters={before}"
        f" duplicated_events={got.duplicated('event:')} lost=0 duplicated_mail=0"
    )
    assert phases["mid-send"] >= 5


@pytest.mark.slow
def test_export_killed_at_random_then_rerun(tmp_path: Path) -> None:
    """export-batch killed at 20 seeded moments: only whole files are ever visible, every
    visible data file is listed in a manifest with its sha256, and the rerun finishes."""
    import csv
    import gzip
    import hashlib
    import shutil

    shutil.copytree(EXAMPLES / "data", tmp_path / "examples" / "data")
    config = tmp_path / "examples" / "optisync.yaml"
    config.write_text(
        (EXAMPLES / "optisync.yaml")
        .read_text()
        .replace("templates/", str(EXAMPLES / "templates") + "/")
    )
    members = tmp_path / "examples" / "data" / "members.csv"
    lines = members.read_text().splitlines()
    with members.open("a") as fh:
        for i in range(150_000):
            fh.write(lines[1].replace("M000001", f"K{i:07d}") + "\n")
    expected = {line.split(",")[0] for line in members.read_text().splitlines()[1:]}
    root = tmp_path / "var" / "export"
    env = dict(os.environ)
    env.pop("OPTISYNC_OPTIMOVE__STATE_DIR", None)

    def visible_files_are_whole() -> None:
        """Whole files only; and where _SUCCESS stands, the manifest lists every file.

        A killed run may leave whole, published files that no manifest lists yet, but only
        while its date folder has no _SUCCESS marker, so Optimove's ingestion never reads
        them; the next run removes them.
        """
        for day in (p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
            listed: dict[str, str] = {}
            manifest = day / "manifest.json"
            if manifest.exists():
                for run in json.loads(manifest.read_text())["runs"]:
                    for f in run["files"]:
                        listed[str(day / f["path"])] = f["sha256"]
            for path in day.rglob("*"):
                if (
                    path.is_dir()
                    or path.name.startswith(".")
                    or path.name
                    in {
                        "manifest.json",
                        "_SUCCESS",
                    }
                ):
                    continue
                gzip.decompress(path.read_bytes())  # a half-written gzip would fail here
                if str(path) in listed:
                    assert hashlib.sha256(path.read_bytes()).hexdigest() == listed[str(path)]
                else:
                    assert not (day / "_SUCCESS").exists(), f"{path}: unlisted beside _SUCCESS"

    def data_files() -> tuple[set[Path], set[Path]]:
        """Hidden temporaries and visible data files under the output folder."""
        files = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
        hidden = {p for p in files if p.name.startswith(".tmp-")}
        visible = {
            p
            for p in files
            if not p.name.startswith(".") and p.name not in {"manifest.json", "_SUCCESS"}
        }
        return hidden, visible

    def success_markers() -> set[Path]:
        return set(root.glob("*/_SUCCESS")) if root.exists() else set()

    phases: Counter[str] = Counter()
    kills: Counter[str] = Counter()
    trial = 0
    # alternate: kill while a file is being written, or right after the first rename;
    # a kill that misses its phase is reported and the trial is tried again
    while min(kills["writing"], kills["published"]) < TRIALS // 2:
        assert trial < TRIALS * 3, f"kills kept missing their phase: {dict(phases)}"
        wanted = "writing" if kills["writing"] <= kills["published"] else "published"
        trial += 1
        _, before = data_files()
        markers = success_markers()
        proc = subprocess.Popen(
            [*OPTISYNC, "--config", str(config), "export-batch"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120
        landed = "finished"
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the export made no visible progress"
            hidden, visible = data_files()
            if (wanted == "writing" and hidden) or (wanted == "published" and visible - before):
                proc.send_signal(signal.SIGSTOP)
                hidden, visible = data_files()
                if success_markers() != markers:
                    landed = "after _SUCCESS"
                elif visible - before:
                    landed = "published"
                else:
                    landed = "writing" if hidden else "before writing"
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        _, err = proc.communicate(timeout=120)
        assert b"Traceback" not in err
        visible_files_are_whole()
        if landed == wanted:
            kills[landed] += 1
        else:
            phases[f"missed ({landed})"] += 1
        if success_markers() != markers:
            # the run completed: forget its state so the next one has files to write again
            shutil.rmtree(tmp_path / "var" / "batch-state", ignore_errors=True)
    phases.update(kills)
    final = subprocess.run(
        [*OPTISYNC, "--config", str(config), "export-batch"],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr.decode()  # the lock was recovered
    visible_files_are_whole()
    exported: set[str] = set()
    for manifest in root.glob("*/manifest.json"):
        for run in json.loads(manifest.read_text())["runs"]:
            for f in run["files"]:
                if f["dataset"] == "members" and f["kind"] == "rows":
                    with gzip.open(manifest.parent / f["path"], "rt", newline="") as fh:
                        exported |= {row[0] for row in list(csv.reader(fh))[1:]}
    assert exported == expected, "a member was never exported"
    report(
        f"crash suite (export-batch): trials={trial} kill phases={dict(phases)}"
        f" members={len(expected)} lost=0 partial_files_visible=0"
    )
    # the kills counted landed while files were written or between rename and _SUCCESS
    assert kills["writing"] >= TRIALS // 2 and kills["published"] >= TRIALS // 2
