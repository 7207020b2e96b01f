"""--metrics-file: Prometheus text that node_exporter's textfile collector can read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from optisync import durable
from optisync.errors import ExitCode
from optisync.metrics import RunFigures, render, write_metrics
from optisync.sandbox import Sandbox, SandboxConfig
from tests.support import EXAMPLES, invoke, use_sandbox


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = path.read_text(encoding="utf-8")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_an_export_writes_its_counts_per_dataset(
    example_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    metrics = tmp_path / "optisync-export.prom"
    config = str(example_dir / "optisync.yaml")
    invoke("--config", config, "--metrics-file", str(metrics), "export-batch")
    found = samples(metrics)
    assert value(found, "optisync_last_run_exit_code", command="export-batch") == ExitCode.OK
    assert (
        value(
            found,
            "optisync_last_run_dataset_items",
            command="export-batch",
            dataset="members",
            item="rows",
        )
        > 0
    )
    assert value(found, "optisync_last_run_duration_seconds", command="export-batch") > 0
    # the duration is a metric of its own, not one of the run's counts
    items = {dict(labels)["item"] for name, labels in found if name == "optisync_last_run_items"}
    assert "rows" in items
    assert "seconds" not in items
    assert oct(metrics.stat().st_mode & 0o777) == oct(0o644)


def test_an_export_that_held_rows_but_published_is_a_success_with_exit_4(
    example_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    members = example_dir / "data" / "members.csv"
    text = members.read_text(encoding="utf-8")
    assert "Bob,Roy," in text
    members.write_text(text.replace("Bob,Roy,", "Bob,Roy 4111 1111 1111 1111,"), "utf-8")
    metrics = tmp_path / "optisync-export.prom"
    write_metrics(metrics, RunFigures("export-batch", 0, 100.0, 160.0, 60.0, {}))
    config = str(example_dir / "optisync.yaml")
    result = invoke(
        "--config",
        config,
        "--metrics-file",
        str(metrics),
        "--json",
        "export-batch",
        expect=ExitCode.INVALID_INPUT,
    )
    assert json.loads(result.stdout)["manifest"]  # the night's files were published
    found = samples(metrics)
    assert value(found, "optisync_last_run_exit_code", command="export-batch") == 4
    assert value(found, "optisync_last_run_success", command="export-batch") == 1
    ended = value(found, "optisync_last_run_timestamp_seconds", command="export-batch")
    assert ended > 160.0
    assert value(found, "optisync_last_success_timestamp_seconds", command="export-batch") == ended
    assert value(found, "optisync_last_run_items", command="export-batch", item="held") == 1


@pytest.mark.parametrize(
    "figures",
    [
        # stopped before anything was written: no summary was kept
        RunFigures("export-batch", 4, 200.0, 210.0, 10.0, None),
        # a dry run held rows but published nothing
        RunFigures("export-batch", 4, 200.0, 210.0, 10.0, {"exit_code": 4, "dry_run": True}),
        # exit 4 of another command is bad input, nothing more
        RunFigures("push-event", 4, 200.0, 210.0, 10.0, {"exit_code": 4, "dry_run": False}),
    ],
)
def test_an_exit_4_that_published_nothing_keeps_the_previous_success(
    tmp_path: Path, figures: RunFigures
) -> None:
    metrics = tmp_path / "m.prom"
    write_metrics(metrics, RunFigures(figures.command, 0, 100.0, 160.0, 60.0, {}))
    write_metrics(metrics, figures)
    found = samples(metrics)
    command = figures.command
    assert value(found, "optisync_last_run_exit_code", command=command) == 4
    assert value(found, "optisync_last_run_success", command=command) == 0
    assert value(found, "optisync_last_success_timestamp_seconds", command=command) == 160.0


@pytest.mark.parametrize("command", ["export-batch", "push-event", "replay"])
def test_a_dry_run_is_not_a_success(tmp_path: Path, command: str) -> None:
    metrics = tmp_path / "m.prom"
    write_metrics(metrics, RunFigures(command, 0, 100.0, 160.0, 60.0, {"dry_run": False}))
    write_metrics(metrics, RunFigures(command, 0, 200.0, 210.0, 10.0, {"dry_run": True}))
    found = samples(metrics)
    assert value(found, "optisync_last_run_success", command=command) == 0
    assert value(found, "optisync_last_success_timestamp_seconds", command=command) == 160.0


def test_durations_are_not_exported_as_items() -> None:
    summary = {"seconds": 1.5, "duration_seconds": 2.5, "rows": 3}
    found = {
        s.labels["item"]: s.value
        for family in text_string_to_metric_families(
            render(RunFigures("export-batch", 0, 1.0, 2.0, 1.0, summary), 2.0).decode()
        )
        for s in family.samples
        if s.name == "optisync_last_run_items"
    }
    assert found == {"rows": 3.0}


def test_the_file_is_readable_by_the_collector_under_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_metrics(tmp_path / "m.prom", RunFigures("replay", 0, 1.0, 2.0, 1.0, {}))
    finally:
        os.umask(old)
    assert (tmp_path / "m.prom").stat().st_mode & 0o777 == 0o644


def test_push_counts_and_a_failed_run_keeps_the_last_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = tmp_path / "push.prom"
    events = str(EXAMPLES / "events.ndjson")
    config = SandboxConfig(api_key="metrics-key", events_token="metrics-token", tenant_id=1234)
    with Sandbox(config) as box:
        use_sandbox(monkeypatch, box, tmp_path, "metrics-key", "metrics-token")
        invoke("--metrics-file", str(metrics), "push-event", "--input", events)
        first = samples(metrics)
        assert value(first, "optisync_last_run_items", command="push-event", item="read") == 11
        assert value(first, "optisync_last_run_success", command="push-event") == 1
        success = value(first, "optisync_last_success_timestamp_seconds", command="push-event")
        assert success == value(first, "optisync_last_run_timestamp_seconds", command="push-event")

        monkeypatch.setenv("OPTIMOVE_API_KEY", "a-revoked-key")
        monkeypatch.setenv("OPTIMOVE_EVENTS_TOKEN", "a-revoked-token")
        invoke(
            "--metrics-file",
            str(metrics),
            "push-event",
            "--input",
            events,
            "--fresh",
            expect=ExitCode.REFUSED,
        )
    second = samples(metrics)
    assert value(second, "optisync_last_run_exit_code", command="push-event") == 5
    assert value(second, "optisync_last_run_success", command="push-event") == 0
    assert value(second, "optisync_last_success_timestamp_seconds", command="push-event") == success
    assert value(second, "optisync_last_run_timestamp_seconds", command="push-event") >= success


def test_a_run_that_never_succeeded_has_no_last_success(tmp_path: Path) -> None:
    metrics = tmp_path / "m.prom"
    invoke(
        "--metrics-file",
        str(metrics),
        "validate-config",
        str(tmp_path / "missing.yaml"),
        expect=ExitCode.CONFIG,
    )
    found = samples(metrics)
    assert value(found, "optisync_last_run_exit_code", command="validate-config") == 3
    assert not [key for key in found if key[0] == "optisync_last_success_timestamp_seconds"]


def test_the_file_is_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = tmp_path / "m.prom"
    figures = RunFigures("replay", 0, 100.0, 160.0, 60.0, {"sent": 3, "dry_run": False})
    write_metrics(metrics, figures)
    before = metrics.read_bytes()
    inode = metrics.stat().st_ino

    def crash(path: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable, "fsync_file", crash)  # fails just before the rename
    with pytest.raises(OSError):
        write_metrics(metrics, RunFigures("replay", 6, 200.0, 210.0, 10.0, {"sent": 0}))
    assert metrics.read_bytes() == before  # a reader never sees half a file
    assert os.listdir(tmp_path) == ["m.prom"]  # and no temporary file is left
    monkeypatch.undo()
    write_metrics(metrics, RunFigures("replay", 6, 200.0, 210.0, 10.0, {"sent": 0}))
    assert metrics.stat().st_ino != inode  # a new file renamed over the old one
    found = samples(metrics)
    assert value(found, "optisync_last_success_timestamp_seconds", command="replay") == 160.0
    assert value(found, "optisync_last_run_items", command="replay", item="sent") == 0


def test_booleans_and_lists_are_not_counts() -> None:
    text = render(
        RunFigures("push-event", 0, 1.0, 2.0, 1.0, {"dry_run": True, "warnings": ["x"], "read": 2}),
        2.0,
    ).decode()
    assert 'item="read"' in text
    assert "dry_run" not in text
    assert "warnings" not in text


def test_an_unwritable_metrics_file_is_a_warning_and_keeps_the_exit_code(
    tmp_path: Path,
) -> None:
    metrics = tmp_path / "missing-folder" / "run.prom"
    result = invoke(
        "--metrics-file", str(metrics), "validate-config", str(EXAMPLES / "optisync.yaml")
    )
    assert result.exit_code == ExitCode.OK
    assert f"optisync: warning: cannot write the metrics file {metrics}" in result.stderr
    assert "error" not in result.stderr.replace("error(s)", "")
    assert not metrics.exists()
