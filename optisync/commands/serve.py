"""``optisync serve``: load the config, lock the spool, start delivery, serve HTTP until
SIGTERM, then finish what was accepted and exit 0 (docs/serve.md)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optisync.commands.realtime import (
    SEND_SECRETS,
    ClientFactory,
    build_client,
    config_hash,
    new_run_id,
)
from optisync.config import find_config, load_config
from optisync.config.models import Config, split_listen
from optisync.errors import ConfigError, UsageError
from optisync.lock import RunLock
from optisync.realtime.deadletter import DeadLetterStore
from optisync.realtime.verdicts import Verdicts

if TYPE_CHECKING:
    from optisync.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)

#: Seconds uvicorn gives open requests to finish after SIGTERM.
GRACEFUL_SECONDS = 10


#: Seconds between two looks for calls Optimove never answered.
SWEEP_SECONDS = 30.0


def _verdict_handler(
    config: Config, store: DeadLetterStore, metrics: ServeMetrics, stack: ExitStack
) -> Callable[[Mapping[str, str], bytes], tuple[int, dict[str, Any]]] | None:
    """Optimove's verdicts on the calls sent with a callback URL (None without one): each
    refused customer becomes a ``rejected`` letter; calls never answered are swept overdue."""
    verdicts = Verdicts.from_config(config, store)
    if verdicts is None:
        return None

    def handle(params: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        status, answer = verdicts.handle(params, body)
        if status == 200:
            metrics.count_rejected(int(answer.get("rejected", 0)))
        metrics.verdict_calls(verdicts.counts())
        return status, answer

    stopping = threading.Event()

    def sweep() -> None:
        while not stopping.wait(SWEEP_SECONDS):
            try:
                metrics.overdue.inc(verdicts.sweep())
                metrics.verdict_calls(verdicts.counts())
            except Exception as exc:  # a sweep is retried at the next turn
                log.warning("sweeping calls with no verdict failed: %s", exc)

    sweeper = threading.Thread(target=sweep, name="optisync-verdict-sweep", daemon=True)
    sweeper.start()
    stack.callback(stopping.set)
    return handle


def serve(
    config_path: Path | None,
    *,
    listen: str | None = None,
    client_factory: ClientFactory = build_client,
    callback: Callable[..., Any] | None = None,
    ready: Callable[[str, int], None] | None = None,
) -> None:
    """Run the connector until SIGTERM or Ctrl-C; raise on what must exit non-zero.

    ``callback`` handles ``POST /v1/optimove/callback`` (404 without one).
    """
    import uvicorn

    from optisync.serve.app import ServeState, build_app
    from optisync.serve.metrics import ServeMetrics
    from optisync.serve.service import Delivery
    from optisync.serve.spool import LOCK, Spool

    path = find_config(config_path)
    config = load_config(path, need_if_configured=(*SEND_SECRETS, "serve.tokens"))
    settings = config.serve
    try:
        host, port = split_listen(listen) if listen else settings.address()
    except ValueError as exc:
        raise UsageError(f"--listen {listen}: {exc}") from None
    tokens = settings.token_list(config.path)
    if not tokens:
        raise ConfigError(
            "serve needs at least one caller token",
            hint="export OPTISYNC_SERVE__TOKENS=token1,token2 or set serve.tokens_file",
        )
    from optisync import redact

    redact.register(*tokens)
    spool_dir = config.path(settings.spool_dir)
    with ExitStack() as stack:
        stack.enter_context(RunLock(spool_dir / LOCK, command="serve"))
        spool = Spool(spool_dir, int(settings.max_spool_mb * (1 << 20)))
        store = DeadLetterStore(config.path(config.dead_letter.dir))
        register = None
        if config.mails_on_consent:
            from optisync.realtime.optin import OptInRegister, register_path

            register = OptInRegister(register_path(config.path(config.optimove.state_dir)))
            stack.callback(register.close)
        metrics = ServeMetrics()
        if callback is None:
            callback = _verdict_handler(config, store, metrics, stack)
        delivery = Delivery(
            config,
            spool,
            store=store,
            client_factory=lambda: client_factory(config),
            metrics=metrics,
            new_run_id=new_run_id,
            config_hash=config_hash(path),
            opt_in_register=register,
        )
        state = ServeState(
            spool=spool,
            tokens=[t.encode() for t in tokens],
            max_body=int(settings.max_body_mb * (1 << 20)),
            metrics=metrics,
            callback=callback,
            ready=lambda: delivery.alive,
        )
        server = uvicorn.Server(
            uvicorn.Config(
                build_app(state),
                host=host,
                port=port,
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=GRACEFUL_SECONDS,
                server_header=False,
            )
        )

        def fail() -> None:
            state.accepting = False
            server.should_exit = True

        delivery.on_error = fail
        delivery.start()
        # uvicorn re-raises the signal that stopped it once it is done; by then the
        # default action (die) would cut delivery short, so the signal is only noted here.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: None)
        if ready is not None:
            ready(host, port)
        log.info("optisync serve listening on %s:%d, spool %s", host, port, spool_dir)
        try:
            server.run()
        finally:
            state.accepting = False
            delivery.stop()
            delivery.join()
        if delivery.error is not None:
            raise delivery.error
        if not server.started:
            raise UsageError(f"cannot listen on {host}:{port}", hint="is the port in use?")
