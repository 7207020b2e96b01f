"""``validate-config``: the offline checks, and with ``--online`` the account's view too.

The account is read with two GET calls (its attributes, its transactional templates) through
the same client as every send: the API key, the shared quota, retries, within a time budget.
Whatever happens online, the offline report is complete; a failure to reach or be let into
Optimove is kept beside it for the caller to exit with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optisync.config as configuration
from optisync.config import Config, Report
from optisync.config.models import Timeouts
from optisync.config.source import Source
from optisync.errors import OptisyncError, RefusedError

if TYPE_CHECKING:
    from optisync.commands.realtime import ClientFactory
    from optisync.config.online import Account

#: Seconds ``--online`` waits for the account by default, retries included.
DEFAULT_TIMEOUT = 30.0


@dataclass
class Validation:
    report: Report
    online: bool = False
    failure: OptisyncError | None = None
    account: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = self.report.as_dict()
        if self.online:
            data["online"] = {
                "checked": self.failure is None and bool(self.account),
                "error": self.failure.message if self.failure is not None else None,
                **self.account,
            }
        return data


def validate(
    path: Path,
    *,
    strict: bool = False,
    online: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    client_factory: ClientFactory | None = None,
) -> Validation:
    """Check the config at ``path``; with ``online``, against the Optimove account too
    (read through ``client_factory``, by default the real client)."""
    if not online:
        # through the package, so a test can stand in for it
        return Validation(configuration.validate_config(path, strict=strict))
    failure: OptisyncError | None = None
    counts: dict[str, int] = {}

    def against_account(src: Source, config: Config) -> None:
        from optisync.config.online import check_online

        try:
            key = config.optimove.secret("api_key")
        except OSError as exc:
            src.add(
                ("optimove", "api_key_file"),
                f"cannot read the API key file: {exc.strerror or exc}",
            )
            return
        if not key:
            src.add(
                ("optimove", "api_key"),
                "--online needs the API key to read the account",
                hint="set OPTIMOVE_API_KEY (or optimove.api_key_file)",
            )
            return
        nonlocal failure
        try:
            account = fetch_account(config, timeout, client_factory)
        except OptisyncError as exc:
            failure = exc
            return
        counts.update(attributes=len(account.attributes), templates=len(account.templates))
        check_online(src, config, account)

    report = configuration.validate_config(path, strict=strict, more=against_account)
    return Validation(report, online=True, failure=failure, account=counts)


def fetch_account(
    config: Config, timeout: float, client_factory: ClientFactory | None = None
) -> Account:
    """The account's attributes and transactional templates, read once within ``timeout``.

    Raises:
        OptimoveAuthError: the API key was refused (exit 5).
        RefusedError: Optimove refused a call or answered something unreadable (exit 5).
        UnavailableError: Optimove did not answer in time (exit 6).
    """

    settings = config.optimove
    bounded = settings.model_copy(
        update={
            "timeouts": Timeouts(
                connect=min(settings.timeouts.connect, timeout),
                read=min(settings.timeouts.read, timeout),
            ),
            "retry": settings.retry.model_copy(update={"max_total_seconds": timeout}),
        }
    )
    # only --online pays for the HTTP stack
    from optisync.commands.account import read
    from optisync.commands.realtime import build_client
    from optisync.config.online import Account
    from optisync.optimove.outcome import Endpoint

    bounded_config = config.model_copy(update={"optimove": bounded})
    with (client_factory or build_client)(bounded_config) as client:
        answers = [
            read(client, bounded_config, endpoint)
            for endpoint in (Endpoint.GET_CUSTOMER_ATTRIBUTE_LIST, Endpoint.GET_TEMPLATE_DETAILS)
        ]
    try:
        return Account.from_optimove(answers[0], answers[1])
    except ValueError as exc:
        raise RefusedError(f"Optimove's answer is not understood: {exc}") from None
