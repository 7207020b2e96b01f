"""What one export-batch run did: per dataset, for the run, and the exit code it implies."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optisync import __version__
from optisync.batch.writer import PublishedFile
from optisync.errors import ExitCode, InvalidInputError

__all__ = ["BatchSummary", "DatasetResult", "raise_for_batch"]


@dataclass
class DatasetResult:
    name: str
    mode: str  # full | incremental
    reason: str | None = None  # why full
    rows: int = 0
    deletions: int = 0
    held: int = 0
    files: list[PublishedFile] = field(default_factory=list)
    quarantine: str | None = None
    watermark: str | None = None
    tables: list[str] = field(default_factory=list)  # Snowflake target: tables written
    null_keys: int = 0  # rows held back: a key column is NULL
    duplicate_keys: int = 0  # rows held back: their key is shared with another row

    def key_problems(self, check: Any, summary: BatchSummary) -> None:
        """Record a key check's findings (a ``delta.KeyCheck``) and warn about them."""
        self.null_keys, self.duplicate_keys = check.null_rows, check.duplicate_rows
        if check.rows:
            summary.warnings.append(f"dataset {self.name}: {check.describe()}; held back")

    def as_dict(self, root: Path | None) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "rows": self.rows,
            "deletions": self.deletions,
            "held": self.held,
            "files": [f.as_dict(root) for f in self.files] if root else [],
            "quarantine": self.quarantine,
            "watermark": self.watermark,
            "tables": self.tables,
            "null_keys": self.null_keys,
            "duplicate_keys": self.duplicate_keys,
        }


@dataclass
class BatchSummary:
    """What one export-batch run did, rendered as a table or as one JSON object."""

    run_id: str
    run_date: str
    dry_run: bool = False
    command: str = "export-batch"
    output: Path | None = None
    manifest: Path | None = None
    target: str | None = None  # Snowflake target: account and schema
    datasets: dict[str, DatasetResult] = field(default_factory=dict)
    emd_unmapped: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(d.rows for d in self.datasets.values())

    @property
    def held(self) -> int:
        return sum(d.held for d in self.datasets.values())

    def exit_code(self) -> ExitCode:
        return ExitCode.INVALID_INPUT if self.held else ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "run_id": self.run_id,
            "run_date": self.run_date,
            "dry_run": self.dry_run,
            "exit_code": int(self.exit_code()),
            "rows": self.rows,
            "deletions": sum(d.deletions for d in self.datasets.values()),
            "held": self.held,
            "seconds": round(self.seconds, 3),
            "output": str(self.output) if self.output else None,
            "manifest": str(self.manifest) if self.manifest else None,
            "target": self.target,
            "datasets": {n: d.as_dict(self.output) for n, d in self.datasets.items()},
            "emd_unmapped": dict(self.emd_unmapped),
            "warnings": self.warnings,
        }

    def run_entry(self, started: datetime) -> dict[str, Any]:
        """The run's facts in the manifest (docs/batch.md, "manifest.json")."""
        finished = datetime.now(UTC)
        modes = {d.mode for d in self.datasets.values()}
        return {
            "run_id": self.run_id,
            "started_at": started.strftime("%Y-%m-%d %H:%M:%S"),
            "finished_at": finished.strftime("%Y-%m-%d %H:%M:%S"),
            "mode": "full"
            if modes == {"full"}
            else "incremental"
            if modes == {"incremental"}
            else "mixed",
            "empty": self.rows == 0 and all(d.deletions == 0 for d in self.datasets.values()),
            "watermark": max((d.watermark or "") for d in self.datasets.values()),
            "datasets": {
                n: {k: v for k, v in d.as_dict(None).items() if k not in ("files", "tables")}
                for n, d in self.datasets.items()
            },
            "emd_unmapped": dict(self.emd_unmapped),
            "optisync": __version__,
        }


def raise_for_batch(summary: BatchSummary) -> None:
    """Exit 4 when rows were held back for card numbers (the CLI renders the summary first)."""
    if summary.exit_code() is ExitCode.INVALID_INPUT:
        where = (
            ", ".join(d.quarantine for d in summary.datasets.values() if d.quarantine)
            or "(dry run: nothing written)"
        )
        raise InvalidInputError(
            f"{summary.held} row(s) held back: a value looks like a card number, or the"
            f" row's key is NULL or duplicated; masked copies in {where}",
            hint="remove card numbers and fix the keys at the source; the rows are exported"
            " once clean",
        )
