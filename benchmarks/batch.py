"""export-batch benchmark, each figure a ratio against a baseline in the same run.

    .venv/bin/python benchmarks/batch.py [--members N] [--big N] [--shape both] [--skip-pandas]
                                         [--huge 10000000] [--profile DIR]

Generates a DuckDB database of N members x 19 source columns (20 exported with
LastUpdated), then measures, each export in its own process (wall time, max RSS):

1. full export to gzip CSV vs DuckDB's own ``COPY (SELECT ...) TO 'file.csv.gz'`` of the
   same rows and columns (target: at most 0.5x on the random shape, 1.0x on the example);
2. the next run after 1 % of members changed vs the full export (target: at most 0.15x);
3. peak memory at N and at the big size (target: under 1 GB, growing less than 20 %);
4. the naive pandas approach (read everything, compare with the last snapshot, to_csv),
   full and incremental, as a reported ratio;
5. with ``--huge N``: a full export of N members (target: under 60 s for 10,000,000).

``--profile DIR`` also writes a cProfile of the full and the incremental run of each shape
(``DIR/<shape>-full.prof``, ``...-incremental.prof``), in runs apart from the timed ones.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
OPTISYNC = str(BIN / "optisync")

COLUMNS = {  # output name -> source column
    "CustomerID": "member_id",
    "Email": "email",
    "FirstName": "first_name",
    "LastName": "last_name",
    "TierName": "tier",
    "PointsBalance": "points",
    "LifetimeSpend": "spend",
    "EnrolledOn": "enrolled_on",
    "BirthDate": "birth_date",
    "City": "city",
    "PostalCode": "postal_code",
    "Country": "country",
    "Language": "language",
    "Status": "status",
    "HouseholdId": "household_id",
    "Visits": "visits",
    "LastVisitAt": "last_visit_at",
    "Segment": "segment",
}

GENERATE = """
CREATE OR REPLACE TABLE members AS
SELECT 'M' || lpad(i::VARCHAR, 9, '0') AS member_id,
       'member' || i || '@example.com' AS email,
       ['Ann','Bob','Chloé','Dan','Eve','Fay','Gus','Hana'][1 + i % 8] AS first_name,
       ['Lee','Roy','Gagnon','Chen','Singh','Smith','Tremblay'][1 + (i // 8) % 7] AS last_name,
       ['Bronze','Silver','Gold','Platinum'][1 + (i * 7) % 4] AS tier,
       (i * 37) % 50000 AS points,
       ((i * 131) % 1000000) / 100.0 AS spend,
       DATE '2015-01-01' + ((i * 13) % 3650)::INT AS enrolled_on,
       DATE '1950-01-01' + ((i * 17) % 20000)::INT AS birth_date,
       ['Montréal','Toronto','Vancouver','Calgary','Halifax'][1 + i % 5] AS city,
       'H' || (i % 10) || 'X ' || (i % 9) || 'Y' || (i % 7) AS postal_code,
       'CA' AS country,
       ['en','fr'][1 + i % 2] AS language,
       ['active','inactive'][1 + (i % 11 = 0)::INT] AS status,
       'HH' || (i // 3) AS household_id,
       (i * 3) % 400 AS visits,
       TIMESTAMP '2026-01-01 00:00:00' + to_seconds((i * 7919) % 28000000) AS last_visit_at,
       'S' || (i % 23) AS segment,
       'CAD' AS currency
FROM range({n}) t(i)
"""

# Shaped like examples/data/members.csv: names with quotes and commas (one row in six), a
# city with an embedded newline now and then, NULLs, unicode, values repeating as in a real
# member table, unique ids and emails. CSV quoting is the slow path of a naive writer.
GENERATE_EXAMPLE = """
CREATE OR REPLACE TABLE members AS
SELECT 'M' || lpad(i::VARCHAR, 9, '0') AS member_id,
       'member' || i || '@example.com' AS email,
       CASE WHEN i % 6 = 0 THEN ['O''Neil, Jr.', 'Ann "Annie"', 'Zoë, the 2nd'][1 + i % 3]
            ELSE ['Ann','Bob','Chloé','Dan','Eve','Fay','Gus','Hana','Åsa','Léa'][1 + i % 10]
       END AS first_name,
       ['Lee','Roy','Gagnon','Chen','Singh','Smith','Tremblay','Ng'][1 + (i // 10) % 8]
           AS last_name,
       ['Bronze','Silver','Gold','Platinum'][1 + (i * 7) % 4] AS tier,
       (i * 37) % 50000 AS points,
       ((i * 131) % 1000000) / 100.0 AS spend,
       DATE '2015-01-01' + ((i * 13) % 3650)::INT AS enrolled_on,
       CASE WHEN i % 13 = 0 THEN NULL ELSE DATE '1950-01-01' + ((i * 17) % 20000)::INT
       END AS birth_date,
       CASE WHEN i % 97 = 0 THEN 'Saint-Jean-' || chr(10) || 'sur-Richelieu'
            ELSE ['Montréal','Toronto','Vancouver','Calgary','Québec, QC'][1 + i % 5]
       END AS city,
       CASE WHEN i % 17 = 0 THEN NULL ELSE 'H' || (i % 10) || 'X ' || (i % 9) || 'Y' || (i % 7)
       END AS postal_code,
       'CA' AS country,
       ['en','fr'][1 + i % 2] AS language,
       ['active','inactive'][1 + (i % 11 = 0)::INT] AS status,
       'HH' || (i // 3) AS household_id,
       (i * 3) % 400 AS visits,
       TIMESTAMP '2026-01-01 00:00:00' + to_seconds((i * 7919) % 28000000) AS last_visit_at,
       CASE WHEN i % 29 = 0 THEN NULL ELSE 'S' || (i % 23) END AS segment,
       'CAD' AS currency
FROM range({n}) t(i)
"""
SHAPES = {"random": GENERATE, "example": GENERATE_EXAMPLE}

# Targets (docs/benchmarks.md): each figure is checked and printed PASS or FAIL.
TARGETS = {
    "random": {"full_vs_duckdb_copy": 0.5, "incremental_vs_full": 0.15},
    "example": {"full_vs_duckdb_copy": 1.0, "incremental_vs_full": 0.15},
}
HUGE_SECONDS = 60.0
MEMORY_LIMIT_MB = 1024
GROWTH_LIMIT = 0.20

CONFIG = """\
attributes:
  emd: {{opt_in_key: email_opt_in}}
batch:
  source: {{kind: duckdb, path: {db}}}
  output: {{dir: {out}, max_file_mb: 200}}
  state_dir: {state}
{memory}  datasets:
    members:
      key: [member_id]
      currency: currency
      columns:
{columns}
"""


def _run(args: list[str]) -> tuple[float, int]:
    """Wall seconds and max RSS (bytes) of one child process.

    Linux counts in a child's max RSS the peak of the process it was started from (the
    address space replaced at exec), so this process never does heavy work itself: the
    data is generated and changed in children too, and its own peak is reported.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed: {status}")
    return wall, usage.ru_maxrss * 1024


def _baseline(db: Path, target: Path) -> float:
    """DuckDB's own COPY of the same rows and columns, one gzip CSV, same process count."""
    select = ", ".join(f"{src} AS {out}" for out, src in COLUMNS.items())
    code = (
        "import duckdb,sys;con=duckdb.connect(sys.argv[1], read_only=True);"
        f'con.execute("COPY (SELECT {select}, currency AS Currency, now()::TIMESTAMP AS'
        f" LastUpdated FROM members) TO '{target}' (FORMAT csv, COMPRESSION gzip, HEADER)\")"
    )
    wall, _ = _run([sys.executable, "-c", code, str(db)])
    return wall


def _pandas(work: Path, db: Path, snapshot: Path | None) -> float:
    """The naive approach: read everything, compare with the last snapshot, to_csv."""
    code = f"""
import duckdb, pandas as pd, sys
con = duckdb.connect({str(db)!r}, read_only=True)
cur = con.execute("SELECT * FROM members").df()
snap = {str(snapshot) + '.pkl' if snapshot else None!r}
if snap:
    old = pd.read_pickle(snap)
    merged = cur.merge(old, on="member_id", how="left", suffixes=("", "_old"), indicator=True)
    cols = [c for c in cur.columns if c != "member_id"]
    changed = merged["_merge"] == "left_only"
    for c in cols:
        a, b = merged[c], merged[c + "_old"]
        changed |= ~((a == b) | (a.isna() & b.isna()))
    out = cur[changed.values]
else:
    out = cur
out.to_csv({str(work / 'pandas.csv.gz')!r}, index=False, compression="gzip",
           date_format="%Y-%m-%d %H:%M:%S")
cur.to_pickle({str(work / 'pandas-snapshot.pkl')!r})
"""
    wall, _ = _run([sys.executable, "-c", code])
    return wall


def _sql(db: Path, sql: str) -> None:
    """Run ``sql`` on the database in a child process (see ``_run``)."""
    code = "import duckdb,sys;con=duckdb.connect(sys.argv[1]);con.execute(sys.argv[2]);con.close()"
    _run([sys.executable, "-c", code, str(db), sql])


def _setup(work: Path, n: int, memory: str | None, shape: str = "random") -> tuple[Path, Path]:
    db = work / f"members-{n}-{shape}.duckdb"
    _sql(db, SHAPES[shape].format(n=n))
    columns = "\n".join(f"        {out}: {src}" for out, src in COLUMNS.items())
    config = work / f"optisync-{n}-{shape}.yaml"
    config.write_text(
        CONFIG.format(
            db=db,
            out=work / f"out-{n}-{shape}",
            state=work / f"state-{n}-{shape}",
            memory=f"  memory_limit: {memory}\n" if memory else "",  # else the default
            columns=columns,
        ),
        encoding="utf-8",
    )
    return db, config


def _change(db: Path, share: float) -> None:
    step = round(1 / share)
    _sql(
        db,
        f"UPDATE members SET points = points + 1 WHERE CAST(member_id[2:] AS BIGINT) % {step} = 0",
    )


def _exported_rows(out: Path) -> int:
    """Rows the manifests say were written for members: every row must be exported."""
    return sum(
        item["rows"]
        for manifest in out.glob("*/manifest.json")
        for item in json.loads(manifest.read_text())["files"]
        if item["dataset"] == "members" and item["kind"] == "rows"
    )


def _profile(config: Path, target: Path, *args: str) -> None:
    """One more export under cProfile (not timed: the profiler slows Python down)."""
    _run([sys.executable, "-m", "cProfile", "-o", str(target), OPTISYNC, "--config",
          str(config), "export-batch", *args])  # fmt: skip


def _measure(
    work: Path, n: int, memory: str | None, shape: str, profile: Path | None = None
) -> dict[str, float]:
    db, config = _setup(work, n, memory, shape)
    base = _baseline(db, work / f"duckdb-copy-{shape}.csv.gz")
    full, full_rss = _run([OPTISYNC, "--config", str(config), "export-batch", "--full"])
    exported = _exported_rows(work / f"out-{n}-{shape}")
    if exported != n:
        raise SystemExit(f"{shape}: the full export wrote {exported} member rows of {n}")
    _change(db, 0.01)
    inc, inc_rss = _run([OPTISYNC, "--config", str(config), "export-batch"])
    changed = _exported_rows(work / f"out-{n}-{shape}") - n
    if changed != n // 100:
        raise SystemExit(f"{shape}: the incremental export wrote {changed} rows of {n // 100}")
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        _profile(config, profile / f"{shape}-full.prof", "--full")
        _change(db, 0.01)
        _profile(config, profile / f"{shape}-incremental.prof")
    return {
        "duckdb_copy_s": round(base, 2),
        "full_s": round(full, 2),
        "full_vs_duckdb_copy": round(full / base, 2),
        "incremental_1pct_s": round(inc, 2),
        "incremental_vs_full": round(inc / full, 2),
        "full_max_rss_mb": round(full_rss / 2**20),
        "incremental_max_rss_mb": round(inc_rss / 2**20),
    }


def _verdicts(results: dict[str, Any]) -> list[str]:
    lines = []
    for shape in SHAPES:
        figures = results.get(shape)
        if not isinstance(figures, dict):
            continue
        for name, target in TARGETS[shape].items():
            ok = figures[name] <= target
            lines.append(f"{'PASS' if ok else 'FAIL'} {shape} {name} {figures[name]} <= {target}")
        for name in ("full_max_rss_mb", "incremental_max_rss_mb"):
            ok = figures[name] < MEMORY_LIMIT_MB
            lines.append(f"{'PASS' if ok else 'FAIL'} {shape} {name} {figures[name]} < 1024")
    if "huge_full_s" in results:
        ok = results["huge_full_s"] < HUGE_SECONDS
        lines.append(
            f"{'PASS' if ok else 'FAIL'} huge_full_s ({results['huge_members']} members)"
            f" {results['huge_full_s']} < {HUGE_SECONDS}"
        )
    for name in ("full_rss_growth", "incremental_rss_growth"):
        if name in results:
            ok = results[name] < GROWTH_LIMIT
            lines.append(f"{'PASS' if ok else 'FAIL'} {name} {results[name]} < {GROWTH_LIMIT}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--big", type=int, default=5_000_000)
    parser.add_argument("--memory-limit", help="batch.memory_limit (default: the shipped one)")
    parser.add_argument("--shape", choices=[*SHAPES, "both"], default="both")
    parser.add_argument("--skip-pandas", action="store_true")
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--huge", type=int, default=0, help="also a full export of N members")
    parser.add_argument("--profile", type=Path, help="write cProfile files to this folder")
    args = parser.parse_args()
    results: dict[str, Any] = {"members": args.members, "cores": os.cpu_count()}
    shapes = list(SHAPES) if args.shape == "both" else [args.shape]
    with tempfile.TemporaryDirectory(prefix="optisync-bench-") as tmp:
        work = Path(tmp)
        for shape in shapes:
            results[shape] = _measure(work, args.members, args.memory_limit, shape, args.profile)
            print(json.dumps(results), flush=True)
        # pandas and the big size on the first shape only: they measure the engine, not CSV
        shape = shapes[0]
        db = work / f"members-{args.members}-{shape}.duckdb"
        config = work / f"optisync-{args.members}-{shape}.yaml"
        if not args.skip_pandas:
            full = results[shape]["full_s"]
            pfull = _pandas(work, db, None)
            _change(db, 0.01)
            inc2, _ = _run([OPTISYNC, "--config", str(config), "export-batch"])
            pinc = _pandas(work, db, work / "pandas-snapshot")
            results.update(
                pandas_full_s=round(pfull, 2),
                pandas_full_vs_optisync=round(pfull / full, 2),
                pandas_incremental_s=round(pinc, 2),
                pandas_incremental_vs_optisync=round(pinc / inc2, 2),
            )
            print(json.dumps(results), flush=True)
        if not args.skip_big:
            db5, config5 = _setup(work, args.big, args.memory_limit, shape)
            db.unlink()
            big, big_rss = _run([OPTISYNC, "--config", str(config5), "export-batch", "--full"])
            _change(db5, 0.01)
            big_inc, big_inc_rss = _run([OPTISYNC, "--config", str(config5), "export-batch"])
            results.update(
                big_members=args.big,
                big_full_s=round(big, 2),
                big_full_max_rss_mb=round(big_rss / 2**20),
                big_incremental_s=round(big_inc, 2),
                big_incremental_max_rss_mb=round(big_inc_rss / 2**20),
                full_rss_growth=round(big_rss / (results[shape]["full_max_rss_mb"] * 2**20) - 1, 3),
                incremental_rss_growth=round(
                    big_inc_rss / (results[shape]["incremental_max_rss_mb"] * 2**20) - 1, 3
                ),
            )
        if args.huge:
            for stale in work.glob("members-*.duckdb"):
                stale.unlink()  # room on disk for the huge one
            _, config10 = _setup(work, args.huge, args.memory_limit, shape)
            huge, huge_rss = _run([OPTISYNC, "--config", str(config10), "export-batch", "--full"])
            if _exported_rows(work / f"out-{args.huge}-{shape}") != args.huge:
                raise SystemExit(f"{shape}: the huge export did not write {args.huge} rows")
            results.update(
                huge_members=args.huge,
                huge_full_s=round(huge, 2),
                huge_full_max_rss_mb=round(huge_rss / 2**20),
            )
    # the floor under every max RSS above (see _run): this process's own peak
    results["harness_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(results, indent=2))
    verdicts = _verdicts(results)
    print("\n".join(verdicts))
    if any(v.startswith("FAIL") for v in verdicts):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
