"""The Typer layer: parse flags, call one core function, render its result. No logic here.

Every ``OptisyncError`` becomes its documented exit code in ``OptisyncGroup.invoke``, the
one place where exceptions meet exit codes, so CliRunner tests see what users get.
"""

from __future__ import annotations

import logging
import sys
import traceback
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
                traceback.print_exc(file=out.stderr)
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
                traceback.print_exc(file=out.stderr)
            ctx.exit(int(ExitCode.INTERNAL))


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
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Sync ES Loyalty member events and daily batch data into Optimove."""
    ctx.obj = Output(config=config, json=json_out, verbose=verbose, quiet=quiet, no_color=no_color)
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="optisync: %(message)s")


@app.command("validate-config")
def validate_config_cmd(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(help="Config file (default: --config, $OPTISYNC_CONFIG, ./optisync.yaml)."),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors.")] = False,
) -> None:
    """Check a config file and report every problem with its file:line and key.

    Exits 0 when valid (warnings allowed unless --strict), 3 when not.

    Example: optisync validate-config examples/optisync.yaml
    """
    from optisync.configfile import find_config
    from optisync.validate import validate_config

    out = _output(ctx)
    report = validate_config(find_config(path or out.config), strict=strict)
    if out.json:
        out.emit_json(report.as_dict())
    else:
        for problem in report.problems:
            if problem.severity == "error" or not out.quiet:
                out.line(problem.render())
    if not report.ok:
        raise ConfigError(
            f"{report.path}: {len(report.errors)} error(s), {len(report.warnings)} warning(s)"
        )
    if not out.json:
        out.info(f"{report.path}: valid ({len(report.warnings)} warning(s))")


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
    app()
