"""Loading a config for a command, and checking one for ``validate-config``.

Both read the file the same way (``source``); a command needs only structure and routing
to be right, ``validate-config`` runs every check and reports every problem.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optisync.config.checks import check, check_routing
from optisync.config.models import Config
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
    if src.lines or not src.errors:  # a file that did not parse at all has nothing to check
        checked = config if config is not None else lenient(src)
        check(src, checked)
        if more is not None:
            more(src, checked)
    src.problems.sort(key=lambda p: (p.file != str(path), p.line or 0))
    return Report(path, src.problems, strict)


def load_config(path: Path | None = None, environ: AbcMapping[str, str] | None = None) -> Config:
    """Load and validate a config for a command; raise ``ConfigError`` listing every error.

    Structure and routing are required here (a wrong routing target would fail every
    message, not just one); ``validate-config`` runs the full checks.
    """
    src = read_source(find_config(path), environ)
    config = validate_source(src) if not src.errors else None
    if config is not None:
        check_routing(src, config)
    if src.errors or config is None:
        problems = [p.render() for p in src.errors]
        raise ConfigError(
            f"config {src.path} is invalid ({len(problems)} problem(s))",
            hint=f"run: optisync validate-config {src.path}",
            problems=problems,
        )
    return config
