"""Logging for unattended runs: ``--log-file``, ``--log-format json``, and member data masked
unless ``--log-pii`` is given (logs outlive runs and travel further than dead letters)."""

import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from optisync.durable import ensure_private_dir, is_symlink_error, open_private
from optisync.redact import RedactingFilter

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
    # on the handlers, not the logger: records of child loggers pass handler filters only
    console.addFilter(RedactingFilter())
    root.addHandler(console)
    if log_file is not None:
        handler = _file_handler(log_file)
        handler.setLevel(logging.INFO)
        handler.addFilter(RedactingFilter())
        handler.setFormatter(
            formatter
            if log_format == "json"
            else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(handler)


class _PrivateFileHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Appends to a file it opened itself (0600, never through a link); closes it on close."""

    def close(self) -> None:
        try:
            self.flush()
            self.stream.close()
        finally:
            super().close()


def _file_handler(log_file: Path) -> logging.Handler:
    """The --log-file handler. Logs may hold member data and error text: a new file is 0600
    in 0700 folders, and a symbolic link at the path is refused, not written through."""
    from optisync.errors import StorageError

    try:
        ensure_private_dir(log_file.parent)
        fd = open_private(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except OSError as exc:
        if is_symlink_error(exc):
            raise StorageError(
                f"the log file {log_file} is a symbolic link; refusing to follow it",
                hint="log to a regular file: remove the link or choose another --log-file",
            ) from exc
        raise StorageError(
            f"cannot write the log file {log_file}: {exc.strerror or exc}",
            hint="choose a writable --log-file",
        ) from exc
    return _PrivateFileHandler(os.fdopen(fd, "a", encoding="utf-8"))
