"""One core function per command that sends: push-event and replay.

Each loads the config, opens the dead-letter store, takes the run lock where the work
could overlap, builds the client, runs the engine, and hands back the run's summary;
``raise_for`` turns it into the documented exit code (the CLI renders the summary first).
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path

from pydantic import SecretStr

from optisync.config import find_config, load_config
from optisync.config.models import Config, Target
from optisync.errors import (
    AuthError,
    ExitCode,
    Interrupted,
    InvalidInputError,
    PartialFailure,
    UnavailableError,
    UsageError,
)
from optisync.lock import RunLock
from optisync.optimove.client import UNSUBSCRIBE_QUOTAS, OptimoveClient
from optisync.optimove.quota import SharedQuota, quota_path
from optisync.optimove.ratelimit import AllOf
from optisync.realtime.deadletter import DeadLetterStore, Kind
from optisync.realtime.inputs import EventSource, Progress
from optisync.realtime.journal import Journal, journal_path
from optisync.realtime.push import Push
from optisync.realtime.replay import ReplayFilter, replay
from optisync.realtime.summary import PushSummary, ReplaySummary, RunSummary
from optisync.realtime.verdicts import Verdicts

__all__ = [
    "ClientFactory",
    "EventSource",
    "ReplayFilter",
    "build_client",
    "push_event",
    "raise_for",
    "replay_letters",
]

ClientFactory = Callable[[Config], OptimoveClient]


SEND_SECRETS = ("api_key", "events_token")


def build_client(config: Config) -> OptimoveClient:
    """The real Optimove client for ``config``, its secrets resolved and its rate limits
    shared with every optisync process using the same key."""
    settings = config.optimove
    resolved = {
        name: SecretStr(value)
        for name in ("api_key", "events_token")
        if (value := settings.secret(name)) is not None  # type: ignore[arg-type]
    }
    limiters: dict[str, SharedQuota | None] = {}
    unsubscribe = None
    key = resolved.get("api_key")
    if key is not None:
        state = config.path(settings.state_dir)
        hold = settings.timeouts.connect + settings.timeouts.read
        groups = {
            "general": settings.rate_limit,
            "transactional": settings.transactional_rate_limit,
            "events": settings.events_rate_limit,
        }
        for group, limit in groups.items():
            if limit is not None:
                limiters[group] = SharedQuota(
                    quota_path(state, key.get_secret_value(), group),
                    limit.requests,
                    limit.per_seconds,
                    hold=hold,
                )
        unsubscribe = AllOf(
            *(
                SharedQuota(quota_path(state, key.get_secret_value(), group), n, w, hold=hold)
                for group, n, w in UNSUBSCRIBE_QUOTAS
            )
        )
    return OptimoveClient(
        settings.model_copy(update=resolved),
        general_limiter=limiters.get("general"),
        transactional_limiter=limiters.get("transactional"),
        events_limiter=limiters.get("events"),
        callbacks=Verdicts.from_config(config),
        unsubscribe_limiter=unsubscribe,
    )


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the collector off the heap that outlives the run (modules, validators, config).

    Each full collection walks every tracked object; a bulk push creates enough objects to
    trigger dozens, and over the few hundred thousand loaded at start they took a fifth of
    the run's time. What the run itself creates is collected as usual.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + os.urandom(4).hex()


def config_hash(path: Path) -> str:
    """Which config a letter was written under, so a replay after a config change shows."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return "unknown"


def push_event(
    config_path: Path | None,
    source: EventSource,
    *,
    only: list[str] | None = None,
    dry_run: bool = False,
    wait: bool = False,
    progress: Progress | None = None,
    fresh: bool = False,
    client_factory: ClientFactory = build_client,
) -> PushSummary:
    """Validate, route and send events; dead-letter what cannot be delivered.

    A file given with ``--input`` keeps a journal of the parts already handled, so a rerun
    after a crash skips them; ``fresh`` forgets it and sends the whole file again. The
    client is built only once there is something to send.
    """
    source.check_usage()
    if only:
        unknown = sorted(set(only) - set(Target))
        if unknown:
            raise UsageError(
                f"--only {unknown[0]}: not a target", hint=f"one of: {Target.listing()}"
            )
    path = find_config(config_path)
    # A secret the file names as ${VAR} must be set before anything is sent: an unset
    # events token must not quietly mean "send unsigned".
    config = load_config(path, need_if_configured=() if dry_run else SEND_SECRETS)
    with ExitStack() as stack:
        store = None
        if not dry_run:
            store = DeadLetterStore(config.path(config.dead_letter.dir))
            if source.bulk:
                stack.enter_context(
                    RunLock(store.dir / "run.lock", wait=wait, command="push-event")
                )
        register = None
        if config.mails_on_consent:
            # sqlite3 is imported only when a template needs the register
            from optisync.realtime.optin import OptInRegister, register_path

            register_file = register_path(config.path(config.optimove.state_dir))
            if not dry_run or register_file.exists():
                register = OptInRegister(register_file)
                stack.callback(register.close)
        journal = None
        if source.input is not None and source.input != "-" and not dry_run:
            journal = Journal(
                journal_path(config.path(config.optimove.state_dir), Path(source.input)),
                fresh=fresh,
            )
            stack.callback(journal.close)
        push = Push(
            config,
            journal=journal,
            opt_in_register=register,
            store=store,
            client_factory=None if dry_run else lambda: client_factory(config),
            run_id=new_run_id(),
            config_hash=config_hash(path),
            only=set(only) if only else None,
            dry_run=dry_run,
        )
        with frozen_heap():
            return push.run(source.records(stack, progress))


def replay_letters(
    config_path: Path | None,
    filters: ReplayFilter,
    *,
    dry_run: bool = False,
    wait: bool = False,
    client_factory: ClientFactory = build_client,
) -> ReplaySummary:
    """Re-send dead letters; a letter leaves the folder only once Optimove accepted it."""
    kinds = [k.value for k in Kind]
    if filters.kind is not None and filters.kind not in kinds:
        raise UsageError(f"--kind {filters.kind}: not a kind", hint=f"one of: {', '.join(kinds)}")
    path = find_config(config_path)
    config = load_config(path, need_if_configured=() if dry_run else SEND_SECRETS)
    store = DeadLetterStore(config.path(config.dead_letter.dir))
    with RunLock(store.dir / "run.lock", wait=wait, command="replay"):
        store.cleanup_tmp()
        store.purge_older_than(config.dead_letter.retention_days)
        return replay(
            config,
            store,
            None if dry_run else lambda: client_factory(config),
            run_id=new_run_id(),
            filters=filters,
            dry_run=dry_run,
        )


def raise_for(summary: RunSummary) -> None:
    """The summary's exit code, as the documented error (the CLI maps it in one place).

    Messages name the dead-letter folder, so whoever reads the error knows where to look.
    """
    code = summary.exit_code()
    where = f" in {summary.dead_letter_dir}" if summary.dead_letter_dir else ""
    counts = f"{summary.sent} sent, {summary.dead_lettered} dead-lettered"
    replay_hint = "fix the cause, then: optisync replay"
    if code is ExitCode.INTERRUPTED:
        raise Interrupted(f"interrupted; nothing lost ({counts})", hint=replay_hint)
    if code is ExitCode.REFUSED:
        raise AuthError(
            f"{summary.stop_reason}; undelivered messages were dead-lettered{where}",
            hint="check optimove.api_key / events_token, then: optisync replay",
        )
    if code is ExitCode.UNAVAILABLE:
        raise UnavailableError(
            f"{summary.stop_reason}; undelivered messages were dead-lettered{where}",
            hint=replay_hint,
        )
    if code is ExitCode.INVALID_INPUT:
        assert isinstance(summary, PushSummary)  # only push-event reads input
        raise InvalidInputError(
            f"{summary.invalid} invalid record(s) kept{where} as 'invalid' ({counts})",
            hint="each letter names the line and field; fix the producer and resend",
        )
    if code is ExitCode.PARTIAL:
        raise PartialFailure(
            f"{summary.dead_lettered} message(s) dead-lettered{where} ({counts})",
            hint=replay_hint,
        )
