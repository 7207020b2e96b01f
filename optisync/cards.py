"""Card-number detection and masking.

No value that looks like a payment card number may be sent to Optimove or stored by
optisync. "Looks like" is decided on *runs*:

* Text is **normalised** first: every Unicode decimal digit (full-width,
  Arabic-Indic, ...) counts as its ASCII digit, every Unicode space (no-break, thin,
  ideographic, ...) as a space, every Unicode dash as ``-``, invisible format characters
  (zero-width space, ...) are ignored, and a row of spaces counts as one space. Masks and
  paths refer to the original text.
* A **run** is a maximal sequence of digits in which consecutive digits may be
  separated by at most one space (after normalising) or one dash (``4111 1111-1111 1111``).
  Anything else — a letter, a dot, a slash, a dash next to a space or another dash — ends
  the run. So ``1234.56``,
  ``12/27`` and ``2026-11-25T10:15`` split into short runs and are never flagged.
* A run is **card-like** when its digits (separators ignored) number 13 to 19 and pass the
  Luhn check. The whole run is then masked.
* A run of more than 19 digits **written without separators** (an order number, an IBAN
  tail, a hash) is never flagged: checking every 13-19 digit window of it would flag about
  one in ten such numbers by chance.
* A run of more than 19 digits **with separators** is split at its separators into groups,
  and every sequence of whole consecutive groups holding 13-19 digits is checked
  (leftmost first, longest first; flagged windows do not overlap). This catches a card
  number followed by more digits, as in ``4111 1111 1111 1111 12 27`` (number + expiry),
  at the price of occasionally masking a long grouped number that is not a card; for a
  guard, masking too much is the safe side.

A masked run becomes ``*`` for every digit but the last four, separators dropped:
``4111-1111-1111-1111`` → ``************1111``.

Numbers are checked too (an ``int`` can be a PAN): integers, integral floats and
integral Decimals are read as their digit string. A flagged number is masked into a
string. Booleans are not numbers here.

Paths are dotted: dict keys and list indices joined by ``.`` (``data.cards.0.note``); a
hit on the top-level value itself has the path ``$``. When a dict *key* is card-like, the
path reported names the masked key, so a path never repeats a card number.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

__all__ = [
    "ROOT_PATH",
    "find_card_numbers",
    "is_luhn_valid",
    "mask_card_numbers",
    "mask_text",
    "may_hold_card",
]

ROOT_PATH = "$"

MIN_DIGITS = 13
MAX_DIGITS = 19

# A maximal run (see module docstring) holding at least 13 digits. The look-behinds stop
# a match from starting in the middle of a run; greediness makes it end at the run's end.
_RUN = re.compile(r"(?<![0-9])(?<![0-9][ -])[0-9](?:[ -]?[0-9]){12,}")
# What normalising can turn into a digit or a separator, as a JSON \u escape: an ASCII
# digit, space or dash, a no-break space, or any character beyond Latin-1.
_ESCAPE_TEXT = (
    r"\\u(?:00(?:3[0-9]|2[0dD]|[aA]0)|0[1-9a-fA-F][0-9a-fA-F]{2}|[1-9a-fA-F][0-9a-fA-F]{3})"
)
_SEPARATORS = re.compile(r"[ -]")
# In raw JSON text, digits can also hide behind an exponent (4.111e15) or a \u escape
# that writes a digit, a space or a dash (\u0034); any other escape writes a character
# that ends a run, as the escape's own backslash does in the raw text. The prefilter looks
# for any 13-digit window, without _RUN's look-behinds: a superset.
_CANDIDATE = re.compile(r"[0-9](?:(?: +|-)?[0-9]){12}|" + _ESCAPE_TEXT + r"|[0-9][eE][+-]?[0-9]")


# The regex above tries a match at every position of the text, which costs more than
# validating the event. This table maps the text to a shape that plain substring searches
# can screen: every digit becomes "0", "e" and "E" become "e", "+" stays, and everything
# else becomes "x", while spaces and dashes are deleted. Deleting every separator joins
# runs the regex would keep apart, so the screen answers "maybe" for a superset of the
# texts the regex matches; only those are handed to the regex itself.
_SHAPE = bytes(
    ord("0")
    if 48 <= b <= 57
    else ord("e")
    if b in b"eE"
    else ord("+")
    if b == ord("+")
    else ord("x")
    for b in range(256)
)
_THIRTEEN_DIGITS = b"0" * MIN_DIGITS
_ESCAPE = re.compile(_ESCAPE_TEXT.encode())


def may_hold_card(raw_json: str | bytes) -> bool:
    """False when the raw JSON text cannot hold a card number, so the walk can be skipped.

    Every string and number of a document appears in its text; a run of 13+ digits, an
    escape writing a digit or separator, or an exponent is needed to make one, and most
    events have none. ``raw_json`` may be the text or its UTF-8 bytes. Text holding
    non-ASCII characters is screened after normalising (a full-width or Arabic-Indic digit,
    a no-break space), exactly as the full check reads it.
    """
    if not raw_json.isascii():
        text = raw_json if isinstance(raw_json, str) else raw_json.decode("utf-8", "replace")
        raw_json = _normalised(text)
    raw = raw_json if isinstance(raw_json, bytes) else raw_json.encode("utf-8", "surrogatepass")
    shape = raw.translate(_SHAPE, b" -")
    if _THIRTEEN_DIGITS not in shape and b"0e0" not in shape and b"0e+0" not in shape:
        # only an escape can still make a candidate: the regex's own alternative for it
        return b"\\u" in raw and _ESCAPE.search(raw) is not None
    text = raw_json if isinstance(raw_json, str) else raw_json.decode("utf-8", "replace")
    return _CANDIDATE.search(text) is not None


# Luhn doubling table: digit d at an even position from the right (1-based) counts as this.
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def is_luhn_valid(digits: str) -> bool:
    """Whether a string of ASCII digits passes the Luhn (mod 10) check."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        total += _DOUBLED[d] if i % 2 else d
    return total % 10 == 0


def _mask_digits(digits: str) -> str:
    return "*" * (len(digits) - 4) + digits[-4:]


def _card_spans(run: str) -> list[tuple[int, int, str]]:
    """Card-like spans in one run, as (start, end, digits) relative to the run."""
    digits = _SEPARATORS.sub("", run)
    if MIN_DIGITS <= len(digits) <= MAX_DIGITS:
        return [(0, len(run), digits)] if is_luhn_valid(digits) else []
    if len(digits) < MIN_DIGITS or len(digits) == len(run):
        return []  # too short, or a long run written without separators
    groups = [(m.start(), m.end()) for m in re.finditer(r"[0-9]+", run)]
    spans: list[tuple[int, int, str]] = []
    i = 0
    while i < len(groups):
        found = None
        # Longest window first: grow j as far as 19 digits allow, then shrink.
        candidates: list[tuple[int, str]] = []
        acc = ""
        for j in range(i, len(groups)):
            acc += run[groups[j][0] : groups[j][1]]
            if len(acc) > MAX_DIGITS:
                break
            if len(acc) >= MIN_DIGITS:
                candidates.append((j, acc))
        for j, acc_digits in reversed(candidates):
            if is_luhn_valid(acc_digits):
                found = (groups[i][0], groups[j][1], acc_digits)
                i = j + 1
                break
        if found is None:
            i += 1
        else:
            spans.append(found)
    return spans


@functools.lru_cache(maxsize=4096)
def _read_char(ch: str) -> str:
    """How the check reads one non-ASCII character (module docstring)."""
    if ch.isdecimal():
        return str(unicodedata.decimal(ch))
    category = unicodedata.category(ch)
    if category == "Zs":
        return " "
    if category == "Pd":
        return "-"
    if category == "Cf":
        return ""  # zero-width and other invisible characters
    return ch


_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_SPACE_ROW = re.compile(r" {2,}")


def _normalised(text: str) -> str:
    """``text`` as the check reads it; the cost grows with its non-ASCII characters only."""
    if not text.isascii():
        text = _NON_ASCII.sub(lambda m: _read_char(m.group()), text)
    if "  " in text:
        text = _SPACE_ROW.sub(" ", text)
    return text


def _normalise(text: str) -> tuple[str, list[int] | None]:
    """``text`` as the check reads it, and where each of its characters came from in
    ``text`` (None when nothing changed)."""
    if text.isascii() and "  " not in text:
        return text, None
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        mapped = ch if ch.isascii() else _read_char(ch)
        if not mapped or (mapped == " " and out and out[-1] == " "):
            continue
        out.append(mapped)
        origin.append(i)
    return "".join(out), origin


def _iter_hits(text: str) -> Iterator[tuple[int, int, str]]:
    """Card-like spans of ``text`` as (start, end, digits), left to right; the spans are
    positions in ``text``, the digits ASCII."""
    if len(text) < MIN_DIGITS:
        return
    if (not text.isascii() or "  " in text) and _RUN.search(_normalised(text)) is None:
        return  # the common case: no run at all, and no position map to build
    norm, origin = _normalise(text)
    for m in _RUN.finditer(norm):
        for start, end, digits in _card_spans(m.group()):
            start, end = m.start() + start, m.start() + end
            if origin is not None:
                # a digit is one character in both texts, and a span ends on one
                start, end = origin[start], origin[end - 1] + 1
            yield start, end, digits


def mask_text(text: str) -> str:
    """``text`` with every card-like run replaced by its mask; other text is unchanged."""
    out: list[str] = []
    pos = 0
    for start, end, digits in _iter_hits(text):
        out.append(text[pos:start])
        out.append(_mask_digits(digits))
        pos = end
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _number_digits(value: object) -> str | None:
    """The digit string of an integral number, or None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(abs(value))
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(abs(int(value)))
        return None
    if isinstance(value, Decimal):
        if value.is_finite() and value == value.to_integral_value():
            return str(abs(int(value)))
        return None
    return None


def _scalar_has_card(value: object) -> bool:
    if isinstance(value, str):
        return next(_iter_hits(value), None) is not None
    digits = _number_digits(value)
    return digits is not None and next(_iter_hits(digits), None) is not None


def _join(path: str, part: str) -> str:
    return part if path == ROOT_PATH else f"{path}.{part}"


def find_card_numbers(value: object) -> list[str]:
    """Dotted paths of the strings, numbers and dict keys in ``value`` holding a card number.

    ``value`` is any JSON-like value (dicts, lists, tuples, strings, numbers, None);
    other objects are ignored. Paths are listed once each, in walk order.
    """
    found: list[str] = []
    _walk_find(value, ROOT_PATH, found)
    return list(dict.fromkeys(found))


def _walk_find(value: object, path: str, found: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            key_text = key if isinstance(key, str) else str(key)
            masked_key = mask_text(key_text)
            child = _join(path, masked_key)
            if masked_key != key_text:
                found.append(child)
            _walk_find(item, child, found)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _walk_find(item, _join(path, str(index)), found)
    elif _scalar_has_card(value):
        found.append(path)


def mask_card_numbers(value: Any) -> Any:
    """A deep copy of ``value`` with every card-like run masked, dict keys included.

    Strings keep all their other text; a number that is a card number becomes its masked
    string. Containers are copied (tuples stay tuples); other objects are returned as is.
    """
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {_mask_key(k): mask_card_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_card_numbers(v) for v in value]
    if isinstance(value, tuple):
        return tuple(mask_card_numbers(v) for v in value)
    digits = _number_digits(value)
    if digits is not None and next(_iter_hits(digits), None) is not None:
        return mask_text(digits)
    return value


def _mask_key(key: Any) -> Any:
    if isinstance(key, str):
        return mask_text(key)
    digits = _number_digits(key)
    if digits is not None and next(_iter_hits(digits), None) is not None:
        return mask_text(digits)
    return key
