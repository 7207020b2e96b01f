"""The one redaction point for secrets.

Every configured secret (the Optimove API key and events token, the Snowflake password and
key passphrase) is registered here when a config is loaded or a client is built, and
:func:`redact` removes every copy of one from a text: raw, JSON-escaped, ``repr``-escaped
(as text and as bytes), percent-encoded, and backslash-escaped. Error messages, log lines
(through :class:`RedactingFilter`) and dead-letter texts pass through it, so a secret that
reaches an exception's text (a header the HTTP stack refused, a URL a proxy echoed) is
never printed, logged or stored.
"""

from __future__ import annotations

import json
import logging
import threading
from urllib.parse import quote, quote_plus

__all__ = ["MASK", "RedactingFilter", "forms", "redact", "register", "registered"]

MASK = "****"
#: Shorter secrets are not registered: replacing two or three characters everywhere would
#: garble every message, and such a secret protects nothing anyway.
MIN_LENGTH = 6

_lock = threading.Lock()
_secrets: set[str] = set()
_forms: tuple[str, ...] = ()


def forms(secret: str) -> set[str]:
    """Every way ``secret`` is commonly written into a text."""
    found = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        repr(secret.encode("utf-8"))[2:-1],
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        secret.encode("unicode_escape").decode("ascii"),
    }
    stripped = secret.strip()
    if stripped != secret and len(stripped) >= MIN_LENGTH:
        found |= forms(stripped)
    return {f for f in found if f}


def register(*secrets: str | None) -> None:
    """Add secrets to redact from now on (empty and very short ones are ignored)."""
    global _forms
    new = {s for s in secrets if s and len(s) >= MIN_LENGTH} - _secrets
    if not new:
        return
    with _lock:
        _secrets.update(new)
        every = {f for s in _secrets for f in forms(s)}
        # longest first: an escaped form must go before the raw one inside it is cut
        _forms = tuple(sorted(every, key=len, reverse=True))


def registered() -> frozenset[str]:
    return frozenset(_secrets)


def redact(text: str) -> str:
    """``text`` without any registered secret, in any of its forms."""
    for form in _forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Redacts a log record's message, its arguments and any exception text in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _forms:
            return True
        message = record.getMessage()
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
