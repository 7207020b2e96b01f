"""``--metrics-file``: a run's figures in Prometheus' text format, for node_exporter's
textfile collector.

The file is replaced atomically (the collector may read it at any moment) and is built from
the summary's ``as_dict()`` only, so it follows whatever counts a command reports. The last
success time survives failed runs: it is read back from the file being replaced, which is
what an alert on "no successful export in 26 hours" needs.

An export that held rows back for card numbers exits 4 yet has published the night's files:
it counts as a success for the last success time (the alert is about files not arriving),
while its exit code stays 4 for an alert of its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optisync.errors import ExitCode

#: Exit codes after which the run counts as a success: everything delivered, or finished
#: with leftovers that are safe in the dead-letter folder for replay.
SUCCESS_CODES = frozenset({0, 7})

LAST_SUCCESS = "optisync_last_success_timestamp_seconds"

# Summary keys that are durations: the run's duration has a metric of its own, and a
# number of seconds is not a count of anything.
_DURATION_KEYS = frozenset({"seconds", "duration_seconds"})


@dataclass(frozen=True)
class RunFigures:
    command: str
    exit_code: int
    started: float  # Unix time
    finished: float  # Unix time
    duration: float  # seconds, from a monotonic clock
    summary: Mapping[str, Any] | None = None

    @property
    def success(self) -> bool:
        # a dry run delivers and publishes nothing: the "no export in 26 hours" alert must
        # still fire when only dry runs happened
        if (self.summary or {}).get("dry_run") is True:
            return False
        return self.exit_code in SUCCESS_CODES or self.published_with_held_rows

    @property
    def published_with_held_rows(self) -> bool:
        """export-batch's exit 4 after a real run: rows were held back, files published.

        Its summary is what tells this apart from an exit 4 that stopped the export before
        anything was written (a value that does not fit its column): that run leaves no
        summary behind.
        """
        summary = self.summary or {}
        return (
            self.command == "export-batch"
            and self.exit_code == ExitCode.INVALID_INPUT
            and summary.get("exit_code") == ExitCode.INVALID_INPUT
            and summary.get("dry_run") is False
        )


def previous_success(path: Path, command: str) -> float | None:
    """The last success time of ``command`` recorded in the file at ``path``, if any."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text(encoding="utf-8")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS and sample.labels.get("command") == command:
                    return float(sample.value)
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # no file yet, or not one of ours: there is nothing to keep
    return None


def render(figures: RunFigures, last_success: float | None) -> bytes:
    """The exposition text of one run."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector

    labels = ["command"]
    command = [figures.command]

    class RunCollector(Collector):
        def collect(self) -> Iterator[GaugeMetricFamily]:
            def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
                family = GaugeMetricFamily(name, doc, labels=labels)
                family.add_metric(command, value)
                return family

            yield gauge(
                "optisync_last_run_timestamp_seconds", "When the last run ended.", figures.finished
            )
            yield gauge(
                "optisync_last_run_duration_seconds",
                "How long the last run took.",
                figures.duration,
            )
            yield gauge(
                "optisync_last_run_exit_code", "Exit code of the last run.", figures.exit_code
            )
            yield gauge(
                "optisync_last_run_success",
                "1 when the last run succeeded (exit 0, 7 with leftovers dead-lettered, or"
                " export-batch's 4 with files published and rows held back).",
                1.0 if figures.success else 0.0,
            )
            if last_success is not None:
                yield gauge(LAST_SUCCESS, "When a run last succeeded.", last_success)
            summary = figures.summary or {}
            items = GaugeMetricFamily(
                "optisync_last_run_items",
                "The last run's summary counts (read, sent, dead_lettered, rows ...).",
                labels=["command", "item"],
            )
            for key, value in sorted(summary.items()):
                if _is_count(value) and key != "exit_code" and key not in _DURATION_KEYS:
                    items.add_metric([figures.command, key], float(value))
            yield items
            datasets = GaugeMetricFamily(
                "optisync_last_run_dataset_items",
                "The last export's counts per dataset (rows, deletions, held).",
                labels=["command", "dataset", "item"],
            )
            per_dataset = summary.get("datasets")
            if isinstance(per_dataset, Mapping):
                for dataset, counts in sorted(per_dataset.items()):
                    if not isinstance(counts, Mapping):
                        continue
                    for key, value in sorted(counts.items()):
                        if _is_count(value):
                            datasets.add_metric([figures.command, dataset, key], float(value))
            yield datasets

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunCollector())
    text: bytes = generate_latest(registry)
    return text


def write_metrics(path: Path, figures: RunFigures) -> None:
    """Replace the file at ``path`` with this run's figures. Raises OSError."""
    import secrets

    from optisync.durable import TMP_PREFIX, publish, write_new

    last = figures.finished if figures.success else previous_success(path, figures.command)
    # As atomic_write does, plus a chmod: node_exporter seldom runs as the service user, and
    # the service's umask (0077 in the example units) would otherwise hide the file from it.
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{secrets.token_hex(8)}"
    write_new(tmp, render(figures, last), 0o644)
    try:
        tmp.chmod(0o644)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    publish(tmp, path)


def _is_count(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
