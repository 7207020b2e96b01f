"""Locale-aware formatting: Optimove does not localize transactional mail, so amounts,
numbers and dates are sent already written the way the member reads them (docs/realtime.md).
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from optisync.events import Money

if TYPE_CHECKING:
    from babel import Locale

    from optisync.config.models import Format


@lru_cache(maxsize=256)
def locale_for(tag: str | None, default: str) -> Locale:
    """The Babel locale for an envelope's tag (``fr_CA`` or ``fr-CA``), else the default."""
    from babel import Locale, UnknownLocaleError

    for candidate in (tag, default):
        if not candidate:
            continue
        try:
            return Locale.parse(candidate.replace("-", "_"))
        except (UnknownLocaleError, ValueError):
            continue
    return Locale.parse("en_US")


class MemberLocale:
    """A member's locale, resolved on first use: Babel's locale data costs tens of
    milliseconds to load, and a cold single-event push often formats nothing."""

    def __init__(self, tag: str | None, default: str) -> None:
        self.tag, self.default = tag, default

    def __call__(self) -> Locale:
        return locale_for(self.tag, self.default)


def format_value(
    value: Any, fmt: Format, member_locale: MemberLocale, default_currency: str
) -> Any:
    """``value`` written per ``fmt``; ``raw`` keeps JSON types and writes dates in ISO form."""
    if value is None:
        return None
    if fmt == "raw":
        return _raw(value)
    locale = member_locale()
    from babel.dates import format_date, format_datetime
    from babel.numbers import format_currency, format_decimal, format_percent

    if fmt == "currency":
        if isinstance(value, Money):
            return format_currency(value.value, value.currency, locale=locale)
        return format_currency(_number(value), default_currency, locale=locale)
    if fmt == "number":
        return format_decimal(_number(value), locale=locale)
    if fmt == "integer":
        return format_decimal(int(_number(value)), format="#,##0", locale=locale)
    if fmt == "percent":
        return format_percent(_number(value), locale=locale)
    if fmt == "date":
        if isinstance(value, datetime):
            value = value.date()
        return format_date(value, format="long", locale=locale)
    if fmt == "datetime":
        if isinstance(value, datetime):
            return format_datetime(value, format="medium", tzinfo=value.tzinfo, locale=locale)
        return format_date(value, format="long", locale=locale)
    raise ValueError(f"unknown format {fmt!r}")  # pragma: no cover - Literal rules it out


def _number(value: Any) -> Decimal:
    if isinstance(value, Money):
        return value.value
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("NaN and infinities cannot be formatted")
    return Decimal(str(value))


def _raw(value: Any) -> Any:
    if isinstance(value, Money):
        return value.amount
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value
