"""What a real-time run reports: counts rendered as a table on a TTY and as one JSON object
with ``--json`` (keys documented in docs/realtime.md), and the exit code they mean.

``RunSummary`` holds what push-event and replay share: what was sent and kept, why the run
stopped. Each command's summary adds its own counts and names them, in output order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from optisync.errors import ExitCode

MAX_PLANS_SHOWN = 1000  # a dry run over a huge file must not hold every plan in memory


@dataclass
class RunSummary:
    """The counts both commands share; subclasses name theirs in ``COUNTS``."""

    command: ClassVar[str]
    # the integer counts shown, in output order
    COUNTS: ClassVar[tuple[str, ...]]

    run_id: str
    dry_run: bool = False
    sent: int = 0
    dead_lettered: int = 0
    requests: int = 0
    duplicates: int = 0
    by_target: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    stopped: str | None = None  # auth | unavailable | interrupted
    stop_reason: str | None = None
    plans: list[dict[str, Any]] = field(default_factory=list)
    # where this run's letters are, so an error can say where to look (not in the JSON)
    dead_letter_dir: str | None = None

    def stop(self, why: str, reason: str) -> None:
        """The first reason to stop stays, but an interrupt always shows (exit 130)."""
        if not self.stopped or why == "interrupted":
            self.stopped, self.stop_reason = why, reason

    def exit_code(self) -> ExitCode:
        if self.stopped == "interrupted":
            return ExitCode.INTERRUPTED
        if self.stopped == "auth":
            return ExitCode.REFUSED
        if self.stopped == "unavailable":
            return ExitCode.UNAVAILABLE
        if self.dead_lettered:
            return ExitCode.PARTIAL
        return ExitCode.OK

    def counts(self) -> str:
        """The run's counts on one log line."""
        return " ".join(
            f"{k}={v}" for k, v in self.as_dict().items() if isinstance(v, int) and k != "dry_run"
        )

    def details(self) -> dict[str, Any]:
        """Breakdowns a command adds after ``delivered_by_target``; none by default."""
        return {}

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "command": self.command,
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "exit_code": int(self.exit_code()),
        }
        out.update({name: getattr(self, name) for name in self.COUNTS})
        out["delivered_by_target"] = dict(self.by_target)
        out.update(self.details())
        out["warnings"] = [f"{text} (x{n})" if n > 1 else text for text, n in self.warnings.items()]
        out["stopped"] = self.stopped
        out["stop_reason"] = self.stop_reason
        if self.dry_run:
            out["plans"] = self.plans
        return out


@dataclass
class PushSummary(RunSummary):
    command: ClassVar[str] = "push-event"
    COUNTS: ClassVar[tuple[str, ...]] = (
        "read",
        "valid",
        "invalid",
        "sent",
        "dead_lettered",
        "unrouted",
        "nothing_to_send",
        "suppressed",
        "skipped",
        "held",
        "requests",
        "duplicates",
    )

    read: int = 0
    valid: int = 0
    invalid: int = 0
    unrouted: int = 0
    nothing_to_send: int = 0
    skipped: int = 0
    held: int = 0  # messages with a part left for the next run
    suppressed: int = 0
    emd_unmapped: Counter[str] = field(default_factory=Counter)
    suppressed_reasons: Counter[str] = field(default_factory=Counter)

    def exit_code(self) -> ExitCode:
        code = super().exit_code()
        # a stop outranks bad input; bad input outranks failed deliveries
        if self.invalid and code in (ExitCode.OK, ExitCode.PARTIAL):
            return ExitCode.INVALID_INPUT
        return code

    def details(self) -> dict[str, Any]:
        return {
            "emd_unmapped": dict(self.emd_unmapped),
            "suppressed_reasons": dict(self.suppressed_reasons),
        }


@dataclass
class ReplaySummary(RunSummary):
    command: ClassVar[str] = "replay"
    COUNTS: ClassVar[tuple[str, ...]] = (
        "letters",
        "sent",
        "dead_lettered",
        "not_replayable",
        "requests",
        "duplicates",
    )

    letters: int = 0
    not_replayable: int = 0

    def details(self) -> dict[str, Any]:
        # replay never maps EMD keys nor suppresses, but its JSON keeps push-event's keys so
        # one consumer reads both
        return {"emd_unmapped": {}, "suppressed_reasons": {}}
