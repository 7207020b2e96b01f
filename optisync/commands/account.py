"""Reading from the Optimove account (GET calls): one place that turns a failed read into
the run's exit code, for ``validate-config --online`` and ``optin sync``."""

from __future__ import annotations

from typing import Any

from optisync.config.models import Config
from optisync.errors import RefusedError, UnavailableError
from optisync.optimove.client import OptimoveClient
from optisync.optimove.outcome import Endpoint


def read(
    client: OptimoveClient, config: Config, endpoint: Endpoint, params: dict[str, Any] | None = None
) -> Any:
    """The decoded answer of one GET.

    Raises:
        OptimoveAuthError: the API key was refused (exit 5).
        RefusedError: Optimove refused the call (exit 5).
        UnavailableError: Optimove did not answer, retries and time budget spent (exit 6).
    """
    fetched = client.fetch(endpoint, params)
    delivery = fetched.delivery
    if delivery.ok:
        return fetched.data
    what = f"{endpoint.value}: {delivery.error or delivery.outcome}"
    if delivery.outcome in ("transient", "rate_limited"):
        raise UnavailableError(
            f"Optimove did not answer {what}",
            hint=f"check optimove.api_url ({config.optimove.api_url}) and the network",
        )
    raise RefusedError(
        f"Optimove refused {what}",
        hint="check optimove.api_url and that the API key may read the account",
    )
