"""The input envelope (docs/envelope.md) and the typed ``data`` model of each loyalty event."""

import hashlib
import json
from datetime import UTC, date
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from functools import cache, cached_property, lru_cache
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    TypeAdapter,
    field_validator,
)


class EventType(StrEnum):
    MEMBER_REGISTRATION = "MEMBER_REGISTRATION"
    OPT_IN_EMAIL = "OPT_IN_EMAIL"
    REDEMPTION = "REDEMPTION"
    MEMBER_PROFILE_UPDATE = "MEMBER_PROFILE_UPDATE"
    MEMBER_TIER = "MEMBER_TIER"
    PARTNER_CARD_LINKED = "PARTNER_CARD_LINKED"
    PARTNER_CARD_UNLINKED = "PARTNER_CARD_UNLINKED"
    POINTS_TRANSFERRED = "POINTS_TRANSFERRED"
    PURCHASE = "PURCHASE"
    HOUSEHOLD_BALANCE_UPDATED = "HOUSEHOLD_BALANCE_UPDATED"
    GAMEPLAY_QUALIFIED = "GAMEPLAY_QUALIFIED"


class Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Money(Data):
    """An amount as a decimal string (never a float, so cents survive) and its ISO 4217 code."""

    amount: Annotated[str, Field(pattern=r"^-?\d{1,15}(\.\d{1,4})?$", examples=["25.00"])]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$", examples=["CAD"])]

    @property
    def value(self) -> Decimal:
        try:
            return Decimal(self.amount)
        except InvalidOperation:  # pragma: no cover - the pattern already rules this out
            raise ValueError(self.amount) from None


ShortText = Annotated[str, Field(max_length=1000)]
EmdValue = str | int | float | bool | None


class Offer(Data):
    """A personalized offer of the member's: it becomes an Optimove promotion."""

    promo_code: Annotated[str, Field(min_length=1, max_length=100)]
    name: ShortText
    ends_on: date | None = None
    value: Money | None = None


class MemberRegistrationData(Data):
    first_name: ShortText | None = None
    last_name: ShortText | None = None
    registration_date: date | None = None
    channel: Literal["web", "app", "pos", "call_center", "import"] | None = None
    card_type: Literal["digital", "physical"] | None = None
    tier: ShortText | None = None
    language: ShortText | None = None
    email_opt_in: bool | None = Field(None, description="consent given at registration")
    emd: dict[str, EmdValue] = Field(default_factory=dict)
    offers: list[Offer] = Field(default_factory=list)


class OptInEmailData(Data):
    opted_in: bool
    source: ShortText | None = None


class RedemptionData(Data):
    redemption_id: ShortText
    points: int = Field(ge=0)
    reward_name: ShortText
    reward_value: Money | None = None
    points_balance: int | None = None


class MemberProfileUpdateData(Data):
    first_name: ShortText | None = None
    last_name: ShortText | None = None
    phone: ShortText | None = None
    birth_date: date | None = None
    postal_code: ShortText | None = None
    language: ShortText | None = None
    emd: dict[str, EmdValue] = Field(
        default_factory=dict, description="Extended Member Data: dynamic key/value pairs"
    )
    offers: list[Offer] = Field(
        default_factory=list, description="personalized offers now assigned to the member"
    )


class MemberTierData(Data):
    tier: ShortText
    previous_tier: ShortText | None = None
    tier_expiry: date | None = None


class PartnerCardData(Data):
    """A partner card link: a unique link id and non-sensitive card facts, never the number."""

    link_id: ShortText
    partner_name: ShortText
    cardholder_type: Literal["primary", "secondary"]
    card_kind: Literal["payment", "non_payment"]
    link_status: Literal["linked", "unlinked"]


class PointsTransferredData(Data):
    transfer_id: ShortText
    points: int = Field(ge=0)
    direction: Literal["sent", "received"]
    counterparty_member_id: ShortText | None = None
    points_balance: int | None = None


class PurchaseData(Data):
    order_id: ShortText
    amount: Money
    points_earned: int = 0
    store_name: ShortText | None = None
    points_balance: int | None = None


class HouseholdBalanceUpdatedData(Data):
    household_id: ShortText
    points_balance: int
    balance_value: Money | None = None
    member_contribution: int | None = None


class GameplayQualifiedData(Data):
    game_id: ShortText
    game_name: ShortText
    plays: int = Field(1, ge=1)
    expires_at: AwareDatetime | None = None


DATA_MODELS: dict[EventType, type[Data]] = {
    EventType.MEMBER_REGISTRATION: MemberRegistrationData,
    EventType.OPT_IN_EMAIL: OptInEmailData,
    EventType.REDEMPTION: RedemptionData,
    EventType.MEMBER_PROFILE_UPDATE: MemberProfileUpdateData,
    EventType.MEMBER_TIER: MemberTierData,
    EventType.PARTNER_CARD_LINKED: PartnerCardData,
    EventType.PARTNER_CARD_UNLINKED: PartnerCardData,
    EventType.POINTS_TRANSFERRED: PointsTransferredData,
    EventType.PURCHASE: PurchaseData,
    EventType.HOUSEHOLD_BALANCE_UPDATED: HouseholdBalanceUpdatedData,
    EventType.GAMEPLAY_QUALIFIED: GameplayQualifiedData,
}

ENVELOPE_FIELDS = ("id", "type", "member_id", "occurred_at", "email", "locale")


class Envelope(BaseModel):
    """One loyalty event as producers send it; ``data`` is checked against the type's model."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    type: EventType
    member_id: Annotated[str, Field(min_length=1, max_length=200)]
    occurred_at: AwareDatetime
    email: Annotated[str, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")] | None = (
        None
    )
    locale: Annotated[str, Field(pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")] | None = None
    # SerializeAsAny: dumped as the type's own model, not as the empty base (a dead letter
    # keeps the whole envelope).
    data: SerializeAsAny[Data]

    @field_validator("data", mode="before")
    @classmethod
    def _typed_data(cls, value: Any, info: Any) -> Any:
        kind = info.data.get("type")
        if isinstance(value, Data):
            return value
        if kind is None:  # the type is wrong: that is the one error, not every data key
            return Data.model_construct()
        if not isinstance(value, dict):
            raise ValueError("data must be a JSON object")
        return DATA_MODELS[kind].model_validate(value)  # a StrEnum hashes as its value

    @cached_property
    def message_id(self) -> str:
        """The producer's id, else one derived from the content so the same message keeps it.

        Cached: delivery reads it for every part, and deriving it dumps and hashes ``data``.
        """
        if self.id:
            return self.id
        canonical = json.dumps(
            {
                "type": self.type.value,
                "member_id": self.member_id,
                "occurred_at": self.occurred_at.astimezone(UTC).isoformat(),
                "data": self.data.model_dump(mode="json"),
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return "sha256-" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


def parse_envelope(obj: Any) -> Envelope:
    """Validate one decoded JSON value as an envelope; raises pydantic.ValidationError."""
    return Envelope.model_validate(obj)


def parse_envelope_json(raw: bytes) -> Envelope:
    """Validate one JSON document straight from its bytes; raises pydantic.ValidationError.

    Laxer than ``decode`` + ``parse_envelope`` about NaN and Infinity, which it accepts:
    callers screen those out first.
    """
    return Envelope.model_validate_json(raw)


def envelope_schema() -> dict[str, Any]:
    """JSON Schema of the envelope: one ``oneOf`` branch per event type with its data model."""
    branches = []
    for kind in EventType:
        model = DATA_MODELS[kind]
        branches.append(
            {
                "title": kind.value,
                "properties": {
                    "type": {"const": kind.value},
                    "data": {"$ref": f"#/$defs/{model.__name__}"},
                },
            }
        )
    defs: dict[str, Any] = {}
    for model in {*DATA_MODELS.values()}:
        schema = TypeAdapter(model).json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[model.__name__] = schema
    base = Envelope.model_json_schema(ref_template="#/$defs/{model}")
    base.pop("$defs", None)
    base["properties"]["data"] = {"type": "object"}
    base["properties"]["type"] = {"enum": [k.value for k in EventType]}
    base["required"] = ["type", "member_id", "occurred_at", "data"]
    base["oneOf"] = branches
    base["$defs"] = defs
    base["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    base["title"] = "optisync event envelope"
    return base


@cache
def data_paths(kind: EventType) -> frozenset[str]:
    """Every dotted source path an event of this type can offer to a mapping.

    ``data.emd.<key>`` is open-ended (Extended Member Data is dynamic), so ``data.emd`` is
    listed and callers accept any key below it.
    """
    paths = {f for f in ENVELOPE_FIELDS}
    paths.add("data")

    def walk(prefix: str, model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            path = f"{prefix}.{name}"
            paths.add(path)
            if get_origin(field.annotation) is list:
                path = f"{path}.[]"  # an item: data.offers.0.name
                paths.add(path)
            for sub in _models_in(field.annotation):
                walk(path, sub)

    walk("data", DATA_MODELS[kind])
    return frozenset(paths)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) is dict:
        return []
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def has_path(kind: EventType, path: str) -> bool:
    """True when ``path`` (e.g. ``data.reward_value.amount``) exists on events of ``kind``."""
    paths = data_paths(kind)
    if path in paths:
        return True
    if any(part.isdigit() for part in path.split(".")):
        generic = ".".join("[]" if part.isdigit() else part for part in path.split("."))
        if generic in paths:
            return True
    return path.startswith("data.emd.") and "data.emd" in paths and len(path) > len("data.emd.")


@lru_cache(maxsize=4096)
def _steps(path: str) -> tuple[str, tuple[tuple[str, bool], ...]]:
    """A dotted path split once: its head and each later step with whether it is digits."""
    head, _, rest = path.partition(".")
    return head, tuple((part, part.isdigit()) for part in rest.split(".")) if rest else ()


def resolve(envelope: Envelope, path: str) -> Any:
    """The value at a dotted path of an envelope, or None where any step is absent."""
    head, steps = _steps(path)
    value: Any = envelope.message_id if head == "id" else getattr(envelope, head, None)
    for part, digits in steps:
        if isinstance(value, BaseModel):
            value = value.__dict__.get(part)
        elif isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and digits:
            value = value[int(part)] if int(part) < len(value) else None
        else:
            return None
    return value
