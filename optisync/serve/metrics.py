"""``GET /metrics``: the connector's figures in Prometheus' text format, in a registry of
its own (nothing global, so tests and several apps in one process never collide)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from optisync.optimove.outcome import Endpoint, Outcome

# From a packed message's quick answer to a retried one under quota.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30, 60, 300)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(
            "optisync_serve_messages_received", "Messages accepted and spooled.", registry=r
        )
        self.invalid = Counter(
            "optisync_serve_messages_invalid",
            "Messages refused at intake (answered 400 or per item).",
            registry=r,
        )
        self.delivered = Counter(
            "optisync_serve_messages_delivered",
            "Messages whose every part Optimove accepted.",
            registry=r,
        )
        self.dead_lettered = Counter(
            "optisync_serve_messages_dead_lettered",
            "Messages kept as dead letters (a part failed, or invalid once planned).",
            registry=r,
        )
        self.settled = Counter(
            "optisync_serve_messages_settled",
            "Messages that left the spool, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "optisync_serve_messages_rejected_by_optimove",
            "Items Optimove rejected in an asynchronous verdict (callback).",
            registry=r,
        )
        self.awaiting = Gauge(
            "optisync_serve_verdict_calls",
            "Calls sent with a callback URL whose verdict has not come, by state.",
            ["state"],
            registry=r,
        )
        self.overdue = Counter(
            "optisync_serve_verdicts_overdue",
            "Calls that had no verdict from Optimove within optimove.callback_timeout.",
            registry=r,
        )
        self.spooled = Gauge(
            "optisync_serve_messages_spooled", "Messages in the spool now.", registry=r
        )
        self.spool_bytes = Gauge(
            "optisync_serve_spool_bytes", "Bytes of spool files now.", registry=r
        )
        self.rate_limited = Counter(
            "optisync_serve_optimove_429",
            "Answers 429 (too many requests) from Optimove.",
            ["endpoint"],
            registry=r,
        )
        self.quota_waits = Counter(
            "optisync_serve_quota_waits",
            "Requests that waited for a rate-limit permit.",
            ["endpoint"],
            registry=r,
        )
        self.quota_wait_seconds = Counter(
            "optisync_serve_quota_wait_seconds",
            "Seconds spent waiting for rate-limit permits.",
            ["endpoint"],
            registry=r,
        )
        self.latency = Histogram(
            "optisync_serve_delivery_seconds",
            "From a message's receipt to Optimove's answer that settled it.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def attempt(self, endpoint: Endpoint, waited: float, outcome: Outcome) -> None:
        """The client's observer: one attempt at ``endpoint``."""
        if outcome.status == 429:
            self.rate_limited.labels(endpoint.value).inc()
        if waited > 0.001:  # under a millisecond is the permit's own bookkeeping
            self.quota_waits.labels(endpoint.value).inc()
            self.quota_wait_seconds.labels(endpoint.value).inc(waited)

    def count_rejected(self, items: int = 1) -> None:
        """For the callback handler: ``items`` rejected by Optimove's verdict."""
        self.rejected.inc(items)

    def verdict_calls(self, counts: Mapping[str, int]) -> None:
        """Calls pending and overdue, as the verdicts folder holds them now."""
        for state, count in counts.items():
            self.awaiting.labels(state).set(count)

    def render(self) -> bytes:
        text: bytes = generate_latest(self.registry)
        return text
