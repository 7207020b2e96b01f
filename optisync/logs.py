"""Logging for unattended runs: ``--log-file``, ``--log-format json``, and member data masked
unless ``--log-pii`` is given (logs outlive runs and travel further than dead letters)."""

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

_SHOW_PII = False


def member(value: str | None) -> str:
    """A member id or email as logs show it: masked, unless --log-pii."""
    if value is None or _SHOW_PII:
        return str(value)
    if "@" in value:
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    if len(value) <= 4:
        return "*" * len(value)
    return f"{value[:2]}{'*' * (len(value) - 3)}{value[-1]}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            },
            ensure_ascii=False,
        )


def setup(
    verbosity: int,
    *,
    log_file: Path | None = None,
    log_format: Literal["text", "json"] = "text",
    log_pii: bool = False,
) -> None:
    """Warnings (and with -v, progress of retries) on stderr; everything from INFO in the file."""
    global _SHOW_PII
    _SHOW_PII = log_pii
    root = logging.getLogger("optisync")
    root.handlers.clear()
    root.propagate = False
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(
        logging.DEBUG if verbosity > 1 else logging.INFO if verbosity else logging.WARNING
    )
    formatter: logging.Formatter = (
        _JsonFormatter() if log_format == "json" else logging.Formatter("optisync: %(message)s")
    )
    console.setFormatter(formatter)
    root.addHandler(console)
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            from optisync.errors import StorageError

            raise StorageError(
                f"cannot write the log file {log_file}: {exc.strerror or exc}",
                hint="choose a writable --log-file",
            ) from exc
        handler.setLevel(logging.INFO)
        handler.setFormatter(
            formatter
            if log_format == "json"
            else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(handler)
