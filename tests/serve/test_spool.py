"""The spool: order, removal once settled, and what a restart finds."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import optisync.serve.spool as spool_module
from optisync.durable import TMP_PREFIX
from optisync.errors import StorageError
from optisync.serve.spool import Spool, received_at
from tests.support import tier_or_redemption


def line(i: int) -> bytes:
    return json.dumps(tier_or_redemption(i, False)).encode()


def test_records_come_in_order_and_files_go_once_settled(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    first = spool.put([line(1), line(2)])
    spool.put([line(3)])
    assert received_at(first) is not None
    assert spool.messages == 3
    spool.close()
    records = list(spool.records(lambda: False))
    assert [r.envelope.message_id for r in records if r.envelope] == ["t-1", "t-2", "t-3"]
    spool.settled(records[0])
    assert (tmp_path / first).exists()  # one message of it is still unsettled
    spool.settled(records[1])
    assert not (tmp_path / first).exists()
    spool.settled(records[2])
    assert spool.empty() and spool.messages == 0 and spool.size == 0


def test_a_restart_feeds_what_was_not_settled_and_drops_half_writes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.put([line(1)])
    spool.put([line(2), line(3)])
    (tmp_path / f"{TMP_PREFIX}000000000009-1.ndjson").write_bytes(line(9)[:10])
    again = Spool(tmp_path, 1 << 20)
    assert again.messages == 3
    assert not list(tmp_path.glob(f"{TMP_PREFIX}*"))
    again.close()
    ids = [r.envelope.message_id for r in again.records(lambda: False) if r.envelope]
    assert ids == ["t-1", "t-2", "t-3"]
    assert again.put([line(4)]).startswith("000000000003-")  # the sequence goes on


def test_the_feed_waits_for_new_messages(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    got: list[str] = []

    def feed() -> None:
        for record in spool.records(lambda: False):
            assert record.envelope is not None
            got.append(record.envelope.message_id)

    reader = threading.Thread(target=feed)
    reader.start()
    spool.put([line(1)])
    spool.put([line(2)])
    spool.close()
    reader.join(5)
    assert not reader.is_alive()
    assert got == ["t-1", "t-2"]


def test_halt_ends_the_feed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.put([line(1), line(2)])
    halted = {"now": False}
    records = spool.records(lambda: halted["now"])
    next(records)
    halted["now"] = True
    assert list(records) == []
    assert spool.messages == 2  # nothing settled: both stay for the next run


def test_posts_arriving_during_a_write_share_the_next_file_and_each_waits_for_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = spool_module.write_new
    writes: list[int] = []

    def slow_write(path: Path, data: bytes) -> None:
        time.sleep(0.05)  # a slow disk: posts pile up behind the write in progress
        real_write(path, data)
        writes.append(data.count(b"\n"))

    monkeypatch.setattr(spool_module, "write_new", slow_write)
    spool = Spool(tmp_path, 1 << 20)
    names: dict[int, str] = {}

    def post(i: int) -> None:
        names[i] = spool.put([line(i)])
        # by the time put returns, the caller's own line is on disk under that name
        assert line(i) + b"\n" in (tmp_path / names[i]).read_bytes()

    threads = [threading.Thread(target=post, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(names) == list(range(40))
    assert sum(writes) == 40 and len(writes) < 20  # grouped: far fewer files than posts
    assert spool.messages == 40 and len(set(names.values())) == len(writes)


@pytest.mark.parametrize(
    "failure", [OSError(28, "No space left on device"), RuntimeError("unexpected")]
)
def test_a_failed_group_write_fails_every_post_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    gate = threading.Event()

    def failing_write(path: Path, data: bytes) -> None:
        gate.wait(5)  # the others queue behind this write meanwhile
        raise failure

    monkeypatch.setattr(spool_module, "write_new", failing_write)
    spool = Spool(tmp_path, 1 << 20)
    outcomes: list[str] = []

    def post(i: int) -> None:
        try:
            spool.put([line(i)])
            outcomes.append("stored")
        except StorageError:
            outcomes.append("storage error")
        except RuntimeError:  # the writer of a group sees an unexpected error as it is
            outcomes.append("the writer's own error")

    threads = [threading.Thread(target=post, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(10)
    assert "stored" not in outcomes and len(outcomes) == 5
    assert outcomes.count("storage error") >= 3  # at most two groups: two writers
    assert spool.messages == 0 and spool.empty()
    assert not list(tmp_path.glob("*.ndjson"))
