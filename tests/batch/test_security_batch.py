"""Attacks through the batch source: card numbers in EMD key names (docs/security.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optisync.errors import ExitCode
from tests.support import EXAMPLES, invoke

PAN = "4111111111111111"
WIDE = "4111 1111 1111 1111".translate({48 + d: 0xFF10 + d for d in range(10)})  # full-width


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A private copy of the example config and data, writing under tmp_path/var."""
    shutil.copytree(EXAMPLES / "data", tmp_path / "examples" / "data")
    text = (EXAMPLES / "optisync.yaml").read_text(encoding="utf-8")
    text = text.replace("templates/", str(EXAMPLES / "templates") + "/")
    path = tmp_path / "examples" / "optisync.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def run(config: Path, *args: str, expect: int = ExitCode.OK) -> tuple[dict[str, Any], str]:
    result = invoke("--config", str(config), "--json", "export-batch", *args, expect=expect)
    return json.loads(result.stdout), result.stdout + result.stderr


def test_emd_key_names_holding_a_card_number_are_masked(sample: Path) -> None:
    emd = sample.parent / "data" / "emd.csv"
    with emd.open("a", encoding="utf-8") as fh:
        fh.write(f"M000001,{PAN},1,2026-11-24T21:05:00Z\n")
        fh.write(f"M000002,{WIDE},1,2026-11-24T21:05:00Z\n")
    data, output = run(sample)
    assert data["emd_unmapped"]["************1111"] == 2
    manifest = Path(data["manifest"]).read_text(encoding="utf-8")
    for text in (output, manifest):
        assert PAN not in text and WIDE not in text
    assert "************1111" in manifest


def test_a_duckdb_source_cannot_read_local_files_into_the_export(
    write_config: Any, tmp_path: Path
) -> None:
    import duckdb

    secret = tmp_path / "etc" / "apikey.txt"
    secret.parent.mkdir()
    secret.write_text("REST-KEY-abc123", encoding="utf-8")
    db = tmp_path / "loyalty.duckdb"
    con = duckdb.connect(str(db))
    con.execute(
        "CREATE TABLE base AS SELECT 'M' || i AS member_id,"
        " TIMESTAMPTZ '2026-11-25 10:00:00+02' AS changed FROM range(3) t(i)"
    )
    con.execute(
        "CREATE VIEW members AS SELECT member_id, changed, content AS note"
        f" FROM base, read_text('{secret}')"
    )
    con.close()
    config = write_config(
        f"""
        attributes:
          batch:
            - {{name: Note, type: text, source: note}}
          emd: {{opt_in_key: email_opt_in}}
        batch:
          source: {{kind: duckdb, path: {db}}}
          output: {{dir: out}}
          state_dir: state
          datasets:
            members: {{key: [member_id], columns: {{CustomerID: member_id}}, updated_at: changed}}
        """
    )
    result = invoke("--config", str(config), "export-batch", expect=ExitCode.CONFIG)
    assert "outside" in result.stderr and "read_text" not in result.stdout
    assert "REST-KEY" not in result.stdout + result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != secret and path.suffix != ".duckdb":
            assert b"REST-KEY" not in path.read_bytes(), path


TRICKY = ["a\\", "it's", "a\\' OR 1=1 --", "\\\\'", "x\\'; DROP TABLE t; --"]


@pytest.mark.parametrize("text", TRICKY)
def test_snowflake_literals_escape_backslashes_too(text: str) -> None:
    sqlglot = pytest.importorskip("sqlglot")
    from optisync.batch.plan import SNOWFLAKE

    # one literal, read back as exactly the text: nothing leaks into the statement
    parsed = sqlglot.parse_one(f"SELECT {SNOWFLAKE.literal(text)}, 'after'", read="snowflake")
    assert [e.this for e in parsed.expressions] == [text, "after"]


@pytest.mark.parametrize("text", TRICKY)
def test_duckdb_literals_round_trip(text: str) -> None:
    import duckdb

    from optisync.batch.plan import DUCKDB

    assert duckdb.connect().execute(f"SELECT {DUCKDB.literal(text)}").fetchall() == [(text,)]


def test_every_literal_of_dialect_bound_sql_goes_through_the_dialect() -> None:
    # SQL that may run in Snowflake is built in these modules; the hand-made literals that
    # only doubled quotes (or stripped them) must not come back
    root = Path(__file__).resolve().parents[2] / "optisync" / "batch"
    for path in [root / "plan.py", root / "delta.py", *(root / "snowflake").glob("*.py")]:
        text = path.read_text(encoding="utf-8")
        own = 2 if path.name == "plan.py" else 0  # the two Dialect.literal themselves
        assert text.count('replace("\'", "\'\'")') == own, path
        assert 'replace("\'", "")' not in text, path


@pytest.mark.parametrize("code", ["CAD'); DROP TABLE x; --", "XYZ", "cad", "CAD\\"])
def test_default_currency_is_checked_against_iso_4217_at_load(write_config: Any, code: str) -> None:
    from optisync.config import load_config
    from optisync.errors import ConfigError

    path = write_config(
        f"locale: {{default_locale: en_CA, default_currency: {json.dumps(code)}}}\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "locale.default_currency: unknown currency" in "\n".join(exc.value.problems)


# Decimal digit zeros of several scripts (each followed by its 1..9): ASCII, Arabic-Indic,
# Devanagari, Thai, full-width, mathematical bold; and separators cards.py reads as a space
# or drops (no-break, thin, ideographic space; zero-width space and joiner).
ZEROS = [0x30, 0x660, 0x966, 0xE50, 0xFF10, 0x1D7CE]
SEPARATORS = ["", " ", "-", "\u00a0", "\u2009", "\u3000", "\u200b", "\u200d"]


@given(
    scripts=st.lists(st.sampled_from(ZEROS), min_size=16, max_size=16),
    separator=st.sampled_from(SEPARATORS),
    before=st.text(max_size=8),
    after=st.text(max_size=8),
)
@settings(max_examples=300, deadline=None)
def test_the_sql_prefilter_lets_every_card_through_to_the_exact_check(
    scripts: list[int], separator: str, before: str, after: str
) -> None:
    """The prefilter only narrows: text the exact check masks always reaches it."""
    import duckdb

    from optisync.batch.plan import DUCKDB
    from optisync.cards import mask_text

    digits = [chr(zero + int(d)) for zero, d in zip(scripts, PAN, strict=True)]
    text = before + " " + separator.join(digits) + " " + after
    if mask_text(text) == text:
        return  # e.g. the digits merged with digits around them into no card
    con = duckdb.connect()
    row = con.execute(f"SELECT {DUCKDB.card_candidate('?')}", [text] * 4).fetchone()
    assert row == (True,)


def test_accented_text_is_not_sent_to_the_exact_check() -> None:
    """Names and cities with accents, fewer than 13 digits: no Python check row by row."""
    import duckdb

    from optisync.batch.plan import DUCKDB

    con = duckdb.connect()
    for text in ["Montréal, Québec H2X 1Y4", "Zoë, the 2nd — 12 rue Saint-Jean", "Åsa Léa"]:
        row = con.execute(f"SELECT {DUCKDB.card_candidate('?')}", [text] * 4).fetchone()
        assert row == (False,)
