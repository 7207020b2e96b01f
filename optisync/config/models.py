"""pydantic models of optisync.yaml: what each section and key may hold.

The section names are part of the product contract (docs/config.md); the keys inside are
documented, one comment per key, in ``examples/optisync.yaml``.
"""

import ipaddress
import re
import unicodedata
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from optisync.errors import ConfigError
from optisync.events import EventType
from optisync.optimove import limits


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


# --- optimove ---------------------------------------------------------------------------


class Timeouts(Strict):
    connect: float = Field(5.0, gt=0, description="seconds to open a connection")
    read: float = Field(30.0, gt=0, description="seconds to wait for a response")


class RateLimit(Strict):
    requests: int = Field(limits.GENERAL_REQUESTS, ge=1, description="requests allowed per window")
    per_seconds: float = Field(
        limits.GENERAL_WINDOW_SECONDS, gt=0, description="window length in seconds"
    )


class RetryPolicy(Strict):
    max_attempts: int = Field(6, ge=1, le=100)
    base_delay: float = Field(0.5, ge=0)
    max_delay: float = Field(30.0, ge=0)
    max_total_seconds: float = Field(300.0, gt=0)
    respect_retry_after: bool = True


class OptInSettings(Strict):
    method: Literal["event", "unsubscribe_list", "both"] = "event"
    brand_id: int | None = Field(None, ge=0, description="OptiMail brand of the unsubscribe list")
    unknown_state: Literal["opted_out", "opted_in"] = "opted_out"

    @model_validator(mode="after")
    def _brand_for_list(self) -> "OptInSettings":
        if self.method != "event" and self.brand_id is None:
            raise ValueError(f"opt-in method {self.method!r} needs brand_id (the OptiMail brand)")
        return self


# Characters no secret may hold: controls (a newline ends an HTTP header early or makes the
# standard library echo the whole header in its error), format characters (invisible) and
# line or paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def secret_problem(value: str, *, header: bool = False) -> str | None:
    """Why ``value`` cannot be used as a secret, or None; the text never quotes the value.

    ``header``: the secret travels in an HTTP header, so only printable ASCII is accepted.
    """
    if any(unicodedata.category(c) in _UNSAFE_CATEGORIES for c in value):
        return "contains a control character (a newline or similar); the value is not shown"
    if value != value.strip():
        return "has leading or trailing whitespace; the value is not shown"
    if header and not all(" " <= c < "\x7f" for c in value):
        return "must be printable ASCII (it is sent in an HTTP header); the value is not shown"
    return None


def read_secret_file(path: Path, key: str) -> str | None:
    """A secret kept in a file: one trailing line break is dropped (files usually end in one),
    anything else unusual is refused. ``key`` names the setting in errors, never the value.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(f"{key}: cannot read {path}: {reason}") from None
    if text.endswith("\n"):
        text = text[: -2 if text.endswith("\r\n") else -1]
    if not text:
        return None
    problem = secret_problem(text, header=True)
    if problem:
        raise ConfigError(
            f"{key}: the secret in {path} {problem}",
            hint="write the secret alone in the file; one final newline is allowed",
        )
    return text


def is_loopback_host(host: str | None) -> bool:
    """localhost, 127.0.0.0/8 or ::1: traffic that never leaves this machine."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class OptimoveSettings(Strict):
    # Declared before the URLs: their validator reads it.
    allow_insecure_http: bool = Field(
        False, description="accept http:// for a host that is not loopback (not recommended)"
    )
    api_url: str = "https://api4.optimove.net"
    events_url: str | None = None
    tenant_id: int | None = Field(None, ge=0)
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    events_token: SecretStr | None = None
    events_token_file: Path | None = None
    # What the events host is given: the HMAC signature made with the events token, the
    # REST API key in X-API-KEY, or nothing. Stated, never guessed: a key must not go
    # where Optimove did not say it belongs.
    events_auth: Literal["token", "api_key_header", "none"] = "token"
    timeouts: Timeouts = Field(default_factory=Timeouts)
    concurrency: int = Field(4, ge=1, le=64)
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    transactional_rate_limit: RateLimit = Field(
        default_factory=lambda: RateLimit(
            requests=limits.TRANSACTIONAL_REQUESTS,
            per_seconds=limits.TRANSACTIONAL_WINDOW_SECONDS,
        )
    )
    events_rate_limit: RateLimit | None = None
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    events_per_request: int = Field(1, ge=1, le=limits.MAX_EVENTS_PER_REQUEST)
    # a partial pack goes once its oldest message has waited this long (docs/realtime.md)
    linger_ms: int = Field(500, ge=0, le=10_000)
    opt_in: OptInSettings = Field(default_factory=OptInSettings)
    state_dir: Path = Path("var/state")
    callback_url: str | None = Field(
        None,
        description="public URL of optisync serve's POST /v1/optimove/callback, where"
        " Optimove reports its verdict on attribute updates and upserts",
    )
    callback_timeout: float = Field(
        600.0, gt=0, description="seconds to wait for a verdict before a call is overdue"
    )

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL, e.g. https://optisync.example.com/...")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            # the verdicts name members and attributes; they must not cross the net in clear
            raise ValueError(
                f"plain http:// to {parts.hostname}: Optimove's verdicts would travel"
                " unencrypted; use https:// (http is allowed for loopback hosts only)"
            )
        if parts.fragment:
            raise ValueError("must not hold a #fragment: optisync adds a query string")
        return value

    def secret(self, name: Literal["api_key", "events_token"]) -> str | None:
        """The secret's value, from the config (usually ``${ENV}``) or else its ``*_file``.

        Raises ConfigError (naming the key, never the value) when the value is unusable.
        """
        value: SecretStr | None = getattr(self, name)
        if value is not None and value.get_secret_value():
            text = value.get_secret_value()
            problem = secret_problem(text, header=True)
            if problem:
                raise ConfigError(f"optimove.{name}: {problem}")
            return text
        path: Path | None = getattr(self, f"{name}_file")
        if path is not None:
            return read_secret_file(path, f"optimove.{name}_file")
        return None

    @field_validator("api_url", "events_url")
    @classmethod
    def _http_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        match = re.match(r"^(https?)://([^\s/]+)", value)
        if not match:
            raise ValueError("must be an http(s) URL, e.g. https://api4.optimove.net")
        if match.group(1) == "http" and not info.data.get("allow_insecure_http", False):
            host = urlsplit(value).hostname
            if not is_loopback_host(host):
                # the API key and member data would cross the network in clear text
                raise ValueError(
                    f"plain http:// to {host} would send the API key unencrypted; use https://"
                    " (or set optimove.allow_insecure_http: true, e.g. behind a TLS proxy)"
                )
        return value.rstrip("/") if value else value


# --- attributes -------------------------------------------------------------------------

ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_SIZED = re.compile(r"^(N?VARCHAR)\s*\(\s*(\d+)\s*\)$", re.IGNORECASE)
TYPE_ALIASES = {
    "decimal": "DECIMAL(19,4)",
    "money": "DECIMAL(19,4)",
    "number": "DECIMAL(19,4)",
    "int": "INT",
    "integer": "INT",
    "bigint": "BIGINT",
    "date": "DATE",
    "string": f"NVARCHAR({limits.MAX_STRING})",
    "text": f"NVARCHAR({limits.MAX_STRING})",
    "boolean": "INT",
}
OPTIMOVE_TYPES = ("DECIMAL(19,4)", "INT", "BIGINT", "DATE", "VARCHAR(n)", "NVARCHAR(n)")


def optimove_type(text: str) -> str:
    """Normalise an attribute type or friendly alias to Optimove's spelling, or raise."""
    raw = text.strip()
    alias = TYPE_ALIASES.get(raw.lower())
    if alias:
        return alias
    upper = re.sub(r"\s+", "", raw.upper())
    if upper in {"DECIMAL(19,4)", "INT", "BIGINT", "DATE"}:
        return upper
    sized = _SIZED.match(raw)
    if sized:
        size = int(sized.group(2))
        if not 1 <= size <= 4000:
            raise ValueError(f"{sized.group(1).upper()} size must be 1..4000, not {size}")
        return f"{sized.group(1).upper()}({size})"
    raise ValueError(
        f"unknown attribute type {text!r}; use one of {', '.join(OPTIMOVE_TYPES)}"
        f" or an alias ({', '.join(sorted(TYPE_ALIASES))})"
    )


Format = Literal["raw", "currency", "number", "integer", "percent", "date", "datetime"]


class Mapping(Strict):
    """Where a value comes from (a dotted path into the event) and how it is formatted."""

    source: str = Field(min_length=1)
    format: Format = "raw"
    truncate: bool = Field(
        False, description=f"cut strings to Optimove's {limits.MAX_STRING} characters"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"source": value} if isinstance(value, str) else value


class Attribute(Strict):
    name: str
    type: str
    source: str | None = None
    events: list[EventType] = Field(default_factory=list)
    format: Format = "raw"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not ATTRIBUTE_NAME.match(value):
            raise ValueError(
                f"attribute name {value!r} must start with a letter and hold only letters"
                " and digits (Optimove's naming rule)"
            )
        return value

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        return optimove_type(value)


class EmdSettings(Strict):
    opt_in_key: str | None = Field(None, description="EMD key holding the email opt-in")
    opt_in_values: list[str] = Field(default_factory=lambda: ["Y", "YES", "TRUE", "1"])
    map: dict[str, str] = Field(default_factory=dict, description="EMD key -> attribute name")


CreateMethod = Literal["insert_or_update", "upsert", "none"]


class AttributesSection(Strict):
    realtime: list[Attribute] = Field(default_factory=list)
    batch: list[Attribute] = Field(default_factory=list)
    emd: EmdSettings = Field(default_factory=EmdSettings)
    limit: int = Field(
        limits.MAX_CUSTOM_ATTRIBUTES,
        ge=1,
        le=limits.MAX_CUSTOM_ATTRIBUTES,
        description="custom attributes allowed in all",
    )
    # A member who registered today is not yet an Optimove customer: an attribute update
    # for them is refused. The batch endpoint is the default: it is generally available,
    # packs 1,000 customers per call like attribute updates (a burst of registrations costs
    # no more of the quota), and takes the same attributes.
    create_method: CreateMethod = Field(
        "insert_or_update",
        description="how the events in create_on create the customer: InsertOrUpdateCustomers,"
        " UpsertCustomer (one per call, with a verdict), or none (attribute updates only)",
    )
    create_on: list[EventType] = Field(
        default_factory=lambda: [EventType.MEMBER_REGISTRATION],
        description="events whose attribute part creates the customer",
    )


# --- events -----------------------------------------------------------------------------

SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


class EventMapping(Strict):
    name: str
    enabled: bool = True
    context: dict[str, Mapping] = Field(default_factory=dict)


# --- templates --------------------------------------------------------------------------


class Template(Strict):
    kind: Literal["transactional", "triggered", "scheduled"]
    template_id: int | None = None
    file: Path | None = None
    event: EventType | None = None
    delivery: Literal["event", "api"] = "event"
    attribute_mappings: dict[str, Mapping] = Field(default_factory=dict)


# --- routing ----------------------------------------------------------------------------


class Target(StrEnum):
    """Where a routed message goes; a routing rule names ``email:<template>`` for mail.

    Declared in sending order: a member's event reaches Optimove before the attributes and
    mail that depend on it.
    """

    EVENTS = "events"
    ATTRIBUTES = "attributes"
    OPT_IN = "opt_in"
    PROMOTIONS = "promotions"
    EMAIL = "email"

    @classmethod
    def listing(cls) -> str:
        return ", ".join(t.value for t in cls)


class Condition(Strict):
    field: str
    op: Literal["eq", "ne", "in", "not_in", "exists", "missing", "gt", "gte", "lt", "lte"] = "eq"
    value: Any = None


class Rule(Strict):
    name: str | None = None
    types: list[EventType] = Field(min_length=1)
    where: list[Condition] = Field(default_factory=list)
    to: list[str] = Field(min_length=1)

    @field_validator("types", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class RoutingSection(Strict):
    rules: list[Rule] = Field(default_factory=list)
    unrouted: Literal["warn", "dead_letter"] = "warn"


# --- locale, dead letters, batch --------------------------------------------------------


class LocaleSection(Strict):
    default_locale: str = "en_US"
    default_currency: str = "USD"


class DeadLetterSection(Strict):
    dir: Path = Path("var/dead-letters")
    retention_days: int = Field(30, ge=1)
    archive: bool = Field(False, description="keep replayed letters under archive/")


DatasetName = Literal["members", "partner_links", "offers", "emd", "orders"]


class BatchSource(Strict):
    kind: Literal["duckdb", "files", "snowflake"] = "files"
    path: Path | None = None


# A Snowflake name as written in SQL: plain (case-insensitive) or double-quoted parts.
SNOWFLAKE_NAME = re.compile(
    r'^(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")(?:\.(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")){0,2}$'
)


def _snowflake_name(value: str | None) -> str | None:
    if value is not None and not SNOWFLAKE_NAME.match(value):
        raise ValueError(
            f"{value!r} is not a Snowflake name: letters, digits, _ and $, or a double-quoted"
            " name, dotted as DATABASE.SCHEMA.TABLE"
        )
    return value


class SnowflakeSettings(Strict):
    """The Snowflake connection of export-batch (source, target or both)."""

    model_config = ConfigDict(extra="forbid", defer_build=True, populate_by_name=True)

    account: str = Field(min_length=1, description="account identifier, e.g. myorg-myaccount")
    user: str = Field(min_length=1)
    authenticator: str | None = Field(
        None, description="snowflake (password), SNOWFLAKE_JWT (key pair), externalbrowser, ..."
    )
    password: SecretStr | None = Field(None, description="from the environment: ${SNOWFLAKE_...}")
    private_key_file: Path | None = Field(None, description="PEM key of key-pair authentication")
    private_key_passphrase: SecretStr | None = None
    role: str | None = None
    warehouse: str | None = None
    database: str = Field(min_length=1)
    schema_: str | None = Field(None, alias="schema", description="default schema of tables")
    state_schema: str = Field(
        "OPTISYNC_STATE", description="where row fingerprints and watermarks are kept"
    )
    login_timeout: int = Field(60, ge=1, le=3600)

    @field_validator("role", "warehouse", "database", "schema_", "state_schema")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return _snowflake_name(value)


class BatchOutput(Strict):
    kind: Literal["files", "snowflake"] = "files"
    dir: Path = Path("var/export")
    format: Literal["csv", "parquet"] = "csv"
    max_file_mb: int = Field(200, ge=1, le=limits.MAX_BATCH_FILE_MB)
    schema_: str | None = Field(
        None, alias="schema", description="snowflake: the schema shared with Optimove"
    )

    model_config = ConfigDict(extra="forbid", defer_build=True, populate_by_name=True)

    @field_validator("schema_")
    @classmethod
    def _schema_name(cls, value: str | None) -> str | None:
        return _snowflake_name(value)


class Dataset(Strict):
    enabled: bool = True
    table: str | None = None
    key: list[str] = Field(default_factory=list)
    emit_deletes: bool = False
    columns: dict[str, str] = Field(
        default_factory=dict, description="output column -> source column (besides attributes)"
    )
    updated_at: str | None = Field(None, description="source column feeding LastUpdated")
    currency: str | None = Field(None, description="source column holding the ISO currency")
    name_column: str = Field("key", description="emd only: the column holding the EMD key")
    value_column: str = Field("value", description="emd only: the column holding its value")
    incremental: Literal["fingerprint", "watermark"] = Field(
        "fingerprint",
        description="watermark: rows whose updated_at is past the last run's (snowflake only)",
    )

    @model_validator(mode="after")
    def _watermark_needs(self) -> "Dataset":
        if self.incremental == "watermark":
            if not self.updated_at:
                raise ValueError("incremental: watermark needs updated_at (the watermark column)")
            if self.emit_deletes:
                raise ValueError(
                    "incremental: watermark cannot see deleted rows; set emit_deletes: false"
                    " or use incremental: fingerprint"
                )
        return self

    @field_validator("columns")
    @classmethod
    def _column_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not ATTRIBUTE_NAME.match(name):
                raise ValueError(
                    f"output column {name!r} must start with a letter and hold only letters"
                    " and digits"
                )
        return value


class BatchSection(Strict):
    source: BatchSource = Field(default_factory=BatchSource)
    output: BatchOutput = Field(default_factory=BatchOutput)
    snowflake: SnowflakeSettings | None = None
    state_dir: Path = Path("var/batch-state")
    datasets: dict[DatasetName, Dataset] = Field(default_factory=dict)
    deadline_utc: Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] | None = None
    deadline_action: Literal["warn", "fail"] = "warn"
    threads: int | None = Field(None, ge=1, le=256, description="DuckDB threads (None: cores)")
    memory_limit: Annotated[str, Field(pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B$")] = "1GB"

    @model_validator(mode="after")
    def _snowflake_needs(self) -> "BatchSection":
        uses = self.source.kind == "snowflake" or self.output.kind == "snowflake"
        if uses and self.snowflake is None:
            raise ValueError("a snowflake source or output needs the batch.snowflake connection")
        if self.output.kind == "snowflake" and not self.output.schema_:
            raise ValueError("output kind snowflake needs output.schema (shared with Optimove)")
        return self


# --- serve ------------------------------------------------------------------------------


def split_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8787`` for IPv6) as host and port; ValueError otherwise."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8787")
    return host, int(port)


class ServeSettings(Strict):
    listen: str = Field("127.0.0.1:8787", description="HOST:PORT the connector listens on")
    tokens: SecretStr | None = Field(
        None, description="bearer tokens callers present, comma-separated (from the environment)"
    )
    tokens_file: Path | None = Field(None, description="a file of bearer tokens, one a line")
    max_body_mb: float = Field(8.0, gt=0, le=1024, description="largest request body accepted")
    spool_dir: Path = Path("var/spool")
    max_spool_mb: float = Field(
        512.0, gt=0, description="above this the connector answers 503 until it drains"
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_listen(value)
        return value

    def address(self) -> tuple[str, int]:
        return split_listen(self.listen)

    def token_list(self, resolve: Callable[[Path], Path] = lambda p: p) -> list[str]:
        """Every accepted token, from ``tokens`` and ``tokens_file``; blank entries dropped.

        Raises ConfigError (naming the key, never a value) for an unreadable file.
        """
        found: list[str] = []
        if self.tokens is not None:
            found += [t.strip() for t in self.tokens.get_secret_value().split(",")]
        if self.tokens_file is not None:
            try:
                text = resolve(self.tokens_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8"
                raise ConfigError(
                    f"serve.tokens_file: cannot read {self.tokens_file}: {reason}"
                ) from None
            found += [line.strip() for line in text.splitlines()]
        return [t for t in found if t]


class Config(Strict):
    optimove: OptimoveSettings = Field(default_factory=OptimoveSettings)
    attributes: AttributesSection = Field(default_factory=AttributesSection)
    events: dict[EventType, EventMapping] = Field(default_factory=dict)
    templates: dict[str, Template] = Field(default_factory=dict)
    routing: RoutingSection = Field(default_factory=RoutingSection)
    locale: LocaleSection = Field(default_factory=LocaleSection)
    dead_letter: DeadLetterSection = Field(default_factory=DeadLetterSection)
    batch: BatchSection = Field(default_factory=BatchSection)
    serve: ServeSettings = Field(default_factory=ServeSettings)

    # Where the file was read from: relative paths in it are relative to its folder.
    _base_dir: Path = PrivateAttr(default_factory=Path)
    # Secrets the file names as ``${VAR}`` whose variable was not set: dotted key -> VAR.
    _unset_secrets: dict[str, str] = PrivateAttr(default_factory=dict)

    def read_from(self, base_dir: Path, unset_secrets: dict[str, str] | None = None) -> None:
        """Record where the file was read from and which ``${VAR}`` secrets were unset."""
        self._base_dir = base_dir
        self._unset_secrets = dict(unset_secrets or {})

    def path(self, value: Path) -> Path:
        """A path from the file, resolved against the file's folder."""
        return value if value.is_absolute() else self._base_dir / value

    @property
    def mails_on_consent(self) -> bool:
        """Whether optisync itself mails a template only to opted-in members (triggered,
        sent through the API): the one kind of mail that needs each member's consent."""
        return any(t.kind == "triggered" and t.delivery == "api" for t in self.templates.values())

    @property
    def unset_secrets(self) -> dict[str, str]:
        """Secrets configured as ``${VAR}`` with VAR unset: dotted key -> variable name."""
        return dict(self._unset_secrets)

    def secret_configured(self, key: str) -> bool:
        """Whether the file sets the secret at dotted ``key`` at all (even to an unset VAR)."""
        key = SECRET_ALIASES.get(key, key)
        if key in self._unset_secrets:
            return True
        if key.startswith("optimove."):
            name = key.removeprefix("optimove.")
            return (
                getattr(self.optimove, name) is not None
                or getattr(self.optimove, f"{name}_file") is not None
            )
        if key == "serve.tokens":
            return self.serve.tokens is not None or self.serve.tokens_file is not None
        return self.batch.snowflake is not None and (
            getattr(self.batch.snowflake, key.removeprefix("batch.snowflake.")) is not None
        )

    def require_secret(self, key: str) -> str:
        """The value of the secret at dotted ``key`` (``api_key``, ``events_token`` or a full
        key such as ``batch.snowflake.password``), for a command that cannot run without it.

        Raises ConfigError naming the key (and the unset variable), never a value.
        """
        key = SECRET_ALIASES.get(key, key)
        if key not in SECRET_KEYS:
            raise ValueError(f"{key!r} is not a secret of the config")
        value: str | None = None
        if key in ("optimove.api_key", "optimove.events_token"):
            value = self.optimove.secret(key.removeprefix("optimove."))  # type: ignore[arg-type]
        elif key == "serve.tokens":
            value = self.serve.tokens.get_secret_value() if self.serve.tokens else None
        elif self.batch.snowflake is not None:
            held: SecretStr | None = getattr(
                self.batch.snowflake, key.removeprefix("batch.snowflake.")
            )
            value = held.get_secret_value() if held is not None else None
        if value:
            return value
        variable = self._unset_secrets.get(key)
        if variable:
            raise ConfigError(
                f"{key}: environment variable {variable} is not set, and this command needs it",
                hint=f"export {variable}=... before running optisync",
            )
        raise ConfigError(
            f"{key}: not configured, and this command needs it",
            hint=f"set {key.rpartition('.')[2]}: ${{VARIABLE}} in the config"
            + (f" or {key.rpartition('.')[2]}_file" if key.startswith("optimove.") else ""),
        )


# Every secret of the file, as dotted keys; the short names mean the Optimove ones.
SECRET_KEYS = (
    "optimove.api_key",
    "optimove.events_token",
    "batch.snowflake.password",
    "batch.snowflake.private_key_passphrase",
    # a secret so that OPTISYNC_SERVE__TOKENS is taken verbatim (never read as YAML)
    "serve.tokens",
)
SECRET_ALIASES = {"api_key": "optimove.api_key", "events_token": "optimove.events_token"}


SECTIONS = tuple(Config.model_fields)
