"""Which planned parts share one request, per endpoint, within Optimove's caps.

Every packing rule lives here: attribute updates pack up to the customer cap with each
customer once per call (a customer seen again starts the next call, keeping its updates in
order); mail packs by template up to the recipient cap; promotions pack up to their cap,
each code once per run; unsubscribers pack per brand up to the address cap, each address
once per call; events pack when ``events_per_request`` asks for it; anything else (a
re-subscription) goes alone. See docs/realtime.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from optisync.optimove.limits import (
    MAX_CUSTOMERS_PER_CALL,
    MAX_CUSTOMERS_PER_INSERT,
    MAX_PROMOTIONS_PER_CALL,
    MAX_RECIPIENTS_PER_CALL,
    MAX_UNSUBSCRIBERS_PER_CALL,
)
from optisync.optimove.outcome import Endpoint
from optisync.realtime.plan import Part, created_customer

M = TypeVar("M")  # whatever the caller tracks each part's message by

# parts per request where Optimove takes many (attributes count customers, not parts);
# events take ``optimove.events_per_request`` from the config
CAPS = {
    Endpoint.SEND_TRANSACTIONAL_MAIL: MAX_RECIPIENTS_PER_CALL,
    Endpoint.ADD_PROMOTIONS: MAX_PROMOTIONS_PER_CALL,
    Endpoint.UPDATE_CUSTOMER_ATTRIBUTES: MAX_CUSTOMERS_PER_CALL,
    Endpoint.INSERT_OR_UPDATE_CUSTOMERS: MAX_CUSTOMERS_PER_INSERT,
    Endpoint.ADD_UNSUBSCRIBERS: MAX_UNSUBSCRIBERS_PER_CALL,
}


@dataclass
class Pack(Generic[M]):
    """Parts of one or more messages sent as one request."""

    endpoint: Endpoint
    items: list[tuple[M, Part]] = field(default_factory=list)
    # who the call is for: customers (attribute updates) or addresses (unsubscribers)
    customers: set[str] = field(default_factory=set)
    # the body actually sent, set once: a failed part's letter may need it
    sent: Any = None

    def body(self) -> Any:
        bodies = [part.body for _, part in self.items]
        if self.endpoint is Endpoint.ADD_PROMOTIONS:
            return [promo for body in bodies for promo in body]
        if len(bodies) == 1:
            return bodies[0]
        if self.endpoint is Endpoint.UPDATE_CUSTOMER_ATTRIBUTES:
            return pack_attributes(bodies)
        if self.endpoint is Endpoint.INSERT_OR_UPDATE_CUSTOMERS:
            return {"Customers": [c for body in bodies for c in body["Customers"]]}
        if self.endpoint is Endpoint.SEND_TRANSACTIONAL_MAIL:
            return pack_transactional(bodies)
        if self.endpoint is Endpoint.ADD_UNSUBSCRIBERS:
            return pack_unsubscribers(bodies)
        return bodies  # events: an array

    def seal(self) -> Any:
        """The body to send, fixed from now on."""
        self.sent = self.body()
        return self.sent

    def letter_request(self, part: Part) -> Any:
        """What a failed part's dead letter keeps as its request.

        A bulk mail keeps the whole call: replaying that exact body (same UniqueMessageID)
        is what guarantees no second mail if the call did go through. Attribute updates,
        unsubscribers and events keep the member's own slice, which is safe to resend alone.
        """
        if self.endpoint is Endpoint.SEND_TRANSACTIONAL_MAIL and self.sent is not None:
            return self.sent
        return part.body


class Batcher(Generic[M]):
    """Collects parts into packs; ``add`` hands back the packs that are ready to send."""

    def __init__(self, events_per_request: int) -> None:
        self.events_per_request = events_per_request
        self.pending: dict[str, Pack[M]] = {}
        self.promo_codes: set[str] = set()

    def already_sent(self, part: Part) -> bool:
        """A promotion code this run already packed: Optimove needs each code once."""
        return part.endpoint is Endpoint.ADD_PROMOTIONS and part.promo_code in self.promo_codes

    def add(self, message: M, part: Part) -> list[Pack[M]]:
        """Place ``part``; returns the packs now ready, in the order they must go."""
        endpoint = part.endpoint
        if endpoint is Endpoint.UPDATE_CUSTOMER_ATTRIBUTES:
            return self._add_attributes(message, part)
        if endpoint is Endpoint.INSERT_OR_UPDATE_CUSTOMERS:
            customer = created_customer(part)
            assert customer is not None
            return self._add_per_customer("customers", customer, message, part)
        if endpoint is Endpoint.SEND_TRANSACTIONAL_MAIL:
            return self._add_capped(f"email:{part.body['TemplateID']}", message, part)
        if endpoint is Endpoint.ADD_PROMOTIONS:
            self.promo_codes.add(part.promo_code)
            return self._add_capped("promotions", message, part)
        if endpoint is Endpoint.EVENTS and self.events_per_request > 1:
            return self._add_capped("events", message, part)
        if endpoint is Endpoint.ADD_UNSUBSCRIBERS:
            return self._add_unsubscriber(message, part)
        alone = Pack(endpoint, [(message, part)])
        if endpoint is Endpoint.DELETE_UNSUBSCRIBERS:
            # a re-subscription leaves after the opt-out of the same address waiting in a
            # pack, or the pack would undo it
            key = f"unsubscribe:{part.body['BrandId']}"
            waiting = self.pending.get(key)
            if waiting is not None and part.body["EmailAddress"].lower() in waiting.customers:
                return [self.pending.pop(key), alone]
        return [alone]

    def drain(self) -> Iterator[Pack[M]]:
        """Every pack still collecting, emptied from the batcher as it is handed out."""
        for key in list(self.pending):
            yield self.pending.pop(key)

    def _cap(self, endpoint: Endpoint) -> int:
        return CAPS.get(endpoint, self.events_per_request)

    def _add_capped(self, key: str, message: M, part: Part) -> list[Pack[M]]:
        pack = self.pending.setdefault(key, Pack(part.endpoint))
        pack.items.append((message, part))
        if len(pack.items) >= self._cap(part.endpoint):
            return [self.pending.pop(key)]
        return []

    def _add_attributes(self, message: M, part: Part) -> list[Pack[M]]:
        customer = part.body["CustomerNewAttributesValuesList"][0]["CustomerID"]
        creating = self.pending.get("customers")
        ready: list[Pack[M]] = []
        if creating is not None and customer in creating.customers:
            # the customer is created before any update of theirs goes out
            ready.append(self.pending.pop("customers"))
        return ready + self._add_per_customer("attributes", customer, message, part)

    def _add_per_customer(self, key: str, customer: str, message: M, part: Part) -> list[Pack[M]]:
        ready: list[Pack[M]] = []
        cap = self._cap(part.endpoint)
        pack = self.pending.setdefault(key, Pack(part.endpoint))
        # a customer seen again goes in a later call, keeping its updates in order
        if customer in pack.customers or len(pack.customers) >= cap:
            ready.append(self.pending.pop(key))
            pack = self.pending.setdefault(key, Pack(part.endpoint))
        pack.customers.add(customer)
        pack.items.append((message, part))
        if len(pack.customers) >= cap:
            ready.append(self.pending.pop(key))
        return ready

    def _add_unsubscriber(self, message: M, part: Part) -> list[Pack[M]]:
        ready: list[Pack[M]] = []
        key, cap = f"unsubscribe:{part.body['BrandId']}", self._cap(part.endpoint)
        addresses = {address.lower() for address in part.body["EmailAddresses"]}
        pack = self.pending.setdefault(key, Pack(part.endpoint))
        if len(pack.customers | addresses) > cap:
            ready.append(self.pending.pop(key))
            pack = self.pending.setdefault(key, Pack(part.endpoint))
        pack.customers |= addresses  # the call's addresses, each once
        pack.items.append((message, part))
        if len(pack.customers) >= cap:
            ready.append(self.pending.pop(key))
        return ready


def pack_unsubscribers(bodies: list[Any]) -> Any:
    """One AddUnsubscribers body from the bodies of one brand, each address once (compared
    without case, as OptiMail's list does)."""
    addresses: dict[str, str] = {}
    for body in bodies:
        for address in body["EmailAddresses"]:
            addresses.setdefault(address.lower(), address)
    return {"BrandId": bodies[0]["BrandId"], "EmailAddresses": list(addresses.values())}


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
