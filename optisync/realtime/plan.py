"""What each routed message becomes in Optimove's terms: one ``Part`` per target.

A part's ``body`` is what would be sent for this message alone; it is also what a dead
letter keeps, so a replay re-sends exactly that. Parts of many messages are packed into one
request where the API allows it (``pack_*``), within Optimove's documented caps.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from optisync.config.models import MAX_CONTEXT_PARAMS, Config, Mapping, Template
from optisync.events import Envelope, EventType, resolve
from optisync.optimove.formats import timestamp_for_optimove
from optisync.optimove.outcome import Endpoint
from optisync.realtime.deadletter import Kind
from optisync.realtime.localize import MemberLocale, format_value

MAX_STRING = 255
MAX_ATTRIBUTES_PER_CUSTOMER = 10
MAX_CUSTOMERS_PER_CALL = 1000
OPT_IN_EVENT = "opt_in_email"


class InvalidMessage(ValueError):  # noqa: N818 - a verdict on one message, caught per message
    """The message cannot be sent as it is; it becomes an ``invalid`` dead letter."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.reason = reason
        self.field = field


@dataclass
class Part:
    kind: Kind
    endpoint: Endpoint
    body: Any
    target: str
    # what packs with what: parts with equal keys may share a request
    pack_key: str = ""
    # this part's place in its message's plan (target#n): its name in the input journal
    slot: str = ""


@dataclass
class Plan:
    """Everything one message will send, and what it noticed on the way."""

    parts: list[Part] = field(default_factory=list)
    emd_unmapped: list[str] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)


def field_of(data: BaseModel, name: str) -> Any:
    """A field of the event's data, or None if its type has no such field.

    Not getattr(): a missing attribute on a pydantic model takes a slow path through
    ``__getattr__`` and an exception, on every message.
    """
    return data.__dict__.get(name)


OptInLookup = Callable[[str], bool | None]


def plan_message(
    envelope: Envelope,
    targets: tuple[str, ...],
    config: Config,
    only: set[str] | None = None,
    opt_in: OptInLookup | None = None,
) -> Plan:
    """Build the parts for the routed targets; raises ``InvalidMessage`` if one can't be built.

    ``opt_in`` tells a member's known consent, for triggered templates optisync sends itself.
    """
    plan = Plan()
    locale = MemberLocale(envelope.locale, config.locale.default_locale)
    currency = config.locale.default_currency

    def wanted(kind: str) -> bool:
        return only is None or kind in only

    # A triggered template in event mode is sent by Optimove's real-time campaign on the
    # reported event, so its tags travel as extra parameters of that event.
    triggered = [
        name
        for target in targets
        if target.startswith("email:")
        and (name := target.partition(":")[2]) in config.templates
        and config.templates[name].kind == "triggered"
        and config.templates[name].delivery == "event"
    ]
    if (wanted("events") and "events" in targets) or (wanted("email") and triggered):
        extra = [config.templates[name] for name in triggered]
        plan.parts.append(_event_part(envelope, config, locale, currency, extra))
    for target in targets:
        kind, _, name = target.partition(":")
        if not wanted(kind):
            continue
        if kind == "attributes":
            plan.parts.extend(_attributes_parts(envelope, config, locale, currency, plan))
        elif kind == "opt_in":
            plan.parts.extend(_opt_in_parts(envelope, config, targets))
        elif kind == "email":
            part = _email_part(envelope, config, name, locale, currency, opt_in, plan)
            if part:
                plan.parts.append(part)
        elif kind == "promotions":
            plan.parts.extend(_promotion_parts(envelope))
    return plan


def _context_value(envelope: Envelope, name: str, mapping: Mapping, locale: Any, cur: str) -> Any:
    value = resolve(envelope, mapping.source)
    try:
        value = format_value(value, mapping.format, locale, cur)
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise InvalidMessage(f"cannot format as {mapping.format}: {exc}", mapping.source) from None
    if isinstance(value, BaseModel | dict | list):
        raise InvalidMessage(f"parameter {name} must be a flat value", mapping.source)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidMessage(f"parameter {name} is {value}", mapping.source)
    if isinstance(value, str) and len(value) > MAX_STRING:
        if not mapping.truncate:
            raise InvalidMessage(
                f"{len(value)} characters; Optimove takes at most {MAX_STRING}"
                " (set truncate: true on this mapping to cut it)",
                mapping.source,
            )
        value = value[:MAX_STRING]
    return value


def _event_part(
    envelope: Envelope, config: Config, locale: Any, currency: str, templates: list[Template]
) -> Part:
    mapping = config.events.get(envelope.type)
    if mapping is None:
        raise InvalidMessage(f"no events.{envelope.type.value} mapping in the config", "type")
    sources = dict(mapping.context)
    for template in templates:
        for tag, source in template.attribute_mappings.items():
            sources.setdefault(event_parameter(tag), source)
    if len(sources) > MAX_CONTEXT_PARAMS:
        raise InvalidMessage(
            f"{len(sources)} context parameters with the triggered templates' tags;"
            f" Optimove takes at most {MAX_CONTEXT_PARAMS}"
        )
    context = {}
    for name, source in sources.items():
        value = _context_value(envelope, name, source, locale, currency)
        if value is not None:
            context[name] = value
    return Part(
        Kind.EVENTS, Endpoint.EVENTS, _event_body(envelope, config, mapping.name, context), "events"
    )


def _event_body(envelope: Envelope, config: Config, name: str, context: dict[str, Any]) -> Any:
    return {
        "tenant": config.optimove.tenant_id,
        "event": name,
        "customer": envelope.member_id,
        "timestamp": timestamp_for_optimove(envelope.occurred_at),
        "context": context,
    }


def _attributes_parts(
    envelope: Envelope, config: Config, locale: Any, currency: str, plan: Plan
) -> list[Part]:
    values: dict[str, Any] = {}
    for attr in config.attributes.realtime:
        if envelope.type in attr.events and attr.source:
            value = resolve(envelope, attr.source)
            if value is not None:
                values[attr.name] = _attribute_value(value, attr.format, locale, currency)
    emd = field_of(envelope.data, "emd")
    if isinstance(emd, dict):
        realtime = {a.name for a in config.attributes.realtime}
        for key, value in emd.items():
            name = config.attributes.emd.map.get(key)
            if name is None:
                if key != config.attributes.emd.opt_in_key:
                    plan.emd_unmapped.append(key)
            elif name in realtime and value is not None:
                values[name] = value
    items = [{"RealFieldName": k, "Value": v} for k, v in values.items()]
    # Optimove takes at most 10 attributes per customer in one call
    return [
        Part(
            Kind.ATTRIBUTES,
            Endpoint.UPDATE_CUSTOMER_ATTRIBUTES,
            {
                "CustomerNewAttributesValuesList": [
                    {
                        "CustomerID": envelope.member_id,
                        "Attributes": items[i : i + MAX_ATTRIBUTES_PER_CUSTOMER],
                    }
                ]
            },
            "attributes",
        )
        for i in range(0, len(items), MAX_ATTRIBUTES_PER_CUSTOMER)
    ]


def _attribute_value(value: Any, fmt: Any, locale: Any, currency: str) -> Any:
    try:
        out = format_value(value, fmt, locale, currency)
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise InvalidMessage(f"cannot format as {fmt}: {exc}") from None
    if isinstance(out, bool):
        return 1 if out else 0
    if isinstance(out, float) and not math.isfinite(out):
        raise InvalidMessage(f"attribute value is {out}")
    return out


def opt_in_state(envelope: Envelope, config: Config) -> bool | None:
    """The email consent this message states, if it states one."""
    data = envelope.data
    if envelope.type == EventType.OPT_IN_EMAIL:
        return bool(field_of(data, "opted_in"))
    key = config.attributes.emd.opt_in_key
    emd = field_of(data, "emd")
    if key and isinstance(emd, dict) and emd.get(key) is not None:
        allowed = {v.upper() for v in config.attributes.emd.opt_in_values}
        return str(emd[key]).upper() in allowed
    if envelope.type == EventType.MEMBER_REGISTRATION:
        consent = field_of(data, "email_opt_in")
        return None if consent is None else bool(consent)
    return None


def _opt_in_parts(envelope: Envelope, config: Config, targets: tuple[str, ...]) -> list[Part]:
    state = opt_in_state(envelope, config)
    if state is None:
        return []
    settings = config.optimove.opt_in
    parts = []
    if settings.method in {"event", "both"} and not (
        envelope.type == EventType.OPT_IN_EMAIL and "events" in targets
    ):  # an OPT_IN_EMAIL routed to events already carries the consent itself
        mapping = config.events.get(EventType.OPT_IN_EMAIL)
        name = mapping.name if mapping else OPT_IN_EVENT
        body = _event_body(envelope, config, name, {"opted_in": state})
        parts.append(Part(Kind.OPT_IN, Endpoint.EVENTS, body, "opt_in"))
    if settings.method in {"unsubscribe_list", "both"}:
        if not envelope.email:
            raise InvalidMessage("the unsubscribe list needs the member's email", "email")
        if state:
            body = {"BrandId": settings.brand_id, "EmailAddress": envelope.email}
            parts.append(Part(Kind.OPT_IN, Endpoint.DELETE_UNSUBSCRIBERS, body, "opt_in"))
        else:
            body = {"BrandId": settings.brand_id, "EmailAddresses": [envelope.email]}
            parts.append(Part(Kind.OPT_IN, Endpoint.ADD_UNSUBSCRIBERS, body, "opt_in"))
    return parts


def unique_message_id(message_id: str, template: Template, name: str) -> str:
    """The same message and template always give the same id, so Optimove answers a resend
    with 409 instead of mailing the member twice."""
    digest = hashlib.sha256(f"{message_id}\x1f{name}\x1f{template.template_id}".encode())
    return f"optisync-{digest.hexdigest()[:40]}"


def event_parameter(tag: str) -> str:
    """The event parameter behind an ``[%EVENT:TAG%]`` tag (parameters are snake_case)."""
    return tag.lower()


def _email_part(
    envelope: Envelope,
    config: Config,
    name: str,
    locale: Any,
    currency: str,
    opt_in: OptInLookup | None,
    plan: Plan,
) -> Part | None:
    template = config.templates.get(name)
    if template is None:
        raise InvalidMessage(f"routing names template '{name}', which the config lacks")
    if template.kind == "scheduled" or (
        template.kind == "triggered" and template.delivery == "event"
    ):
        return None  # Optimove's own campaigns send these, from attributes or the event
    if template.kind == "triggered":
        # marketing mail sent by optisync itself: only to members who opted in
        known = opt_in(envelope.member_id) if opt_in else None
        if known is None:
            unknown = config.optimove.opt_in.unknown_state
            if unknown != "opted_in":
                plan.suppressed.append(f"email:{name}: opt-in state unknown ({unknown})")
                return None
        elif not known:
            plan.suppressed.append(f"email:{name}: member has opted out")
            return None
    if not envelope.email:
        raise InvalidMessage(f"template {name} needs the member's email", "email")
    personalizations = []
    for tag, mapping in template.attribute_mappings.items():
        value = _context_value(envelope, tag, mapping, locale, currency)
        personalizations.append({"Tag": tag, "Value": "" if value is None else str(value)})
    body = {
        "TemplateID": template.template_id,
        "UniqueMessageID": unique_message_id(envelope.message_id, template, name),
        "Recipients": [{"Email": envelope.email, "Personalizations": personalizations}],
    }
    return Part(Kind.EMAIL, Endpoint.SEND_TRANSACTIONAL_MAIL, body, f"email:{name}")


def _promotion_parts(envelope: Envelope) -> list[Part]:
    offers = field_of(envelope.data, "offers") or []
    return [
        Part(
            Kind.PROMOTIONS,
            Endpoint.ADD_PROMOTIONS,
            [{"PromoCode": offer.promo_code, "PromotionName": offer.name}],
            "promotions",
            pack_key=offer.promo_code,
        )
        for offer in offers
    ]


def pack_transactional(bodies: list[Any]) -> Any:
    """One SendTransactionalMail body for many recipients of one template.

    Its UniqueMessageID is derived from the recipients' own ids, so the same batch always
    carries the same id and a resend of it is answered 409, never mailed twice.
    """
    if len(bodies) == 1:
        return bodies[0]
    uids = sorted(body["UniqueMessageID"] for body in bodies)
    digest = hashlib.sha256("\x1f".join(uids).encode()).hexdigest()[:40]
    return {
        "TemplateID": bodies[0]["TemplateID"],
        "UniqueMessageID": f"optisync-b{len(bodies)}-{digest}",
        "Recipients": [r for body in bodies for r in body["Recipients"]],
    }


def pack_attributes(bodies: list[Any]) -> Any:
    """One UpdateCustomerAttributes body from single-message bodies (same customer merged)."""
    merged: dict[str, dict[str, Any]] = {}
    for body in bodies:
        for entry in body["CustomerNewAttributesValuesList"]:
            attrs = merged.setdefault(entry["CustomerID"], {})
            for item in entry["Attributes"]:
                attrs[item["RealFieldName"]] = item["Value"]
    return {
        "CustomerNewAttributesValuesList": [
            {
                "CustomerID": customer,
                "Attributes": [{"RealFieldName": k, "Value": v} for k, v in attrs.items()],
            }
            for customer, attrs in merged.items()
        ]
    }
