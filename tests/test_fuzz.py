"""Bad input, fuzzed: naughty strings in every string field, random and mutated envelopes,
junk NDJSON and config files. Never a traceback: only documented exit codes, and messages
that name the line and field."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optisync.errors import ExitCode
from optisync.realtime.deadletter import DeadLetterStore
from optisync.realtime.inputs import MAX_LINE_BYTES, check, read_ndjson
from tests.support import EXAMPLES, invoke, report

BLNS: list[str] = json.loads((Path(__file__).parent / "data" / "blns.json").read_text())
EXAMPLE_EVENTS = [json.loads(x) for x in (EXAMPLES / "events.ndjson").read_text().splitlines()]
DOCUMENTED = {int(c) for c in ExitCode}


def string_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in string_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in string_paths(v, (*path, i))]
    return [path] if isinstance(value, str) else []


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = json.loads(json.dumps(value))
    node = copy
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = new
    return copy


def test_naughty_strings_in_every_string_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(515)
    lines = []
    for event in EXAMPLE_EVENTS:
        for path in string_paths(event):
            for naughty in rng.sample(BLNS, 25):
                lines.append(json.dumps(replaced(event, path, naughty)))
    source = tmp_path / "naughty.ndjson"
    source.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("OPTISYNC_DEAD_LETTER__DIR", str(tmp_path / "dl"))
    result = invoke(
        "--config",
        str(EXAMPLES / "optisync.yaml"),
        "--json",
        "push-event",
        "--dry-run",
        "--input",
        str(source),
        expect=None,
    )
    assert result.exit_code in {ExitCode.OK, ExitCode.INVALID_INPUT}, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    assert summary["read"] == len(lines)
    report(
        f"fuzz suite: {len(lines)} envelopes with naughty strings (blns, {len(BLNS)} strings)"
        f" in every string field: valid={summary['valid']} invalid={summary['invalid']}"
        " tracebacks=0"
    )
    for plan in summary["plans"]:
        if "invalid" in plan:  # the reason names the field
            assert plan["line"] >= 1
            assert ":" in plan["invalid"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    )
)
def test_random_json_never_raises(value: Any) -> None:
    record = check(value, 1, "fuzz")
    assert (record.envelope is None) == (record.error is not None)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(EXAMPLE_EVENTS), st.data())
def test_mutated_envelopes_never_raise(event: dict[str, Any], data: st.DataObject) -> None:
    paths = [*string_paths(event), ("data",), ("type",), ("occurred_at",)]
    path = data.draw(st.sampled_from(paths))
    new = data.draw(
        st.none()
        | st.integers()
        | st.text()
        | st.sampled_from(BLNS)
        | st.lists(st.integers(), max_size=3)
        | st.floats()
    )
    record = check(replaced(event, path, new), 3, "fuzz")
    if record.error:
        assert record.error.split(":")[0]  # a field (or reason) is named first


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_random_bytes_lines_never_raise(chunks: list[bytes]) -> None:
    stream = io.BytesIO(b"\n".join(chunks))
    for record in read_ndjson(stream, "fuzz"):
        assert record.line is not None and record.line >= 1
        assert (record.envelope is None) == (record.error is not None)


def test_junk_file_lines_are_each_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = json.dumps(EXAMPLE_EVENTS[2])
    junk = [
        b"\xef\xbb\xbf" + good.encode(),  # 1: BOM on the first line is fine
        b"",  # 2: blank, skipped
        b"\x00\xff\xfe binary junk",  # 3
        b"[" * 100_000,  # 4: deep nesting
        b'{"type": "REDEMPTION", "x": NaN}',  # 5
        b'{"n": ' + b"9" * 5000 + b"}",  # 6: a giant number
        b"x" * (MAX_LINE_BYTES + 10),  # 7: a huge line
        b"[" * 50 + b"]" * 50,  # 8: nested arrays, not an object
        good.replace("REDEMPTION", "REDEMPTIONS").encode(),  # 9: unknown type
        good.encode(),  # 10
    ]
    source = tmp_path / "junk.ndjson"
    source.write_bytes(b"\n".join(junk) + b"\n")
    monkeypatch.setenv("OPTISYNC_DEAD_LETTER__DIR", str(tmp_path / "dl"))
    result = invoke(
        "--config",
        str(EXAMPLES / "optisync.yaml"),
        "--json",
        "push-event",
        "--dry-run",
        "--input",
        str(source),
        expect=ExitCode.INVALID_INPUT,
    )
    summary = json.loads(result.stdout)
    assert (summary["read"], summary["invalid"]) == (9, 7)
    invalid = {p["line"]: p["invalid"] for p in summary["plans"] if "invalid" in p}
    assert sorted(invalid) == [3, 4, 5, 6, 7, 8, 9]
    assert invalid[3].startswith("not UTF-8")
    assert invalid[4] == "nested too deeply"
    assert "NaN is not valid JSON" in invalid[5]
    assert invalid[6].startswith("bad JSON")
    assert invalid[7] == f"line longer than {MAX_LINE_BYTES} bytes"
    assert invalid[8].startswith("(envelope)")
    assert invalid[9].startswith("type: Input should be")
    # and for real: every invalid line becomes a letter naming its line
    monkeypatch.setenv("OPTIMOVE_API_KEY", "k")
    monkeypatch.setenv("OPTIMOVE_EVENTS_TOKEN", "t")
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__API_URL", "http://127.0.0.1:9")
    invoke(
        "--config",
        str(EXAMPLES / "optisync.yaml"),
        "push-event",
        "--only",
        "promotions",
        "--input",
        str(source),
        expect=ExitCode.INVALID_INPUT,
    )
    store = DeadLetterStore(tmp_path / "dl")
    assert sorted(x.source.line for _, x in store.iter_letters()) == [3, 4, 5, 6, 7, 8, 9]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_mutated_config_files_exit_0_or_3(tmp_path: Path, data: st.DataObject) -> None:
    lines = (EXAMPLES / "optisync.yaml").read_text().splitlines()
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["delete", "naughty", "indent", "dup", "truncate"]))
        if op == "delete":
            del lines[i]
        elif op == "naughty":
            lines[i] = lines[i].split(":")[0] + ": " + json.dumps(data.draw(st.sampled_from(BLNS)))
        elif op == "indent":
            lines[i] = " " + lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        else:
            lines[i] = lines[i][: len(lines[i]) // 2]
        if not lines:
            break
    path = tmp_path / "templates"
    if not path.exists():
        path.symlink_to(EXAMPLES / "templates")
    config = tmp_path / "fuzzed.yaml"
    config.write_text("\n".join(lines))
    result = invoke("validate-config", str(config), expect=None)
    assert result.exit_code in {ExitCode.OK, ExitCode.CONFIG}, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for line in result.stderr.splitlines():
        if line.startswith(str(config)):
            assert line.count(":") >= 2  # file:line: key: message
