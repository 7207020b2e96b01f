"""One core function per command that sends: push-event and replay.

Each loads the config, opens the dead-letter store, takes the run lock where the work
could overlap, runs, and turns the run's summary into the documented exit code by raising
the matching error (the CLI renders the summary first).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

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
from optisync.optimove.client import OptimoveClient
from optisync.optimove.quota import SharedQuota, quota_path
from optisync.realtime.deadletter import DeadLetterStore, Kind
from optisync.realtime.delivery import (
    Pusher,
    ReplayFilter,
    Summary,
    config_hash,
    new_run_id,
    replay,
)
from optisync.realtime.inputs import Record, check, decode, read_ndjson
from optisync.realtime.journal import Journal, journal_path

Progress = Callable[[int, int | None], None]  # (bytes done, bytes total or None)


@dataclass
class EventSource:
    """Where push-event reads: flags, one JSON file, or newline-delimited JSON."""

    type: str | None = None
    member: str | None = None
    data: str | None = None
    email: str | None = None
    locale: str | None = None
    event_id: str | None = None
    occurred_at: str | None = None
    file: Path | None = None
    input: str | None = None  # a path, or "-" for stdin

    @property
    def bulk(self) -> bool:
        return self.input is not None

    def check_usage(self) -> None:
        chosen = [
            n
            for n, v in (("--type", self.type), ("--file", self.file), ("--input", self.input))
            if v is not None
        ]
        if len(chosen) != 1:
            raise UsageError(
                "give exactly one of --type (with --member), --file or --input",
                hint="e.g. optisync push-event --input events.ndjson",
            )
        if self.type is not None and not self.member:
            raise UsageError("--type needs --member")


def make_client_factory(config: Config) -> Callable[[], OptimoveClient]:
    """The one place a real client is built; tests replace it to inject a transport."""

    def factory() -> OptimoveClient:
        settings = config.optimove
        resolved = {
            name: SecretStr(value)
            for name in ("api_key", "events_token")
            if (value := settings.secret(name)) is not None  # type: ignore[arg-type]
        }
        limiters: dict[str, SharedQuota | None] = {}
        key = resolved.get("api_key")
        if key is not None:
            # every optisync process using this key shares one budget per API group
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
        return OptimoveClient(
            settings.model_copy(update=resolved),
            general_limiter=limiters.get("general"),
            transactional_limiter=limiters.get("transactional"),
            events_limiter=limiters.get("events"),
        )

    return factory


client_factory_for: Callable[[Config], Callable[[], OptimoveClient]] = make_client_factory


def _records(source: EventSource, stack: ExitStack, progress: Progress | None) -> Iterator[Record]:
    if source.type is not None:
        try:
            data = decode(source.data) if source.data else {}
        except ValueError as exc:
            raise UsageError(f"--data is not valid JSON: {exc}") from None
        value: dict[str, Any] = {
            "type": source.type,
            "member_id": source.member,
            "occurred_at": source.occurred_at or datetime.now(UTC).isoformat(),
            "data": data,
        }
        for key, item in (
            ("id", source.event_id),
            ("email", source.email),
            ("locale", source.locale),
        ):
            if item is not None:
                value[key] = item
        yield check(value, None, "flags")
        return
    if source.file is not None:
        try:
            text = source.file.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {source.file}: {exc.strerror or exc}") from None
        try:
            value = decode(text.removeprefix(b"\xef\xbb\xbf"))
        except (ValueError, RecursionError) as exc:
            yield Record(1, str(source.file), error=f"bad JSON: {exc}")
            return
        yield check(value, None, str(source.file))
        return
    assert source.input is not None
    stream: IO[bytes]
    total: int | None = None
    if source.input == "-":
        stream, name = sys.stdin.buffer, "<stdin>"
    else:
        path = Path(source.input)
        try:
            stream = stack.enter_context(path.open("rb"))
            total = path.stat().st_size
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
        name = str(path)
    for n, record in enumerate(read_ndjson(stream, name), 1):
        yield record
        if progress is not None and total and n % 500 == 0:
            progress(stream.tell(), total)


def push_event(
    config_path: Path | None,
    source: EventSource,
    *,
    only: list[str] | None = None,
    dry_run: bool = False,
    wait: bool = False,
    progress: Progress | None = None,
    fresh: bool = False,
) -> Summary:
    """Validate, route and send events; dead-letter what cannot be delivered.

    A file given with ``--input`` keeps a journal of the parts already handled, so a rerun
    after a crash skips them; ``fresh`` forgets it and sends the whole file again.
    """
    source.check_usage()
    if only:
        unknown = sorted(set(only) - set(Target))
        if unknown:
            raise UsageError(
                f"--only {unknown[0]}: not a target", hint=f"one of: {Target.listing()}"
            )
    path = find_config(config_path)
    config = load_config(path)
    run_id = new_run_id()
    with ExitStack() as stack:
        store = None
        if not dry_run:
            store = DeadLetterStore(config.path(config.dead_letter.dir))
            if source.bulk:
                stack.enter_context(
                    RunLock(store.dir / "run.lock", wait=wait, command="push-event")
                )
        register = None
        if any(t.kind == "triggered" and t.delivery == "api" for t in config.templates.values()):
            register_path = config.path(config.optimove.state_dir) / "opt-in.sqlite3"
            if not dry_run or register_path.exists():
                from optisync.realtime.optin import OptInRegister  # sqlite3, only when needed

                register = OptInRegister(register_path)
                stack.callback(register.close)
        journal = None
        if source.input is not None and source.input != "-" and not dry_run:
            journal = Journal(
                journal_path(config.path(config.optimove.state_dir), Path(source.input)),
                fresh=fresh,
            )
            stack.callback(journal.close)
        pusher = Pusher(
            config,
            journal=journal,
            opt_in_register=register,
            store=store,
            client_factory=None if dry_run else client_factory_for(config),
            run_id=run_id,
            config_hash=config_hash(path),
            only=set(only) if only else None,
            dry_run=dry_run,
        )
        return pusher.run(_records(source, stack, progress))


def replay_letters(
    config_path: Path | None,
    filters: ReplayFilter,
    *,
    dry_run: bool = False,
    wait: bool = False,
) -> Summary:
    """Re-send dead letters; a letter leaves the folder only once Optimove accepted it."""
    kinds = [k.value for k in Kind]
    if filters.kind is not None and filters.kind not in kinds:
        raise UsageError(f"--kind {filters.kind}: not a kind", hint=f"one of: {', '.join(kinds)}")
    path = find_config(config_path)
    config = load_config(path)
    store = DeadLetterStore(config.path(config.dead_letter.dir))
    with RunLock(store.dir / "run.lock", wait=wait, command="replay"):
        store.cleanup_tmp()
        store.purge_older_than(config.dead_letter.retention_days)
        return replay(
            config,
            store,
            None if dry_run else client_factory_for(config),
            run_id=new_run_id(),
            filters=filters,
            dry_run=dry_run,
        )


def raise_for(summary: Summary, dead_letter_dir: str | None = None) -> None:
    """The summary's exit code, as the documented error (the CLI maps it in one place)."""
    code = summary.exit_code()
    where = f" in {dead_letter_dir}" if dead_letter_dir else ""
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
            f"{summary.stop_reason}; undelivered messages were" f" dead-lettered{where}",
            hint=replay_hint,
        )
    if code is ExitCode.INVALID_INPUT:
        raise InvalidInputError(
            f"{summary.invalid} invalid record(s) kept{where} as 'invalid' ({counts})",
            hint="each letter names the line and field; fix the producer and resend",
        )
    if code is ExitCode.PARTIAL:
        raise PartialFailure(
            f"{summary.dead_lettered} message(s) dead-lettered{where}" f" ({counts})",
            hint=replay_hint,
        )


def summary_json(summary: Summary) -> str:
    return json.dumps(summary.as_dict(), ensure_ascii=False, default=str)
