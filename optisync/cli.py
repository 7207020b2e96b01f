"""The Typer layer: parse flags, call one core function, render its result. No logic here.

Every ``OptisyncError`` becomes its documented exit code in ``OptisyncGroup.invoke``, the
one place where exceptions meet exit codes, so CliRunner tests see what users get.
"""

import gc
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from optisync import __version__
from optisync.console import Output
from optisync.errors import ConfigError, ExitCode, OptisyncError


class OptisyncGroup(TyperGroup):
    def invoke(self, ctx: click.Context) -> Any:
        if ctx.parent is not None:  # a command group under the root: the root measures
            return self._invoke(ctx)
        started, clock = time.time(), time.monotonic()
        code = int(ExitCode.INTERNAL)
        try:
            result = self._invoke(ctx)
            code = int(ExitCode.OK)
            return result
        except click.exceptions.Exit as exc:
            code = exc.exit_code
            raise
        except click.ClickException as exc:
            code = exc.exit_code
            raise
        finally:
            if ctx.meta.get(METRICS_FILE) is not None:
                _write_metrics(ctx, code, started, time.monotonic() - clock)

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except OptisyncError as exc:
            out = _output(ctx)
            if isinstance(exc, ConfigError):
                for problem in exc.problems:
                    out.line(problem)
            out.error(exc.message, exc.hint)
            if out.verbose:
                _print_traceback(out)
            ctx.exit(int(exc.exit_code))
        except KeyboardInterrupt:
            _output(ctx).error("interrupted; nothing was lost")
            ctx.exit(int(ExitCode.INTERRUPTED))
        except Exception as exc:  # a bug: say so plainly, traceback only with -v
            out = _output(ctx)
            out.error(
                f"internal error: {type(exc).__name__}: {exc}",
                None if out.verbose else "rerun with -v for the traceback, and report it",
            )
            if out.verbose:
                _print_traceback(out)
            ctx.exit(int(ExitCode.INTERNAL))


METRICS_FILE = "optisync.metrics_file"
SUMMARY = "optisync.summary"


def _write_metrics(ctx: click.Context, code: int, started: float, duration: float) -> None:
    from optisync.metrics import RunFigures, write_metrics

    summary = ctx.meta.get(SUMMARY)
    command = (summary or {}).get("command") or ctx.invoked_subcommand or "optisync"
    figures = RunFigures(str(command), code, started, time.time(), duration, summary)
    path: Path = ctx.meta[METRICS_FILE]
    try:
        write_metrics(path, figures)
    except OSError as exc:
        # the run's own outcome stands; monitoring notices the file going stale
        _output(ctx).line(
            f"optisync: warning: cannot write the metrics file {path}: {exc.strerror or exc}"
        )


def _print_traceback(out: Output) -> None:
    import traceback  # only for -v: it costs every start otherwise

    traceback.print_exc(file=out.stderr)


def _output(ctx: click.Context) -> Output:
    root = ctx.find_root()
    if not isinstance(root.obj, Output):
        root.obj = Output()
    out: Output = root.obj
    return out


app = typer.Typer(
    cls=OptisyncGroup,
    name="optisync",
    help="Sync ES Loyalty member events and daily batch data into Optimove.\n\n"
    "Example: optisync --config optisync.yaml validate-config",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
schema_app = typer.Typer(
    cls=OptisyncGroup,
    help="Print JSON Schemas for producers.\n\n"
    "Example: optisync schema events > events.schema.json",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(schema_app, name="schema")
optin_app = typer.Typer(
    cls=OptisyncGroup,
    help="The local opt-in register of the triggered templates optisync sends itself.\n\n"
    "Example: optisync optin sync",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(optin_app, name="optin")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"optisync {__version__}")
        raise typer.Exit


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Config file (default: $OPTISYNC_CONFIG, else ./optisync.yaml).",
            dir_okay=False,
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON summary object on stdout.")
    ] = False,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More detail; -v shows tracebacks.")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colour in output.")] = False,
    log_file: Annotated[
        Path | None, typer.Option("--log-file", help="Also log to this file (from INFO up).")
    ] = None,
    log_format: Annotated[
        str, typer.Option("--log-format", help="Log lines as 'text' or 'json'.")
    ] = "text",
    log_pii: Annotated[
        bool, typer.Option("--log-pii", help="Show member ids and emails in logs unmasked.")
    ] = False,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            help="Write the run's figures here in Prometheus text format (node_exporter's"
            " textfile collector), replaced atomically.",
            dir_okay=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Sync ES Loyalty member events and daily batch data into Optimove."""
    if metrics_file is not None:
        ctx.meta[METRICS_FILE] = metrics_file
    ctx.obj = Output(config=config, json=json_out, verbose=verbose, quiet=quiet, no_color=no_color)
    if log_format not in ("text", "json"):
        raise typer.BadParameter("use 'text' or 'json'", param_hint="--log-format")
    from optisync import logs

    logs.setup(verbose, log_file=log_file, log_format=log_format, log_pii=log_pii)  # type: ignore[arg-type]


@app.command("validate-config")
def validate_config_cmd(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(help="Config file (default: --config, $OPTISYNC_CONFIG, ./optisync.yaml)."),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors.")] = False,
    online: Annotated[
        bool,
        typer.Option(
            "--online",
            help="Also check against the Optimove account: attributes, template ids and tags"
            " (needs the API key).",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=1.0, help="Seconds --online may take, retries included."),
    ] = 30.0,
) -> None:
    """Check a config file and report every problem with its file:line and key.

    Exits 0 when valid (warnings allowed unless --strict), 3 when not; with --online, 5 when
    Optimove refuses the key and 6 when it cannot be reached (the offline report still
    printed).

    Example: optisync validate-config examples/optisync.yaml --online
    """
    from optisync.commands.validate import validate
    from optisync.config.source import find_config

    out = _output(ctx)
    config_path = find_config(path or out.config)
    result = validate(config_path, strict=strict, online=online, timeout=timeout)
    report = result.report
    if out.json:
        out.emit_json(result.as_dict())
    else:
        for problem in report.problems:
            if problem.severity == "error" or not out.quiet:
                out.line(problem.render())
    if result.failure is not None:
        if not report.ok:
            # a config error outranks the failed online check; both are shown
            out.error(result.failure.message, result.failure.hint)
        else:
            raise result.failure
    if not report.ok:
        raise ConfigError(
            f"{report.path}: {len(report.errors)} error(s), {len(report.warnings)} warning(s)"
        )
    if not out.json:
        out.info(f"{report.path}: valid ({len(report.warnings)} warning(s))")


Only = Annotated[
    list[str] | None,
    typer.Option(
        "--only",
        help="Send only to these targets (repeatable): events, attributes, opt_in, promotions,"
        " email.",
    ),
]
Wait = Annotated[
    bool, typer.Option("--wait", help="Wait for another run's lock instead of exiting 75.")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Validate and show; send nothing.")]


@app.command("push-event")
def push_event_cmd(
    ctx: typer.Context,
    type_: Annotated[
        str | None, typer.Option("--type", help="Event type, e.g. REDEMPTION.")
    ] = None,
    member: Annotated[str | None, typer.Option("--member", help="Loyalty member id.")] = None,
    data: Annotated[str | None, typer.Option("--data", help="The event's data as JSON.")] = None,
    email: Annotated[str | None, typer.Option("--email", help="Member email.")] = None,
    locale: Annotated[str | None, typer.Option("--locale", help="Member locale.")] = None,
    event_id: Annotated[str | None, typer.Option("--id", help="Message id.")] = None,
    occurred_at: Annotated[
        str | None, typer.Option("--occurred-at", help="RFC 3339 time (default: now).")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="One event as a JSON file.", dir_okay=False)
    ] = None,
    input_: Annotated[
        str | None,
        typer.Option("--input", help="Newline-delimited JSON events; '-' reads stdin."),
    ] = None,
    only: Only = None,
    dry_run: DryRun = False,
    wait: Wait = False,
    fresh: Annotated[
        bool,
        typer.Option("--fresh", help="Forget this file's journal and send every line again."),
    ] = False,
) -> None:
    """Send loyalty events to Optimove: events, attributes, opt-in and email.

    Invalid lines become 'invalid' dead letters and never stop the valid ones.

    Example: optisync push-event --input examples/events.ndjson --dry-run
    """
    from optisync.commands.realtime import EventSource, push_event

    out = _output(ctx)
    source = EventSource(
        type=type_,
        member=member,
        data=data,
        email=email,
        locale=locale,
        event_id=event_id,
        occurred_at=occurred_at,
        file=file,
        input=input_,
    )
    with _progress(out, "pushing") as progress:
        summary = push_event(
            out.config,
            source,
            only=only,
            dry_run=dry_run,
            wait=wait,
            progress=progress,
            fresh=fresh,
        )
    _render(out, summary)


@app.command("replay")
def replay_cmd(
    ctx: typer.Context,
    kind: Annotated[
        str | None, typer.Option("--kind", help="Only letters of this target kind.")
    ] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only this event type.")] = None,
    since: Annotated[
        datetime | None, typer.Option("--since", help="Only letters first failed since then.")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N letters.")] = None,
    dry_run: DryRun = False,
    wait: Wait = False,
) -> None:
    """Re-send dead letters with their original idempotency keys.

    A delivered letter leaves the folder; a failing one stays with its attempts raised.

    Example: optisync replay --kind email --since 2026-11-25
    """
    from datetime import UTC

    from optisync.commands.realtime import ReplayFilter, replay_letters

    out = _output(ctx)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    summary = replay_letters(
        out.config,
        ReplayFilter(kind=kind, type=type_, since=since, limit=limit),
        dry_run=dry_run,
        wait=wait,
    )
    _render(out, summary)


@app.command("export-batch")
def export_batch_cmd(
    ctx: typer.Context,
    full: Annotated[
        bool, typer.Option("--full", help="Export every row and reset the incremental state.")
    ] = False,
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset",
            help="Only this dataset (repeatable): members, partner_links, offers, emd, orders.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be written; write nothing.")
    ] = False,
    wait: Wait = False,
) -> None:
    """Export new and changed loyalty data as files for Optimove's daily ingestion.

    Writes gzip CSV per dataset under batch.output.dir/<run date>/, then manifest.json and
    _SUCCESS; rows holding a card number are held back and the run exits 4.

    Example: optisync --config examples/optisync.yaml export-batch --dataset members
    """
    from optisync.commands.batch import export_batch, raise_for_batch

    out = _output(ctx)
    with _dataset_progress(out) as progress:
        summary = export_batch(
            out.config, full=full, datasets=dataset, dry_run=dry_run, wait=wait, progress=progress
        )
    _keep_for_metrics(ctx, summary.as_dict())
    if out.json:
        out.emit_json(summary.as_dict())
    else:
        _batch_table(out, summary)
    raise_for_batch(summary)


def _batch_table(out: Output, summary: Any) -> None:
    data = summary.as_dict()
    if out.interactive:
        from rich.table import Table

        title = f"optisync export-batch {summary.run_id}" + (
            " (dry run)" if summary.dry_run else ""
        )
        table = Table(title=title)
        for name in ("dataset", "mode", "rows", "deletions", "held", "files"):
            table.add_column(name, justify="right" if name not in ("dataset", "mode") else "left")
        for name, d in data["datasets"].items():
            table.add_row(
                name,
                d["mode"],
                str(d["rows"]),
                str(d["deletions"]),
                str(d["held"]),
                str(len(d["files"])),
            )
        out.err.print(table)
        if summary.manifest:
            out.line(f"manifest: {summary.manifest}")
    elif summary.exit_code() != ExitCode.OK or summary.dry_run:
        out.line(
            " ".join(
                f"{name}={d['rows']}" + (f"(held {d['held']})" if d["held"] else "")
                for name, d in data["datasets"].items()
            )
        )
    for warning in data["warnings"]:
        out.line(f"warning: {warning}")


@contextmanager
def _dataset_progress(out: Output) -> Iterator[Callable[[str, int, int], None] | None]:
    if not out.interactive:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("[bold]exporting {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=out.err,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None)

        def update(name: str, done: int, total: int) -> None:
            bar.update(task, description=name, completed=done, total=total)

        yield update


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    listen: Annotated[
        str | None,
        typer.Option("--listen", help="HOST:PORT to listen on (default: serve.listen)."),
    ] = None,
) -> None:
    """Run the long-running connector: take events over HTTP and deliver them.

    Callers POST to /v1/events with a bearer token; accepted messages are spooled durably,
    then sent as push-event sends them. SIGTERM finishes what was accepted and exits 0.

    Callers' tokens come from OPTISYNC_SERVE__TOKENS or serve.tokens_file.

    Example: optisync serve --listen 127.0.0.1:8787
    """
    from optisync.commands.serve import serve

    out = _output(ctx)
    serve(out.config, listen=listen)


@app.command("sandbox")
def sandbox_cmd(
    host: Annotated[str, typer.Option(help="Loopback address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8765,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote", help="Allow a --host that is not loopback (other machines connect)."
        ),
    ] = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="OPTIMOVE_API_KEY",
            help="Key clients must send (default: a random one, printed at start).",
        ),
    ] = None,
    events_token: Annotated[
        str | None,
        typer.Option("--events-token", envvar="OPTIMOVE_EVENTS_TOKEN", help="HMAC token."),
    ] = None,
    tenant_id: Annotated[int, typer.Option("--tenant-id", help="Tenant id events carry.")] = 1234,
    no_limits: Annotated[
        bool, typer.Option("--no-limits", help="Do not enforce rate limits and caps.")
    ] = False,
    record: Annotated[
        Path | None, typer.Option("--record", help="Append accepted requests to this JSONL.")
    ] = None,
    error_rate: Annotated[float, typer.Option(help="Share of requests answered 503.")] = 0.0,
    burst_429: Annotated[float, typer.Option(help="Chance a request starts a 429 burst.")] = 0.0,
    latency_ms: Annotated[float, typer.Option(help="Added latency per response.")] = 0.0,
    drop_rate: Annotated[float, typer.Option(help="Share of connections dropped.")] = 0.0,
    lost_response_rate: Annotated[
        float, typer.Option(help="Share processed but never answered.")
    ] = 0.0,
    slow_rate: Annotated[
        float, typer.Option(help="Share processed, then answered only after --slow-ms.")
    ] = 0.0,
    slow_ms: Annotated[float, typer.Option(help="Delay of a slow answer.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for repeatable faults.")] = None,
    keep: Annotated[
        int | None, typer.Option(help="Keep only the last N accepted requests for inspection.")
    ] = None,
    config_templates: Annotated[
        Path | None,
        typer.Option("--templates-from", help="Learn transactional templates from this config."),
    ] = None,
    attributes: Annotated[
        str | None,
        typer.Option(
            "--attributes",
            help="The account's custom attributes, comma-separated (default: those the"
            " --templates-from config declares).",
        ),
    ] = None,
    customers: Annotated[
        Path | None,
        typer.Option(
            "--customers",
            help="Customer ids that already exist, one per line (default: none; customers"
            " are created by UpsertCustomer and InsertOrUpdateCustomers).",
        ),
    ] = None,
) -> None:
    """Serve a local stand-in for Optimove's APIs on loopback, for trials and tests.

    Example: optisync sandbox --port 8765 --error-rate 0.2 --seed 7
    """
    from optisync.sandbox import Faults, SandboxConfig, serve

    if api_key is None:
        import secrets

        # a well-known default key would guard recorded member data with nothing
        api_key = secrets.token_urlsafe(18)
        typer.echo(
            f"optisync sandbox API key (random, pass --api-key to choose): {api_key}", err=True
        )
    templates = None
    catalog = None
    names = [n.strip() for n in attributes.split(",") if n.strip()] if attributes else None
    if config_templates is not None:
        from optisync.sandbox.catalog import catalog_from_config

        catalog = catalog_from_config(config_templates, names)
        templates = catalog.tags_by_id()
    elif names is not None:
        from optisync.sandbox.catalog import Catalog

        catalog = Catalog(tuple(names))
    faults = Faults(
        error_rate=error_rate,
        burst_429=burst_429,
        latency_ms=latency_ms,
        drop_rate=drop_rate,
        lost_response_rate=lost_response_rate,
        slow_rate=slow_rate,
        slow_ms=slow_ms,
        seed=seed,
    )
    config = SandboxConfig(
        api_key=api_key,
        tenant_id=tenant_id,
        events_token=events_token,
        enforce_limits=not no_limits,
        templates=templates,
        faults=faults,
        record_path=record,
        keep_received=keep,
        catalog=catalog,
        allow_remote=allow_remote,
        customers=frozenset(
            line.strip()
            for line in (customers.read_text(encoding="utf-8").splitlines() if customers else [])
            if line.strip()
        ),
    )
    serve(config, host, port)


def _keep_for_metrics(ctx: click.Context, data: dict[str, Any]) -> None:
    """Hand the run's figures to --metrics-file (written when the command ends)."""
    ctx.meta[SUMMARY] = data


def _render(out: Output, summary: Any) -> None:
    from optisync.commands.realtime import raise_for

    _keep_for_metrics(click.get_current_context(), summary.as_dict())
    if out.json:
        out.emit_json(summary.as_dict())
    else:
        if summary.dry_run:
            _print_plans(out, summary.plans)
        if out.interactive or summary.exit_code() != ExitCode.OK:
            _table(out, summary)
    raise_for(summary)


def _print_plans(out: Output, plans: list[dict[str, Any]]) -> None:
    import json

    for plan in plans:
        if "invalid" in plan:
            where = f"line {plan['line']}: " if plan.get("line") else ""
            out.write(f"{where}invalid: {plan['invalid']}\n")
            continue
        if "letters" in plan:
            out.write(f"{plan['endpoint']}: {len(plan['letters'])} letter(s)\n")
            continue
        where = f"line {plan['line']} " if plan.get("line") else ""
        targets = ", ".join(plan["targets"]) or "nothing"
        out.write(
            f"{where}{plan['id']} {plan['type']} -> {targets} (rules: {', '.join(plan['rules'])})\n"
        )
        for request in plan["requests"]:
            body = json.dumps(request["body"], ensure_ascii=False)
            out.write(f"    {request['endpoint']} {body}\n")


def _table(out: Output, summary: Any) -> None:
    data = summary.as_dict()
    rows = [
        (k, v)
        for k, v in data.items()
        if isinstance(v, int) and not isinstance(v, bool) and k != "exit_code"
    ]
    if out.interactive:
        from rich.table import Table

        table = Table(title=f"optisync {summary.command} {summary.run_id}", show_header=False)
        for key, value in rows:
            table.add_row(key.replace("_", " "), str(value))
        out.err.print(table)
    else:
        out.line(" ".join(f"{k}={v}" for k, v in rows))
    for warning in data["warnings"][:20]:
        out.line(f"warning: {warning}")
    if data.get("emd_unmapped"):
        keys = ", ".join(f"{k} ({n})" for k, n in sorted(data["emd_unmapped"].items()))
        out.line(f"EMD keys not mapped to attributes (not sent): {keys}")


@contextmanager
def _progress(out: Output, label: str) -> Iterator[Callable[[int, int | None], None] | None]:
    if not out.interactive:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    with Progress(
        f"[bold]{label}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=out.err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@optin_app.command("sync")
def optin_sync_cmd(
    ctx: typer.Context,
    brand_id: Annotated[
        int | None,
        typer.Option("--brand-id", help="OptiMail brand (default: optimove.opt_in.brand_id)."),
    ] = None,
    since: Annotated[
        datetime | None,
        typer.Option(
            "--since",
            formats=["%Y-%m-%d"],
            help="Only add addresses unsubscribed since this date (default: the whole list,"
            " dropping addresses no longer on it).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Read the list and count; change nothing.")
    ] = False,
) -> None:
    """Bring Optimove's unsubscribe list into the opt-in register.

    A member who unsubscribed in Optimove is then not mailed by the triggered templates
    optisync sends itself (delivery: api). Run it before push-event, e.g. hourly.

    Example: optisync optin sync --brand-id 7
    """
    from optisync.commands.optin import sync_unsubscribers

    out = _output(ctx)
    summary = sync_unsubscribers(
        out.config,
        brand_id=brand_id,
        since=since.date() if since is not None else None,
        dry_run=dry_run,
    )
    data = summary.as_dict()
    _keep_for_metrics(ctx, data)
    if out.json:
        out.emit_json(data)
    else:
        what = "would hold" if dry_run else "holds"
        out.info(
            f"optin sync: {summary.fetched} unsubscribed address(es) read from Optimove"
            f" (brand {summary.brand_id}, {summary.pages} page(s)); the register {what}"
            f" {summary.listed if not dry_run else summary.fetched}, dropped {summary.dropped}"
        )


#: The variable the completion scripts set when they ask optisync for completions.
COMPLETE_VAR = "_OPTISYNC_COMPLETE"


@app.command("completion")
def completion_cmd(
    shell: Annotated[
        str,
        typer.Argument(click_type=click.Choice(["bash", "zsh", "fish"]), help="bash, zsh or fish."),
    ],
) -> None:
    """Print the shell completion script for optisync's commands and options.

    Example: optisync completion bash > ~/.local/share/bash-completion/completions/optisync
    (zsh: a file named _optisync on $fpath; fish: ~/.config/fish/completions/optisync.fish)
    """
    from typer._completion_shared import get_completion_script

    typer.echo(get_completion_script(prog_name="optisync", complete_var=COMPLETE_VAR, shell=shell))


@schema_app.command("events")
def schema_events_cmd() -> None:
    """Print the JSON Schema of the input event envelope and each event's data.

    Example: optisync schema events > events.schema.json
    """
    import json

    from optisync.events import envelope_schema

    typer.echo(json.dumps(envelope_schema(), indent=2))


def main() -> None:
    """Console-script entry point (``optisync`` and ``python -m optisync``)."""
    # Everything optisync writes (exports, state, logs, and files DuckDB creates) holds member
    # data or secrets: for the owner only, whatever umask cron or a shell handed down.
    os.umask(0o077)
    if COMPLETE_VAR in os.environ:
        # a shell asking for completions: answer in the format of the scripts printed above
        from typer._completion_classes import completion_init

        completion_init()
    try:
        app(complete_var=COMPLETE_VAR)
    finally:
        # pydantic's validators, typer's commands and the config leave a few hundred thousand
        # long-lived objects; the interpreter's last full collections over them took ~100 ms,
        # a quarter of a cold push-event. Frozen, they are left to the OS. Nothing is lost:
        # every file, journal and connection is closed by its own ``with`` before this point.
        gc.freeze()
