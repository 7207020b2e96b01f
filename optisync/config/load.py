"""Loading a config for a command, and checking one for ``validate-config``.

Both read the file the same way (``source``); a command needs only structure and routing
to be right, ``validate-config`` runs every check and reports every problem.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optisync import redact
from optisync.config.checks import check, check_currency, check_routing
from optisync.config.models import SECRET_ALIASES, SECRET_KEYS, Config
from optisync.config.source import (
    Problem,
    Source,
    find_config,
    lenient,
    read_source,
    validate_source,
)
from optisync.errors import ConfigError


@dataclass
class Report:
    path: Path
    problems: list[Problem]
    strict: bool = False

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error" or self.strict]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "valid": self.ok,
            "strict": self.strict,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "problems": [p.as_dict() for p in self.problems],
        }


def validate_config(
    path: Path,
    *,
    strict: bool = False,
    more: Callable[[Source, Config], None] | None = None,
) -> Report:
    """Run every check on the config file at ``path`` and return all problems found.

    ``more`` runs after the offline checks on the same file and config (``--online``).
    """
    src = read_source(path)
    config = validate_source(src) if src.data else None
    if config is not None:
        _check_secret_files(src, config)
    if src.lines or not src.errors:  # a file that did not parse at all has nothing to check
        checked = config if config is not None else lenient(src)
        check(src, checked)
        if more is not None:
            more(src, checked)
    src.problems.sort(key=lambda p: (p.file != str(path), p.line or 0))
    return Report(path, src.problems, strict)


def load_config(
    path: Path | None = None,
    environ: AbcMapping[str, str] | None = None,
    *,
    need: Collection[str] = (),
    need_if_configured: Collection[str] = (),
) -> Config:
    """Load and validate a config for a command; raise ``ConfigError`` listing every error.

    Structure and routing are required here (a wrong routing target would fail every
    message, not just one); ``validate-config`` runs the full checks.

    ``need``: secrets (``api_key``, ``events_token`` or dotted keys such as
    ``batch.snowflake.password``) the command cannot run without. ``need_if_configured``:
    secrets that are optional, but once the file names one (``${VAR}``) it must resolve,
    so an unset variable is an error rather than a silent fallback.
    """
    src = read_source(find_config(path), environ)
    config = validate_source(src) if not src.errors else None
    if config is not None:
        check_routing(src, config)
        check_currency(src, config)
        _check_secret_files(src, config)
        for key in need:
            _require(src, config, key)
        for key in need_if_configured:
            if config.secret_configured(key):
                _require(src, config, key)
    if src.errors or config is None:
        problems = [p.render() for p in src.errors]
        raise ConfigError(
            f"config {src.path} is invalid ({len(problems)} problem(s))",
            hint=f"run: optisync validate-config {src.path}",
            problems=problems,
        )
    register_secrets(config)
    return config


def register_secrets(config: Config) -> None:
    """Hand every secret the config resolves to the one redaction point."""
    for key in SECRET_KEYS:
        try:
            redact.register(config.require_secret(key))
        except ConfigError:
            continue  # not configured, or not usable here: nothing to hide


def _check_secret_files(src: Source, config: Config) -> None:
    """A key file that exists must hold a usable secret; one that is missing is reported
    only to a command that needs it (another host may be the one that mounts it)."""
    settings = config.optimove
    for name in ("api_key", "events_token"):
        value = getattr(settings, name)
        path: Path | None = getattr(settings, f"{name}_file")
        if (value is not None and value.get_secret_value()) or path is None:
            continue
        if not path.exists():
            continue
        try:
            settings.secret(name)
        except ConfigError as exc:
            src.add(("optimove", f"{name}_file"), exc.message.partition(": ")[2], hint=exc.hint)


def _require(src: Source, config: Config, key: str) -> None:
    try:
        config.require_secret(key)
    except ConfigError as exc:
        # messages read "<dotted key>: <what>"; the key may be the *_file one
        where, _, message = exc.message.partition(": ")
        if not message or " " in where:
            where, message = SECRET_ALIASES.get(key, key), exc.message
        src.add(tuple(where.split(".")), message, hint=exc.hint)
