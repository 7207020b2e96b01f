"""Lines read straight from bytes end exactly as the decode-then-validate path ends them."""

from __future__ import annotations

import io
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from optisync.realtime.inputs import check, decode, read_ndjson
from tests.support import EXAMPLES

EXAMPLE_LINES = [x for x in (EXAMPLES / "events.ndjson").read_text().splitlines() if x.strip()]


BOM = b"\xef\xbb\xbf"  # opening an input, it is dropped, as Windows tools write one


def full_path(line: bytes) -> tuple[Any, str | None]:
    line = line.removeprefix(BOM)  # every line here is the input's first
    try:
        text = line.decode("utf-8")
        record = check(decode(text), 1, "t", text)
    except (ValueError, RecursionError):
        return None, "refused"
    dump = record.envelope.model_dump(mode="json") if record.envelope else None
    return dump, record.error


def read_one(line: bytes) -> tuple[Any, str | None]:
    [record] = list(read_ndjson(io.BytesIO(line + b"\n"), "t"))
    dump = record.envelope.model_dump(mode="json") if record.envelope else None
    if record.error and record.error.startswith(("bad JSON", "not UTF-8", "nested")):
        return dump, "refused"
    return dump, record.error


def test_the_examples_read_the_same() -> None:
    for line in EXAMPLE_LINES:
        assert read_one(line.encode()) == full_path(line.encode())


VALUES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["2026-11-25", "x@y.z", "fr_CA", "MEMBER_TIER", "4111 1111 1111 1111"])
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(EXAMPLE_LINES), st.data())
def test_mutated_lines_read_the_same(line: str, data: st.DataObject) -> None:
    event = json.loads(line)
    target = event if data.draw(st.booleans()) else event["data"]
    key = data.draw(st.sampled_from([*target, "extra", "emd", "opted_in"]))
    target[key] = data.draw(VALUES | st.dictionaries(st.text(max_size=5), VALUES, max_size=3))
    raw = json.dumps(event, ensure_ascii=data.draw(st.booleans())).encode()
    assert read_one(raw) == full_path(raw)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(EXAMPLE_LINES), st.integers(0, 400), st.binary(max_size=6))
def test_damaged_lines_read_the_same(line: str, at: int, junk: bytes) -> None:
    raw = line.encode()
    raw = (raw[:at] + junk + raw[at:]).replace(b"\n", b" ")
    if raw.removeprefix(BOM).strip():
        assert read_one(raw) == full_path(raw)


def test_a_byte_order_mark_opening_the_input_is_dropped() -> None:
    assert read_one(BOM + EXAMPLE_LINES[0].encode()) == full_path(EXAMPLE_LINES[0].encode())
    assert read_one(BOM + EXAMPLE_LINES[0].encode())[0] is not None


def test_non_finite_numbers_are_still_refused() -> None:
    event = json.loads(EXAMPLE_LINES[3])
    event["data"]["emd"]["x"] = 1.0
    for word in (b"NaN", b"Infinity", b"-Infinity"):
        raw = json.dumps(event).encode().replace(b"1.0", word)
        assert read_one(raw) == (None, "refused")
