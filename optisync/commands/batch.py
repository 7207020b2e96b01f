"""export-batch: load the config, run the export, leave the exit code to ``raise_for_batch``.

The CLI renders the summary before calling ``raise_for_batch``, so a run that held rows
back still shows what it exported.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from optisync import batch
from optisync.batch import BatchSummary, raise_for_batch
from optisync.batch.export import Progress
from optisync.config import find_config, load_config

__all__ = ["export_batch", "raise_for_batch"]


def export_batch(
    config_path: Path | None,
    *,
    full: bool = False,
    datasets: list[str] | None = None,
    dry_run: bool = False,
    wait: bool = False,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> BatchSummary:
    """Export new and changed rows of the selected datasets (``None``: every enabled one)."""
    config = load_config(
        find_config(config_path),
        need_if_configured=("batch.snowflake.password", "batch.snowflake.private_key_passphrase"),
    )
    return batch.export_batch(
        config,
        full=full,
        datasets=datasets,
        dry_run=dry_run,
        wait=wait,
        progress=progress,
        now=now,
    )
