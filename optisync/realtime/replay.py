"""replay: re-send dead letters with their exact request bodies (same idempotency keys).

A letter leaves the folder only after Optimove accepted it; a failing one stays with its
attempt count raised. Invalid-input letters have no request and are not replayed; one
holding an over-long line says so. Letters
holding the same request (one bulk call) are sent once, together. See docs/dead-letters.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from optisync.config.models import Config
from optisync.optimove.client import OptimoveClient, encode_body
from optisync.optimove.outcome import Endpoint
from optisync.realtime.deadletter import DeadLetter, DeadLetterStore, LetterError
from optisync.realtime.sender import Sender, stoppable
from optisync.realtime.settle import Settler
from optisync.realtime.summary import MAX_PLANS_SHOWN, ReplaySummary

OVERSIZED = (
    "invalid input: a line over the size limit, kept whole in the .raw file beside its"
    " letter; not resent (fix the producer and push it again)"
)


@dataclass
class ReplayFilter:
    kind: str | None = None
    type: str | None = None
    since: datetime | None = None
    limit: int | None = None


@dataclass
class Resend:
    """Letters that hold one and the same request, sent again as one call."""

    endpoint: Endpoint
    request: Any
    items: list[tuple[Path, DeadLetter]] = field(default_factory=list)


class ReplaySettler(Settler[Resend]):
    summary: ReplaySummary

    def __init__(self, summary: ReplaySummary, store: DeadLetterStore, *, archive: bool) -> None:
        super().__init__(summary)
        self.store = store
        self.archive = archive

    def delivered(self, sent: Resend) -> None:
        for path, letter in sent.items:
            self.store.remove(path, archive=self.archive)
            self.summary.sent += 1
            self.summary.by_target[letter.kind.value] += 1

    def failed(self, sent: Resend, error: LetterError, attempts: int) -> None:
        # the letter counts its own attempts: one more, whatever the client retried
        for path, letter in sent.items:
            self.store.record_failure(path, letter, error)
            self.summary.dead_lettered += 1


def collect(store: DeadLetterStore, filters: ReplayFilter, summary: ReplaySummary) -> list[Resend]:
    """The letters to resend, grouped by request, in the order they were written."""
    groups: dict[tuple[str, str], Resend] = {}
    for path, letter in store.iter_letters(
        kind=filters.kind, type=filters.type, since=filters.since, limit=filters.limit
    ):
        summary.letters += 1
        if letter.request is None or letter.endpoint is None:
            summary.not_replayable += 1
            if letter.raw is not None:
                summary.warnings[OVERSIZED] += 1
            continue
        key = (letter.endpoint, json.dumps(letter.request, sort_keys=True))
        if key not in groups:
            groups[key] = Resend(Endpoint(letter.endpoint), letter.request)
        groups[key].items.append((path, letter))
    return list(groups.values())


def replay(
    config: Config,
    store: DeadLetterStore,
    client_factory: Callable[[], OptimoveClient] | None,
    *,
    run_id: str,
    filters: ReplayFilter,
    dry_run: bool = False,
) -> ReplaySummary:
    """Resend the letters ``filters`` select; ``client_factory`` is not called on a dry run
    or when nothing is to be sent."""
    summary = ReplaySummary(run_id, dry_run=dry_run, dead_letter_dir=str(store.dir))
    resends = collect(store, filters, summary)
    if dry_run:
        summary.plans = [
            {"endpoint": r.endpoint.value, "letters": [p.name for p, _ in r.items]}
            for r in resends[:MAX_PLANS_SHOWN]
        ]
        return summary
    if not resends:
        return summary
    assert client_factory is not None
    sender: Sender[Resend] = Sender(client_factory(), config.optimove.concurrency)
    settler = ReplaySettler(summary, store, archive=config.dead_letter.archive)

    def resend_all() -> None:
        for resend in resends:
            if summary.stopped:
                break
            sender.submit(resend.endpoint, encode_body(resend.request), resend)
            summary.requests += 1
            sender.settle(settler.settle)

    stoppable(
        resend_all,
        interrupted=lambda: summary.stop("interrupted", "interrupted by a signal"),
        finish=lambda: sender.finish(settler.settle),
    )
    return summary
