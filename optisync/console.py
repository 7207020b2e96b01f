"""Where output goes: data (``--json``) to stdout, everything for humans to stderr.

Rich is imported only when something is actually rendered, so ``optisync --help`` and
cron runs that print nothing stay fast.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from optisync.redact import redact

if TYPE_CHECKING:
    from rich.console import Console


def _encodable(text: str) -> str:
    """A lone surrogate (a config value like "\\ud800") cannot be written as UTF-8; show it
    escaped rather than fail the command on its own report."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class Output:
    """The global flags every command shares, and the consoles built from them."""

    config: Path | None = None
    json: bool = False
    verbose: int = 0
    quiet: bool = False
    no_color: bool = False
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    _err: Console | None = None

    @property
    def interactive(self) -> bool:
        """Progress bars and summary tables only on a terminal: cron stays quiet."""
        return not self.quiet and self.stderr.isatty()

    @property
    def err(self) -> Console:
        if self._err is None:
            from rich.console import Console

            no_color = self.no_color or "NO_COLOR" in os.environ
            self._err = Console(file=self.stderr, no_color=no_color, highlight=False)
        return self._err

    def emit_json(self, obj: Any) -> None:
        self.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")

    def write(self, text: str) -> None:
        """Data on stdout. A reader that went away (``| head``) does not change the exit
        code: the work is done, and the rest of the output is dropped quietly."""
        try:
            self.stdout.write(_encodable(redact(text)))
            self.stdout.flush()
        except BrokenPipeError:
            self.stdout = sys.stdout = Path(os.devnull).open("w")  # noqa: SIM115

    def line(self, text: str) -> None:
        """A plain line for humans on stderr, printed whatever the terminal."""
        self.stderr.write(_encodable(redact(text)) + "\n")
        self.stderr.flush()

    def info(self, text: str) -> None:
        """A line that only an operator at a terminal wants (cron stays quiet)."""
        if self.interactive:
            self.line(text)

    def error(self, message: str, hint: str | None = None) -> None:
        self.line(f"optisync: error: {message}")
        if hint:
            self.line(f"hint: {hint}")
