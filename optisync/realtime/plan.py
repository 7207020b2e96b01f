"""What each routed message becomes in Optimove's terms: one ``Part`` per target.

A part's ``body`` is what would be sent for this message alone; it is also what a dead
letter keeps, so a replay re-sends exactly that (docs/dead-letters.md). Which parts of many
messages share one request is for ``batching`` to decide.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from optisync.config.models import Config, Format, Mapping, Template
from optisync.events import Envelope, EventType, resolve
from optisync.optimove.formats import timestamp_for_optimove
from optisync.optimove.limits import (
    MAX_ATTRIBUTES_PER_CUSTOMER,
    MAX_CONTEXT_PARAMS,
    MAX_STRING,
)
from optisync.optimove.outcome import Endpoint
from optisync.realtime.deadletter import Kind
from optisync.realtime.inputs import Record
from optisync.realtime.localize import MemberLocale, format_value
from optisync.realtime.routing import Route

if TYPE_CHECKING:
    from optisync.realtime.optin import OptInRegister

OPT_IN_EVENT = "opt_in_email"
#: Members whose consent a run keeps in memory once the register also records it.
RECENT_CONSENT = 100_000


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
    # the promotion code, for promotions: Optimove needs each code once per run
    promo_code: str = ""
    # this part's place in its message's plan (target#n), set by ``plan_message``: its name
    # in the input journal, so a rerun after a crash skips exactly the parts handled
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


class Consent:
    """Each member's email consent as the run learns it, in input order.

    Triggered mail optisync sends itself goes only to members who opted in, so a consent
    stated by one message must gate the mail of the same and every later message. A dry run
    must not write the register, yet its later lines still see earlier consent.
    """

    def __init__(self, register: OptInRegister | None = None, *, dry_run: bool = False) -> None:
        self.register = register
        self.dry_run = dry_run
        self.seen: OrderedDict[str, bool] = OrderedDict()
        # Where the register remembers every statement, the run keeps only the latest
        # members' (an endless feed must not grow the process); older ones are looked up
        # there, as those of earlier runs are. Without it, nothing else remembers them.
        self.bound = RECENT_CONSENT if register is not None and not dry_run else None
        # Statements the register did not take (it holds one that occurred later): the run
        # answers them in input order, as ever, so they are never forgotten. Rare: input
        # out of time order.
        self.pinned: dict[str, bool] = {}

    def note(self, envelope: Envelope, stated: bool) -> None:
        member = envelope.member_id
        self.seen[member] = stated
        if self.register is not None and not self.dry_run:
            if self.register.record(member, stated, envelope.occurred_at):
                self.pinned.pop(member, None)
            else:
                self.pinned[member] = stated
        if self.bound is not None:
            self.seen.move_to_end(member)
            if len(self.seen) > self.bound:
                self.seen.popitem(last=False)

    def known(self, member_id: str, email: str | None = None) -> bool | None:
        """What this run or the register knows; the register also knows the addresses
        unsubscribed in Optimove (``optin sync``)."""
        if member_id in self.seen:
            return self.seen[member_id]
        if member_id in self.pinned:
            return self.pinned[member_id]
        return self.register.get(member_id, email) if self.register is not None else None


def plan_message(
    envelope: Envelope,
    targets: tuple[str, ...],
    config: Config,
    only: set[str] | None = None,
    consent: Consent | None = None,
) -> Plan:
    """Build the parts for the routed targets; raises ``InvalidMessage`` if one can't be built.

    The consent this message states is noted in ``consent`` before any part is built, so it
    is remembered even when the message turns out invalid; ``consent`` also answers for
    members whose consent earlier messages or runs stated.
    """
    return Planner(config, only, consent).plan(envelope, targets)


class Planner:
    """``plan_message`` for a whole run: what depends on the config alone (which attributes
    an event type feeds, the EMD map, which targets of a route are wanted) is worked out
    once, not for every message."""

    def __init__(
        self, config: Config, only: set[str] | None = None, consent: Consent | None = None
    ) -> None:
        self.config = config
        self.only = only
        self.consent = consent
        emd = config.attributes.emd
        self.emd_map = emd.map
        self.opt_in_key = emd.opt_in_key
        self.opt_in_allowed = frozenset(v.upper() for v in emd.opt_in_values)
        self.realtime = frozenset(a.name for a in config.attributes.realtime)
        self.default_locale = config.locale.default_locale
        self.currency = config.locale.default_currency
        method = config.attributes.create_method
        self.create = CREATE_ENDPOINTS.get(method)
        self.create_on = frozenset(config.attributes.create_on) if self.create else frozenset()
        self._attributes: dict[EventType, list[tuple[str, str, Format]]] = {}
        self._routes: dict[tuple[str, ...], _RoutePlan] = {}

    def _route(self, targets: tuple[str, ...]) -> _RoutePlan:
        found = self._routes.get(targets)
        if found is None:
            only = self.only
            triggered = _sent_by_event(targets, self.config)
            event = ((only is None or "events" in only) and "events" in targets) or (
                (only is None or "email" in only) and bool(triggered)
            )
            wanted = []
            for target in targets:
                kind, _, name = target.partition(":")
                if only is None or kind in only:
                    wanted.append((kind, name))
            found = self._routes[targets] = _RoutePlan(triggered, event, wanted)
        return found

    def _attribute_sources(self, kind: EventType) -> list[tuple[str, str, Format]]:
        found = self._attributes.get(kind)
        if found is None:
            found = self._attributes[kind] = [
                (attr.name, source, attr.format)
                for attr in self.config.attributes.realtime
                if kind in attr.events and (source := attr.source)
            ]
        return found

    def plan(self, envelope: Envelope, targets: tuple[str, ...]) -> Plan:
        config, consent = self.config, self.consent
        plan = Plan()
        stated = self.opt_in_state(envelope)
        if stated is not None and consent is not None:
            consent.note(envelope, stated)
        locale = MemberLocale(envelope.locale, self.default_locale)
        currency = self.currency
        route = self._route(targets)
        if route.event:
            plan.parts.append(_event_part(envelope, config, locale, currency, route.triggered))
        for kind, name in route.wanted:
            if kind == "attributes":
                plan.parts.extend(self._attributes_parts(envelope, locale, plan))
            elif kind == "opt_in":
                plan.parts.extend(_opt_in_parts(envelope, config, targets, stated))
            elif kind == "email":
                known = stated
                if known is None and consent is not None:
                    known = consent.known(envelope.member_id, envelope.email)
                part = _email_part(envelope, config, name, locale, currency, known, plan)
                if part:
                    plan.parts.append(part)
            elif kind == "promotions":
                plan.parts.extend(_promotion_parts(envelope))
        for index, part in enumerate(plan.parts):
            part.slot = f"{part.target}#{index}"
        return plan

    def opt_in_state(self, envelope: Envelope) -> bool | None:
        """The email consent this message states, if it states one."""
        data = envelope.data
        if envelope.type == EventType.OPT_IN_EMAIL:
            return bool(field_of(data, "opted_in"))
        key = self.opt_in_key
        emd = field_of(data, "emd")
        if key and isinstance(emd, dict) and emd.get(key) is not None:
            return str(emd[key]).upper() in self.opt_in_allowed
        if envelope.type == EventType.MEMBER_REGISTRATION:
            consent = field_of(data, "email_opt_in")
            return None if consent is None else bool(consent)
        return None

    def _attributes_parts(self, envelope: Envelope, locale: Any, plan: Plan) -> list[Part]:
        values: dict[str, Any] = {}
        currency = self.currency
        for name, source, fmt in self._attribute_sources(envelope.type):
            value = resolve(envelope, source)
            if value is None:
                continue
            if fmt == "raw" and (type(value) is str or type(value) is int):
                values[name] = value  # what formatting would give back, without the calls
            else:
                values[name] = _attribute_value(value, fmt, locale, currency)
        emd = field_of(envelope.data, "emd")
        if isinstance(emd, dict):
            realtime, emd_map, opt_in_key = self.realtime, self.emd_map, self.opt_in_key
            for key, value in emd.items():
                mapped = emd_map.get(key)
                if mapped is None:
                    if key != opt_in_key:
                        plan.emd_unmapped.append(key)
                elif mapped in realtime and value is not None:
                    values[mapped] = value
        items = [{"RealFieldName": k, "Value": v} for k, v in values.items()]
        # more attributes than Optimove takes for one customer in one call: several parts
        chunks = [
            items[i : i + MAX_ATTRIBUTES_PER_CUSTOMER]
            for i in range(0, len(items), MAX_ATTRIBUTES_PER_CUSTOMER)
        ]
        parts = []
        if self.create is not None and envelope.type in self.create_on:
            # the member may not exist in Optimove yet: the first part creates them, with
            # attributes or without; the rest update the customer it created
            parts.append(create_part(self.create, envelope.member_id, chunks[0] if chunks else []))
            chunks = chunks[1:]
        parts.extend(
            Part(
                Kind.ATTRIBUTES,
                Endpoint.UPDATE_CUSTOMER_ATTRIBUTES,
                {
                    "CustomerNewAttributesValuesList": [
                        {"CustomerID": envelope.member_id, "Attributes": chunk}
                    ]
                },
                "attributes",
            )
            for chunk in chunks
        )
        return parts


CREATE_ENDPOINTS = {
    "insert_or_update": Endpoint.INSERT_OR_UPDATE_CUSTOMERS,
    "upsert": Endpoint.UPSERT_CUSTOMER,
}


def create_part(endpoint: Endpoint, member_id: str, items: list[dict[str, Any]]) -> Part:
    """The part that creates (or updates) one customer with these attributes."""
    customer = {"CustomerId": member_id, "Attributes": items}
    if endpoint is Endpoint.INSERT_OR_UPDATE_CUSTOMERS:
        return Part(Kind.ATTRIBUTES, endpoint, {"Customers": [customer]}, "attributes")
    return Part(Kind.ATTRIBUTES, endpoint, customer, "attributes")


def created_customer(part: Part) -> str | None:
    """The customer a creation part creates, or None for any other part."""
    if part.endpoint is Endpoint.INSERT_OR_UPDATE_CUSTOMERS:
        return str(part.body["Customers"][0]["CustomerId"])
    if part.endpoint is Endpoint.UPSERT_CUSTOMER:
        return str(part.body["CustomerId"])
    return None


@dataclass(frozen=True)
class _RoutePlan:
    """A route's triggered templates, whether its event goes out, and its wanted targets."""

    triggered: list[Template]
    event: bool
    wanted: list[tuple[str, str]]


def _sent_by_event(targets: tuple[str, ...], config: Config) -> list[Template]:
    """Routed triggered templates in event mode: Optimove's real-time campaign sends them on
    the reported event, so their tags travel as extra parameters of that event."""
    found = []
    for target in targets:
        kind, _, name = target.partition(":")
        template = config.templates.get(name) if kind == "email" else None
        if template is not None and template.kind == "triggered" and template.delivery == "event":
            found.append(template)
    return found


def describe(record: Record, routed: Route, parts: list[Part]) -> dict[str, Any]:
    """One message's plan as a dry run shows it."""
    assert record.envelope is not None
    return {
        "line": record.line,
        "id": record.envelope.message_id,
        "type": record.envelope.type.value,
        "rules": list(routed.rules),
        "targets": list(routed.targets),
        "requests": [{"endpoint": p.endpoint.value, "body": p.body} for p in parts],
    }


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
    return Planner(config).opt_in_state(envelope)


def _opt_in_parts(
    envelope: Envelope, config: Config, targets: tuple[str, ...], state: bool | None
) -> list[Part]:
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
    known: bool | None,
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
            promo_code=offer.promo_code,
        )
        for offer in offers
    ]
