"""A line over the input limit is kept whole as an ``input`` letter's sidecar, copied in
chunks so memory never holds it; replay reports it as invalid input and purge removes it."""

from __future__ import annotations

import io
import json
import os
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

from optisync.errors import ExitCode
from optisync.realtime.deadletter import (
    DeadLetter,
    DeadLetterStore,
    ErrorClass,
    Kind,
    LetterError,
    sidecar_of,
)
from optisync.realtime.inputs import MAX_LINE_BYTES, head_fields, read_ndjson
from optisync.realtime.replay import OVERSIZED
from tests.support import FakeOptimove

CARD = "4111111111111111"
FIVE_MB = 5 * 1024 * 1024


def tier(message_id: str, member: str, note: str = "") -> str:
    data = {"tier": "Gold", **({"note": note} if note else {})}
    return json.dumps(
        {
            "id": message_id,
            "type": "MEMBER_TIER",
            "member_id": member,
            "email": f"{member.lower()}@example.com",
            "occurred_at": "2026-11-25T10:00:00Z",
            "data": data,
        }
    )


def feed(tmp_path: Path, big: str) -> Path:
    path = tmp_path / "in.ndjson"
    with path.open("w", encoding="utf-8") as out:
        out.write(tier("ok-1", "M1") + "\n")
        out.write(big + "\r\n")
        out.write(tier("ok-2", "M3") + "\n")
    return path


def big_line(size: int, note_prefix: str = "") -> str:
    line = tier("big-1", "M2", note_prefix + "x" * size)
    assert len(line) > MAX_LINE_BYTES
    return line


def test_a_5mb_line_is_kept_whole_without_being_held_in_memory(
    fake: FakeOptimove, tmp_path: Path
) -> None:
    line = big_line(FIVE_MB)
    source = feed(tmp_path, line)
    warm = tmp_path / "warm.ndjson"  # what a first run loads once (Babel, models) aside
    warm.write_text(tier("w-1", "M9") + "\n", encoding="utf-8")
    fake.push(warm)
    tracemalloc.start()
    try:
        outcome = fake.push(source, expect=ExitCode.INVALID_INPUT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the first MiB is read to find the line too long, then one chunk at a time
    assert peak < len(line) / 2, peak
    assert (outcome.data["sent"], outcome.data["invalid"]) == (2, 1)
    store = DeadLetterStore(tmp_path / "dl")
    ((path, letter),) = store.iter_letters(kind="input")
    assert letter.kind == "input" and letter.message_id == "big-1"
    assert letter.source.line == 2
    assert letter.envelope == {"id": "big-1", "type": "MEMBER_TIER", "member_id": "M2"}
    assert letter.type == "MEMBER_TIER"
    assert letter.error.message.startswith(f"line longer than {MAX_LINE_BYTES} bytes")
    assert letter.raw is not None
    sidecar = path.parent / letter.raw.file
    assert sidecar == sidecar_of(path)
    assert sidecar.read_bytes() == line.encode()  # the whole line, its line break dropped
    assert letter.raw.bytes == len(line)
    assert sidecar.stat().st_mode & 0o777 == 0o600
    assert list((tmp_path / "dl" / "tmp").iterdir()) == []


def test_card_numbers_in_the_kept_line_are_masked_even_across_chunks(
    fake: FakeOptimove, tmp_path: Path
) -> None:
    # a card near the start, one written as JSON escapes, one in exponent form, and one
    # spread over the point where the copy's first chunk (65,536 bytes) ends
    start = tier("big-1", "M2", "NOTE").split("NOTE")[0]
    cards = f"{CARD} \\u0034\\u0031{'1' * 14} 4.111111111111111e15 "
    pad = "y" * (65536 - len(start) - len(cards) - 8)
    line = start + cards + pad + "4111 1111 1111 1111" + "x" * 2 * MAX_LINE_BYTES + '"}}'
    fake.push(feed(tmp_path, line), expect=ExitCode.INVALID_INPUT)
    ((path, _),) = DeadLetterStore(tmp_path / "dl").iter_letters(kind="input")
    kept = sidecar_of(path).read_text(encoding="utf-8")
    assert kept.count("************1111") == 4
    assert "4111" not in kept.replace("************1111", "")
    assert "1111 1111" not in kept
    assert kept.endswith('x"}}')
    # nothing else changed: the masks drop two escapes' extra characters, the exponent's
    # point and "e15", and the spaced card's separators
    assert len(kept) == len(line) - (10 + 4 + 3)


def test_replay_reports_the_kept_line_as_invalid_input_and_sends_nothing(
    fake: FakeOptimove, tmp_path: Path
) -> None:
    fake.push(feed(tmp_path, big_line(MAX_LINE_BYTES)), expect=ExitCode.INVALID_INPUT)
    sent = len(fake.requests)
    outcome = fake.replay()
    assert outcome.data["not_replayable"] == 1
    assert OVERSIZED in outcome.data["warnings"]
    assert len(fake.requests) == sent
    assert len(list(DeadLetterStore(tmp_path / "dl").iter_letters())) == 1


def test_removing_or_purging_a_letter_takes_its_sidecar(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dl")
    paths = []
    for n in range(2):
        (record,) = read_ndjson(io.BytesIO(big_line(MAX_LINE_BYTES).encode()), "f")
        assert record.raw is not None
        letter = DeadLetter(
            message_id=f"m{n}",
            kind=Kind.INPUT,
            error=LetterError(error_class=ErrorClass.INVALID, message=record.error or ""),
            run_id="r",
        )
        paths.append(store.write(letter, record.raw))
    assert all(sidecar_of(p).exists() for p in paths)
    assert store.remove(paths[0])
    assert not sidecar_of(paths[0]).exists()
    assert store.purge_older_than(1, now=datetime.now(UTC) + timedelta(days=2)) == 1
    assert list((tmp_path / "dl" / "new").iterdir()) == []


def test_a_sidecar_left_without_its_letter_is_cleaned_once_stale(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dl")
    orphan = store.new_dir / "20261204T000000.000000Z-0000001-000001-input-abc.raw"
    orphan.write_bytes(b"{}")
    assert store.cleanup_tmp() == 0  # young: its letter may be on its way
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    assert store.cleanup_tmp() == 1
    assert not orphan.exists()


def test_only_top_level_fields_in_the_first_bytes_name_the_line() -> None:
    head = b'{"data": {"id": "nested", "member_id": "X"}, "id": "evt-1", "member_id": 7, "type"'
    assert head_fields(head) == {"id": "evt-1"}
    assert head_fields(b'["id", "member_id"]') == {}
    (record,) = read_ndjson(
        io.BytesIO(b'{"data": "' + b"z" * MAX_LINE_BYTES + b'", "id": "late"}'), "f"
    )
    assert record.value is None  # an id past the first bytes is not looked for
    assert record.raw is not None
