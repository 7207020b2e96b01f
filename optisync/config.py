"""pydantic models of optisync.yaml (design.md §4)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Timeouts(Strict):
    connect: float = Field(5.0, gt=0, description="seconds to open a connection")
    read: float = Field(30.0, gt=0, description="seconds to wait for a response")


class RateLimit(Strict):
    requests: int = Field(50, ge=1, description="requests allowed per window")
    per_seconds: float = Field(10.0, gt=0, description="window length in seconds")


class RetryPolicy(Strict):
    max_attempts: int = Field(6, ge=1, le=100)
    base_delay: float = Field(0.5, ge=0)
    max_delay: float = Field(30.0, ge=0)
    max_total_seconds: float = Field(300.0, gt=0)
    respect_retry_after: bool = True


class OptimoveSettings(Strict):
    api_url: str = "https://api4.optimove.net"
    events_url: str | None = None
    tenant_id: int | None = None
    api_key: SecretStr | None = None
    events_token: SecretStr | None = None
    timeouts: Timeouts = Timeouts()
    concurrency: int = Field(4, ge=1, le=64)
    rate_limit: RateLimit = RateLimit()
    transactional_rate_limit: RateLimit = RateLimit(requests=10, per_seconds=1.0)
    events_rate_limit: RateLimit | None = None  # events gateway: unlimited unless set
    retry: RetryPolicy = RetryPolicy()
    events_per_request: int = Field(1, ge=1, le=50)
