"""export-batch end to end on the bundled sample: incremental rules, formats, crash safety."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from optisync.batch.writer import FileWriter
from optisync.commands.batch import export_batch
from optisync.errors import ExitCode
from optisync.lock import RunLock
from tests.support import EXAMPLES, invoke

NOW = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A private copy of the example config and data, writing under tmp_path/var."""
    shutil.copytree(EXAMPLES / "data", tmp_path / "examples" / "data")
    text = (EXAMPLES / "optisync.yaml").read_text(encoding="utf-8")
    text = text.replace("templates/", str(EXAMPLES / "templates") + "/")
    path = tmp_path / "examples" / "optisync.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def out_root(config: Path) -> Path:
    return config.parent.parent / "var" / "export"


def run(config: Path, *args: str, expect: int = ExitCode.OK) -> dict[str, Any]:
    result = invoke("--config", str(config), "--json", "export-batch", *args, expect=expect)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def read_csv_gz(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


def rows_of(data: dict[str, Any], dataset: str, kind: str = "rows") -> list[list[str]]:
    root = Path(data["output"])
    out: list[list[str]] = []
    for f in data["datasets"][dataset]["files"]:
        if f["kind"] == kind:
            out += read_csv_gz(root / f["path"])[1:]
    return out


def edit(config: Path, table: str, old: str, new: str) -> None:
    path = config.parent / "data" / f"{table}.csv"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_first_run_exports_everything_then_rerun_writes_empty_deltas(sample: Path) -> None:
    first = run(sample)
    assert {n: d["mode"] for n, d in first["datasets"].items()} == dict.fromkeys(
        ["members", "partner_links", "offers", "emd", "orders"], "full"
    )
    assert len(rows_of(first, "members")) == 6
    assert len(rows_of(first, "orders")) == 4
    second = run(sample)
    assert second["rows"] == 0
    assert all(d["mode"] == "incremental" for d in second["datasets"].values())
    manifest = json.loads(Path(second["manifest"]).read_text())
    assert manifest["empty"] is True and manifest["mode"] == "incremental"
    assert len(manifest["runs"]) == 2
    # the empty delta is still a file: a header and no rows
    empty = [f for f in manifest["runs"][1]["files"] if f["dataset"] == "members"]
    assert empty and empty[0]["rows"] == 0
    assert read_csv_gz(Path(second["output"]) / empty[0]["path"])[0][0] == "CustomerID"
    assert (Path(second["output"]) / "_SUCCESS").read_bytes() == b""


def test_changes_export_exactly_the_changed_rows_and_deletions(sample: Path) -> None:
    run(sample)
    edit(sample, "members", "Bob,Roy,Silver", "Bob,Roy,Gold")
    edit(sample, "members", "M000006,fay", "M000007,gus")  # one new, one gone
    edit(
        sample,
        "offers",
        "O101,M000002,10% off fuel,2026-11-01,2026-11-30,0,2026-11-01T00:00:00Z\n",
        "",
    )
    data = run(sample)
    members = rows_of(data, "members")
    assert sorted(r[0] for r in members) == ["M000002", "M000007"]
    assert [r[6] for r in members if r[0] == "M000002"] == ["Gold"]
    assert data["datasets"]["members"]["deletions"] == 0  # emit_deletes: false
    assert rows_of(data, "offers") == []
    assert rows_of(data, "offers", "deletes") == [
        ["O101", "M000002", rows_of(data, "offers", "deletes")[0][2]]
    ]
    assert data["datasets"]["offers"]["deletions"] == 1
    assert rows_of(data, "orders") == []
    # and the state moved on: the next run is empty again
    assert run(sample)["rows"] == 0


def test_comparison_in_key_hash_parts_finds_the_same_delta(
    sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past PART_MIB of keys the comparison runs in key-hash parts (flat memory)."""
    from optisync.batch import local, memory

    monkeypatch.setattr(memory, "PART_MIB", 0.0002)  # ~200 bytes: several parts here
    counts: list[int] = []
    real_parts = local.parts

    def record(rows: int, text: int, keys: int) -> int:
        counts.append(real_parts(rows, text, keys))
        return counts[-1]

    monkeypatch.setattr(local, "parts", record)
    test_changes_export_exactly_the_changed_rows_and_deletions(sample)
    assert counts and max(counts) > 1


def test_steps_out_of_their_budget_run_again_at_memory_limit(
    sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Budgets of 1 MiB, too small for DuckDB's joins: those run again at the cap, same delta."""
    from optisync.batch import memory

    monkeypatch.setattr(memory, "STREAM_MIB", (1, 0))
    monkeypatch.setattr(memory, "WORK_MIB", (1, 0))
    limits: list[int] = []
    real_set = memory.Budget._set

    def record(self: memory.Budget, limit: int) -> None:
        limits.append(limit)
        real_set(self, limit)

    monkeypatch.setattr(memory.Budget, "_set", record)
    test_changes_export_exactly_the_changed_rows_and_deletions(sample)
    cap, budget = memory.parse_size("1GB"), memory.MIB
    assert set(limits) == {budget, cap}
    # a step that fit: budget, cap after it; one that ran again: budget, cap to retry, cap after
    retried = sum(limits[i : i + 3] == [budget, cap, cap] for i in range(len(limits)))
    assert retried > 0


def test_full_resets_the_state(sample: Path) -> None:
    run(sample)
    data = run(sample, "--full")
    assert data["datasets"]["members"]["mode"] == "full"
    assert data["datasets"]["members"]["reason"] == "--full"
    assert len(rows_of(data, "members")) == 6
    assert run(sample)["rows"] == 0


def test_formats_follow_optimove_rules(sample: Path) -> None:
    data = run(sample)
    root = Path(data["output"])
    path = root / data["datasets"]["members"]["files"][0]["path"]
    raw = gzip.decompress(path.read_bytes()).decode("utf-8")  # UTF-8 or this raises
    table = read_csv_gz(path)
    header, body = table[0], table[1:]
    assert header == [
        "CustomerID", "Email", "LastName", "MemberStatus", "FirstName", "PointsBalance",
        "TierName", "EnrolledOn", "LifetimeSpend", "Currency", "LastUpdated",
    ]  # fmt: skip
    col = {name: i for i, name in enumerate(header)}
    for row in body:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", row[col["EnrolledOn"]])
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", row[col["LastUpdated"]])
        assert row[col["LifetimeSpend"]] == "" or re.fullmatch(
            r"\d+\.\d{4}", row[col["LifetimeSpend"]]
        )
        assert re.fullmatch(r"[A-Z]{3}", row[col["Currency"]])
    eve = next(r for r in body if r[0] == "M000005")
    assert eve[col["LastName"]] == "" and eve[col["LifetimeSpend"]] == ""  # blank nulls
    assert ",," in raw  # a null is nothing at all, not "" or NULL
    assert "NULL" not in raw
    assert any(r[col["LastName"]] == "O'Neil, Jr." for r in body)
    assert any(r[col["FirstName"]] == "Chloé" for r in body)
    orders = read_csv_gz(root / data["datasets"]["orders"]["files"][0]["path"])
    ordered = {r[0]: r[orders[0].index("OrderedAt")] for r in orders[1:]}
    assert ordered["R5001"] == "2026-11-24 21:20:00"  # -05:00 converted to UTC


def test_manifest_sha256_rows_and_files_match(sample: Path) -> None:
    data = run(sample)
    root = Path(data["output"])
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["runs"][0]["mode"] == "full"
    assert manifest["watermark"]
    for f in manifest["files"]:
        path = root / f["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == f["sha256"]
        assert len(read_csv_gz(path)) - 1 == f["rows"]
    assert sorted(p.name for p in root.iterdir()) == [
        "_SUCCESS", "emd", "manifest.json", "members", "offers", "orders", "partner_links",
    ]  # fmt: skip


def test_split_below_max_file_size(write_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import random
    from string import ascii_letters as letters

    rnd = random.Random(7)
    data = tmp_path / "data"
    data.mkdir()
    with (data / "members.csv").open("w", encoding="utf-8") as fh:
        fh.write("member_id,note\n")
        for i in range(60_000):
            fh.write(f"M{i:07d},{''.join(rnd.choices(letters, k=32))}\n")
    config = write_config(
        """
        attributes:
          emd: {opt_in_key: email_opt_in}
        batch:
          source: {kind: files, path: data}
          output: {dir: out, max_file_mb: 1}
          state_dir: state
          threads: 1
          datasets:
            members: {key: [member_id], columns: {CustomerID: member_id, Note: note}}
        """
    )
    out = run(config)
    files = out["datasets"]["members"]["files"]
    assert len(files) >= 2
    assert all(f["bytes"] < 1024 * 1024 for f in files)
    assert sum(f["rows"] for f in files) == 60_000
    for f in files:
        assert read_csv_gz(Path(out["output"]) / f["path"])[0] == [
            "CustomerID",
            "Note",
            "LastUpdated",
        ]


def test_crash_before_the_manifest_leaves_nothing_visible(
    sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(sample)
    edit(sample, "members", "Bob,Roy,Silver", "Bob,Roy,Gold")

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(FileWriter, "publish", boom)
    result = invoke("--config", str(sample), "export-batch", expect=ExitCode.INTERNAL)
    assert "killed" in result.stderr
    root = out_root(sample)
    visible = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    manifest = json.loads((root / run_day(root) / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    assert not [
        p
        for p in visible
        if p.suffix == ".gz" and p.relative_to(root / run_day(root)).as_posix() not in listed
    ]
    assert not (root / run_day(root) / "_SUCCESS").exists()  # the day is marked in progress
    monkeypatch.undo()
    data = run(sample)  # the next run exports the same delta, never less
    assert [r[0] for r in rows_of(data, "members")] == ["M000002"]
    assert not [p for p in root.rglob(".tmp-*")]


def run_day(root: Path) -> str:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0].isdigit())[-1]


def test_crash_after_publish_before_state_reexports_delta(
    sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optisync.batch.state import StateStore

    run(sample)
    edit(sample, "members", "Bob,Roy,Silver", "Bob,Roy,Gold")

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(StateStore, "commit", boom)
    invoke("--config", str(sample), "export-batch", expect=ExitCode.INTERNAL)
    monkeypatch.undo()
    data = run(sample)
    assert [r[0] for r in rows_of(data, "members")] == ["M000002"]


def test_killed_subprocess_leaves_no_partial_file(sample: Path) -> None:
    """SIGKILL in the middle of writing: only hidden temporaries, which the next run clears."""
    big = sample.parent / "data" / "members.csv"
    lines = big.read_text(encoding="utf-8").splitlines()
    with big.open("a", encoding="utf-8") as fh:
        for i in range(300_000):
            fh.write(lines[1].replace("M000001", f"X{i:07d}") + "\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "optisync",
            "--config",
            str(sample),
            "export-batch",
            "--dataset",
            "members",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    root = out_root(sample)
    import time

    deadline = time.monotonic() + 60
    while proc.poll() is None and not list(root.rglob(".tmp-*")):
        assert time.monotonic() < deadline, "no temporary file appeared within 60 s"
        time.sleep(0.002)
    assert proc.poll() is None, "the export ended before it was killed"
    proc.send_signal(signal.SIGSTOP)  # frozen: what is on disk now is what the kill leaves
    assert [p for p in root.rglob(".tmp-*") if p.is_file()], "killed before writing"
    assert not list(root.rglob("_SUCCESS"))
    proc.kill()
    proc.wait()
    for p in root.rglob("*.csv.gz"):
        if not p.name.startswith("."):
            read_csv_gz(p)  # every visible file is whole
    data = run(sample, "--dataset", "members")
    # killed before its state advanced: the rerun exports every member again
    assert data["datasets"]["members"]["mode"] == "full"
    assert len(rows_of(data, "members")) == 300_006
    assert not list(root.rglob(".tmp-*"))


def test_card_numbers_are_quarantined_masked_and_exit_4(sample: Path) -> None:
    edit(sample, "members", "Bob,Roy,", "Bob,Roy 4111 1111 1111 1111,")
    edit(sample, "orders", "Online", "Online order 1234567890123")  # 13 digits, fails Luhn
    data = run(sample, expect=ExitCode.INVALID_INPUT)
    assert data["held"] == 1
    members = rows_of(data, "members")
    assert "M000002" not in [r[0] for r in members] and len(members) == 5
    assert any("1234567890123" in ",".join(r) for r in rows_of(data, "orders"))
    quarantine = Path(data["datasets"]["members"]["quarantine"])
    text = gzip.decompress(quarantine.read_bytes()).decode()
    assert "************1111" in text and "4111 1111" not in text
    for p in out_root(sample).rglob("*"):
        if p.is_file() and p.suffix == ".gz":
            assert "4111 1111 1111 1111" not in gzip.decompress(p.read_bytes()).decode()
    # fixed at the source: the held row is exported by the next run
    edit(sample, "members", "Bob,Roy 4111 1111 1111 1111,", "Bob,Roy,")
    again = run(sample)
    assert [r[0] for r in rows_of(again, "members")] == ["M000002"]


def test_unmapped_emd_keys_are_reported(sample: Path) -> None:
    data = run(sample)
    assert data["emd_unmapped"] == {"email_opt_in": 2, "shoe_size": 1, "pet_name": 1}
    assert any("shoe_size" in w for w in data["warnings"])
    emd = rows_of(data, "emd")
    assert emd[[r[0] for r in emd].index("M000001")][:2] == ["M000001", "Downtown"]


def test_51_attributes_at_run_time_exit_3(sample: Path) -> None:
    text = sample.read_text(encoding="utf-8")
    extra = "".join(
        f"    - name: Extra{i}\n      type: INT\n      source: points_balance\n" for i in range(45)
    )
    text = text.replace("  # Extended Member Data:", extra + "  # Extended Member Data:", 1)
    sample.write_text(text, encoding="utf-8")
    result = invoke("--config", str(sample), "export-batch", expect=ExitCode.CONFIG)
    assert "at most 50" in result.stderr
    assert not out_root(sample).exists()


def test_lock_overlap_exits_75(sample: Path) -> None:
    state = sample.parent.parent / "var" / "batch-state"
    with RunLock(state / "export-batch.lock"):
        result = invoke("--config", str(sample), "export-batch", expect=ExitCode.LOCKED)
    assert "holds the lock" in result.stderr


def test_dry_run_writes_nothing(sample: Path) -> None:
    data = run(sample, "--dry-run")
    assert data["dry_run"] is True
    assert data["datasets"]["members"]["rows"] == 6
    assert not (sample.parent.parent / "var").exists()


def test_dataset_restricts(sample: Path) -> None:
    data = run(sample, "--dataset", "orders", "--dataset", "emd")
    assert list(data["datasets"]) == ["emd", "orders"]
    root = Path(data["output"])
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["emd", "orders"]
    bad = invoke(
        "--config", str(sample), "export-batch", "--dataset", "nope", expect=ExitCode.USAGE
    )
    assert "not a dataset" in bad.stderr


def test_deadline_fail_exports_nothing(sample: Path) -> None:
    text = sample.read_text(encoding="utf-8").replace(
        "deadline_action: warn", "deadline_action: fail"
    )
    sample.write_text(
        text.replace('deadline_utc: "05:00"', 'deadline_utc: "00:00"'), encoding="utf-8"
    )
    result = invoke("--config", str(sample), "export-batch", expect=ExitCode.UNAVAILABLE)
    assert "readiness time" in result.stderr
    assert not out_root(sample).exists()


def test_deadline_in_time_does_not_warn(sample: Path) -> None:
    summary = export_batch(sample, now=NOW.replace(hour=1))
    assert not [w for w in summary.warnings if "readiness" in w and "started" in w]


def test_duckdb_source(write_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import duckdb

    db = tmp_path / "loyalty.duckdb"
    con = duckdb.connect(str(db))
    con.execute(
        "CREATE TABLE members AS SELECT 'M' || i AS member_id, i * 1.5 AS spend,"
        " TIMESTAMPTZ '2026-11-25 10:00:00+02' AS changed FROM range(10) t(i)"
    )
    con.close()
    config = write_config(
        f"""
        attributes:
          batch:
            - {{name: Spend, type: money, source: spend}}
          emd: {{opt_in_key: email_opt_in}}
        batch:
          source: {{kind: duckdb, path: {db}}}
          output: {{dir: out}}
          state_dir: state
          datasets:
            members: {{key: [member_id], columns: {{CustomerID: member_id}}, updated_at: changed}}
        """
    )
    data = run(config)
    rows = rows_of(data, "members")
    assert len(rows) == 10
    assert rows[0][1].count(".") == 1 and rows[0][3] == "2026-11-25 08:00:00"


def test_help_has_an_example() -> None:
    out = invoke("export-batch", "--help").stdout
    assert "Example:" in out and "--full" in out and "--dataset" in out and "--dry-run" in out


def test_summary_text_mentions_nothing_under_cron(sample: Path) -> None:
    result = invoke("--config", str(sample), "export-batch")
    assert result.stdout == ""
    assert "warning" in result.stderr  # EMD keys are reported even under cron


def test_float_columns_are_exact_and_guarded_for_card_numbers(  # type: ignore[no-untyped-def]
    write_config, tmp_path: Path
) -> None:
    import duckdb

    db = tmp_path / "loyalty.duckdb"
    con = duckdb.connect(str(db))
    con.execute(
        "CREATE TABLE members AS SELECT * FROM (VALUES ('M1', 12.5::DOUBLE),"
        " ('M2', 1e20::DOUBLE), ('M3', 4111111111111111::DOUBLE)) t(member_id, score)"
    )
    con.close()
    config = write_config(
        f"""
        attributes:
          emd: {{opt_in_key: email_opt_in}}
        batch:
          source: {{kind: duckdb, path: {db}}}
          output: {{dir: out}}
          state_dir: state
          datasets:
            members: {{key: [member_id], columns: {{CustomerID: member_id, Score: score}}}}
        """
    )
    data = run(config, expect=ExitCode.INVALID_INPUT)
    rows = {r[0]: r[1] for r in rows_of(data, "members")}
    # a double's value, not its binary expansion times 10^4; the card-like one held back
    assert rows == {"M1": "12.5000", "M2": "100000000000000000000.0000"}
    assert data["datasets"]["members"]["held"] == 1
    for path in (tmp_path / "out").rglob("*.gz"):
        assert "411111111111111" not in gzip.decompress(path.read_bytes()).decode()


def test_null_and_duplicate_keys_are_held_back_never_exported_twice_or_deleted(
    sample: Path,
) -> None:
    run(sample)
    bob = "M000002,bob@example.com,Bob,Roy,Silver,3400,412.00,CAD,2022-07-01,active,"
    edit(
        sample,
        "members",
        bob,
        bob.replace("Bob,Roy", "Robert,Roy") + "2026-11-25T00:00:00Z\n" + bob,
    )
    edit(
        sample,
        "members",
        "\nM000003,",
        "\n,nobody@example.com,No,Key,Gold,1,1.00,CAD,2022-07-01,active,2026-11-25T00:00:00Z\nM000003,",
    )
    offer = "O102,M000004,Bonus 2000 points,2026-11-25,2027-01-31,2000,2026-11-25T00:00:00Z\n"
    edit(sample, "offers", offer, offer + offer.replace("Bonus 2000", "Bonus 3000"))
    for _ in range(2):  # the same on the next run: nothing exported twice
        data = run(sample, expect=ExitCode.INVALID_INPUT)
        members, offers = data["datasets"]["members"], data["datasets"]["offers"]
        assert (members["null_keys"], members["duplicate_keys"], members["held"]) == (1, 2, 3)
        assert (offers["null_keys"], offers["duplicate_keys"], offers["held"]) == (0, 2, 2)
        assert rows_of(data, "members") == [] and rows_of(data, "offers") == []
        assert offers["deletions"] == 0  # a duplicated key is not "gone"
        warned = "\n".join(data["warnings"])
        assert "dataset members: 1 row(s) with a NULL key (member_id)" in warned
        assert "2 row(s) sharing 1 duplicated key(s) (member_id)" in warned
        assert "(offer_id, member_id)" in warned
        quarantined = read_csv_gz(Path(members["quarantine"]))[1:]
        assert sorted(r[0] for r in quarantined) == ["", "M000002", "M000002"]
    # fixed at the source: the row that stays is compared with what was exported before
    edit(sample, "members", bob.replace("Bob,Roy", "Robert,Roy") + "2026-11-25T00:00:00Z\n", "")
    edit(sample, "offers", offer.replace("Bonus 2000", "Bonus 3000"), "")
    data = run(sample, expect=ExitCode.INVALID_INPUT)
    assert data["datasets"]["members"]["held"] == 1  # the NULL key is still there
    assert rows_of(data, "members") == [] and rows_of(data, "offers") == []
    edit(
        sample,
        "members",
        ",nobody@example.com,No,Key,Gold,1,1.00,CAD,2022-07-01,active,2026-11-25T00:00:00Z\n",
        "",
    )
    assert run(sample)["held"] == 0


def test_parts_cut_by_duckdb_hold_whole_records_and_exact_counts(tmp_path: Path) -> None:
    """Quoted commas, quotes and newlines across several parts: each part a whole CSV."""
    import duckdb

    con = duckdb.connect()
    con.execute(
        "CREATE TABLE t AS SELECT i AS id, CASE WHEN i % 3 = 0 THEN 'O''Neil, \"Jr\"' || chr(10)"
        " || repeat('x', i % 50) ELSE md5(i::VARCHAR) END AS note FROM range(40000) r(i)"
    )
    writer = FileWriter(tmp_path, "2026-11-26", "run", max_file_mb=1)
    count, staged = writer.stage(con, "members", "rows", "SELECT * FROM t")
    published = writer.publish(staged, con, {("members", "rows"): count})
    assert count == 40_000 and len(published) >= 2
    seen: list[str] = []
    for f in published:
        assert f.bytes < 1024 * 1024
        assert hashlib.sha256(f.path.read_bytes()).hexdigest() == f.sha256
        table = read_csv_gz(f.path)
        assert table[0] == ["id", "note"] and len(table) - 1 == f.rows
        seen += [r[0] for r in table[1:]]
    assert sorted(seen, key=int) == [str(i) for i in range(40_000)]
    assert f"{published[0].path.name}".endswith("-0001.csv.gz")
