"""Bad input, fuzzed: naughty strings in every string field, random and mutated envelopes,
junk NDJSON and config files. Never a traceback: only documented exit codes, and messages
that name the line and field."""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optisync.errors import ExitCode
from optisync.realtime.deadletter import DeadLetterStore
from optisync.realtime.inputs import MAX_LINE_BYTES, check, read_ndjson
from optisync.sandbox import Sandbox, SandboxConfig
from tests.support import EXAMPLES, invoke, report, use_sandbox

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


# Fields whose text reaches Optimove unchanged under the example config (event context,
# attributes or mail personalizations, never formatted): a valid naughty value there must
# arrive byte for byte.
SENT_AS_IS = {
    "MEMBER_REGISTRATION": {"data.first_name", "data.last_name", "data.tier"},
    "REDEMPTION": {"data.redemption_id", "data.reward_name"},
    "MEMBER_PROFILE_UPDATE": {
        "data.first_name",
        "data.last_name",
        "data.language",
        "data.emd.favourite_store",
    },
    "MEMBER_TIER": {"data.tier", "data.previous_tier"},
    "PARTNER_CARD_LINKED": {"data.link_id", "data.partner_name", "data.link_status"},
    "PARTNER_CARD_UNLINKED": {"data.link_id", "data.partner_name", "data.link_status"},
    "POINTS_TRANSFERRED": {"data.transfer_id"},
    "PURCHASE": {"data.store_name", "data.order_id"},
    "HOUSEHOLD_BALANCE_UPDATED": {"data.household_id"},
    "GAMEPLAY_QUALIFIED": {"data.game_name"},
}


def naughty_lines(event: dict[str, Any], rng: random.Random) -> list[tuple[str, Any, str]]:
    """(field, value, envelope line) for 25 naughty strings in each string field; each
    line has its own message id, member and email unless that is the field replaced."""
    out = []
    for path in string_paths(event):
        for naughty in rng.sample(BLNS, 25):
            n = len(out)
            own = {"id": f"n{n}", "member_id": f"N{n:05d}", "email": f"n{n}@example.com"}
            line = replaced({**event, **own}, path, naughty)
            out.append((".".join(map(str, path)), naughty, json.dumps(line)))
    return out


def string_values(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in string_values(v)]
    if isinstance(value, list):
        return [s for v in value for s in string_values(v)]
    return [value] if isinstance(value, str) else []


def test_naughty_strings_in_every_string_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dry run per example event names the line and the very field of every invalid
    line and exits 4; the valid ones then go to a sandbox, and the naughty text of every
    field sent as it is arrives byte for byte."""
    rng = random.Random(515)
    monkeypatch.setenv("OPTISYNC_DEAD_LETTER__DIR", str(tmp_path / "dl"))
    valid: list[tuple[str, Any, str]] = []
    total = invalid_count = 0
    for event in EXAMPLE_EVENTS:
        cases = naughty_lines(event, rng)
        source = tmp_path / "naughty.ndjson"
        source.write_text("\n".join(line for _, _, line in cases) + "\n")
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
        summary = json.loads(result.stdout)
        plans = summary["plans"]
        assert summary["read"] == len(cases) == len(plans)
        bad = [p for p in plans if "invalid" in p]
        # exit 4 exactly when a line is invalid, else 0
        assert result.exit_code == (ExitCode.INVALID_INPUT if bad else ExitCode.OK), result.stderr
        for plan in plans:
            field, _, _ = cases[plan["line"] - 1]
            if "invalid" in plan:  # the reason names the field that was replaced
                assert plan["invalid"].startswith(f"{field}:"), (field, plan["invalid"])
            else:
                valid.append(cases[plan["line"] - 1])
        total += len(cases)
        invalid_count += len(bad)
    assert invalid_count > 0 and len(valid) > 0
    sent = [c for c in valid if c[0] in SENT_AS_IS.get(json.loads(c[2])["type"], set())]
    source = tmp_path / "valid.ndjson"
    source.write_text("\n".join(line for _, _, line in sent) + "\n")
    config = SandboxConfig(api_key="k", tenant_id=1234, events_token="t", enforce_limits=False)
    with Sandbox(config) as box:
        use_sandbox(monkeypatch, box, tmp_path, "k", "t")
        invoke("--config", str(EXAMPLES / "optisync.yaml"), "push-event", "--input", str(source))
        by_member: dict[str, list[str]] = {}
        for rec in box.received():
            body = rec["body"]
            for item in body if isinstance(body, list) else [body]:
                owners = [e.get("customer") for e in [item]] + [
                    c["CustomerID"] for c in item.get("CustomerNewAttributesValuesList", [])
                ]
                owners += [c["CustomerId"] for c in item.get("Customers", [])]
                owners += [r["Email"] for r in item.get("Recipients", [])]
                for owner in filter(None, owners):
                    by_member.setdefault(owner, []).extend(string_values(item))
    for field, naughty, line in sent:
        envelope = json.loads(line)
        arrived = by_member.get(envelope["member_id"], []) + by_member.get(envelope["email"], [])
        assert naughty in arrived, f"{field}={naughty!r} did not arrive as it was"
    report(
        f"fuzz suite: {total} envelopes with naughty strings (blns, {len(BLNS)} strings)"
        f" in every string field: invalid={invalid_count} (each names its line and field),"
        f" valid={len(valid)}; {len(sent)} sent to the sandbox, every value byte for byte"
    )


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
    assert invalid[7].startswith(f"line longer than {MAX_LINE_BYTES} bytes")
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
    # an exception escaping the command would end 1 here (CliRunner keeps no traceback)
    assert result.exit_code in {ExitCode.OK, ExitCode.CONFIG}, result.stderr
    assert "internal error" not in result.stderr
    named = re.compile(rf"^{re.escape(str(config))}:(\d+): (\S+): (?!warning:)\S")
    errors = [m for m in map(named.match, result.stderr.splitlines()) if m]
    if result.exit_code == ExitCode.CONFIG:  # each error names a line of the file and a key
        assert errors, result.stderr
        assert all(1 <= int(m.group(1)) <= len(lines) + 1 for m in errors)
    else:
        assert errors == []
