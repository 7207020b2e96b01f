"""One export-batch run over the configured datasets.

The run chooses the datasets, checks the daily data readiness time, takes the run lock,
hands the work to the pipeline that fits the source (``local`` for a DuckDB database or a
folder of extracts, ``snowflake`` for a Snowflake source), and records how long it took
for the next run's deadline check. The output contract is docs/batch.md.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from optisync.batch.local import Progress, Target, export_local
from optisync.batch.plan import DATASETS, check_attribute_limit
from optisync.batch.result import BatchSummary
from optisync.batch.state import StateStore
from optisync.batch.writer import write_file
from optisync.config.models import Config
from optisync.errors import ConfigError, DeadlineMissed, UsageError
from optisync.lock import RunLock

__all__ = ["Progress", "export_batch"]

LAST_RUN = "last-run.json"


def export_batch(
    config: Config,
    *,
    full: bool = False,
    datasets: list[str] | None = None,
    dry_run: bool = False,
    wait: bool = False,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> BatchSummary:
    """Export new and changed rows of the selected datasets; see the module docstring."""
    clock = time.monotonic()
    check_attribute_limit(config)
    names = selected(config, datasets)
    started = (now or datetime.now(UTC)).astimezone(UTC)
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    summary = BatchSummary(run_id=run_id, run_date=started.date().isoformat(), dry_run=dry_run)
    state = StateStore(config.path(config.batch.state_dir))
    deadline = _deadline(config, started)
    late = deadline is not None and _late(config, summary, state, started, deadline)

    with ExitStack() as stack:
        if dry_run:
            temp_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        else:
            state.ensure()
            stack.enter_context(
                RunLock(state.dir / "export-batch.lock", wait=wait, command="export-batch")
            )
            temp_dir = state.dir / ".tmp-duckdb"
        if config.batch.source.kind == "snowflake":  # the export runs in the warehouse
            from optisync.batch.snowflake import export_snowflake_source

            export_snowflake_source(
                config, names, summary, started=started, full=full, dry_run=dry_run,
                progress=progress, temp_dir=temp_dir,
            )  # fmt: skip
        else:
            export_local(
                config, names, summary, state, stack,
                temp_dir=temp_dir, out_dir=config.path(config.batch.output.dir),
                started=started, full=full, dry_run=dry_run, progress=progress,
                open_target=_target_opener(config, summary, stack),
            )  # fmt: skip
        if summary.emd_unmapped:
            keys = ", ".join(f"{k} ({n})" for k, n in sorted(summary.emd_unmapped.items()))
            summary.warnings.append(f"EMD keys not mapped to attributes (not exported): {keys}")
    summary.seconds = time.monotonic() - clock
    if not dry_run:
        write_file(
            state.dir / LAST_RUN,
            json.dumps({"run_id": run_id, "seconds": summary.seconds}).encode("utf-8"),
        )
    if deadline is not None and not late and datetime.now(UTC) > deadline:
        summary.warnings.append(
            f"the run finished after the daily data readiness time {config.batch.deadline_utc} UTC"
        )
    return summary


def selected(config: Config, names: list[str] | None) -> list[str]:
    """The datasets this run exports, in export order: those named, or every enabled one."""
    configured = config.batch.datasets
    if names:
        unknown = [n for n in names if n not in DATASETS]
        if unknown:
            raise UsageError(
                f"--dataset {unknown[0]}: not a dataset", hint=f"one of: {', '.join(DATASETS)}"
            )
        missing = [n for n in names if n not in configured]
        if missing:
            raise UsageError(
                f"--dataset {missing[0]}: not configured under batch.datasets",
                hint=f"configured: {', '.join(configured) or 'none'}",
            )
        return [n for n in DATASETS if n in names]
    enabled: set[str] = {n for n, d in configured.items() if d.enabled}
    chosen = [n for n in DATASETS if n in enabled]
    if not chosen:
        raise ConfigError(
            "batch.datasets: no dataset is enabled",
            hint="configure at least one of: " + ", ".join(DATASETS),
        )
    return chosen


def _deadline(config: Config, started: datetime) -> datetime | None:
    text = config.batch.deadline_utc
    if not text:
        return None
    hour, minute = (int(p) for p in text.split(":"))
    return started.replace(hour=hour, minute=minute, second=0, microsecond=0)


def _late(
    config: Config, summary: BatchSummary, state: StateStore, started: datetime, deadline: datetime
) -> bool:
    """Whether a run as long as the last one would end past ``deadline`` (warn, or fail)."""
    expected = started.timestamp() + _last_duration(state.dir)
    if expected <= deadline.timestamp():
        return False
    text = (
        f"the run started at {started:%H:%M} UTC and would finish after the daily"
        f" data readiness time {config.batch.deadline_utc} UTC"
    )
    if config.batch.deadline_action == "fail" and not summary.dry_run:
        raise DeadlineMissed(
            text + "; nothing was exported",
            hint="start the export earlier, or set batch.deadline_action: warn",
        )
    summary.warnings.append(text)
    return True


def _last_duration(state_dir: Path) -> float:
    try:
        data = json.loads((state_dir / LAST_RUN).read_text(encoding="utf-8"))
        return float(data.get("seconds", 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def _target_opener(
    config: Config, summary: BatchSummary, stack: ExitStack
) -> Callable[[], Target] | None:
    """How the local pipeline reaches a Snowflake output; None when it writes files."""
    if config.batch.output.kind != "snowflake" or summary.dry_run:
        return None
    from optisync.batch.snowflake import open_target

    return functools.partial(open_target, config, summary.run_id, stack)
