from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from optisync.optimove.formats import batch_datetime, timestamp_for_optimove

PLUS_TWO = timezone(timedelta(hours=2))
PLUS_FIVE_THIRTY = timezone(timedelta(hours=5, minutes=30))


def test_event_timestamp_converts_offset_to_utc() -> None:
    dt = datetime(2024, 5, 27, 12, 30, 0, 123456, tzinfo=PLUS_TWO)
    assert timestamp_for_optimove(dt) == "2024-05-27 10:30:00.123456 UTC"


def test_event_timestamp_keeps_six_fraction_digits_and_crosses_midnight() -> None:
    dt = datetime(2024, 1, 1, 3, 0, tzinfo=PLUS_FIVE_THIRTY)
    assert timestamp_for_optimove(dt) == "2023-12-31 21:30:00.000000 UTC"


def test_batch_datetime_converts_offset_to_utc_without_fraction() -> None:
    dt = datetime(2024, 5, 27, 12, 30, 5, 999999, tzinfo=PLUS_TWO)
    assert batch_datetime(dt) == "2024-05-27 10:30:05"


def test_utc_input_is_unchanged() -> None:
    dt = datetime(2024, 5, 27, 10, 30, tzinfo=UTC)
    assert timestamp_for_optimove(dt) == "2024-05-27 10:30:00.000000 UTC"
    assert batch_datetime(dt) == "2024-05-27 10:30:00"


@pytest.mark.parametrize("fmt", [timestamp_for_optimove, batch_datetime])
def test_naive_datetime_is_refused(fmt: object) -> None:
    assert callable(fmt)
    with pytest.raises(ValueError, match="timezone-aware"):
        fmt(datetime(2024, 5, 27, 10, 30))
