"""Which planned parts share one request, per endpoint, within Optimove's caps.

Every packing rule lives here: attribute updates pack up to the customer cap with each
customer once per call (a customer seen again starts the next call, keeping its updates in
order); mail packs by template up to the recipient cap; promotions pack up to their cap,
each code once per run; unsubscribers pack per brand up to the address cap, each address
once per call; events pack when ``events_per_request`` asks for it; anything else (a
re-subscription) goes alone. A partial pack goes once its oldest part has waited the
linger, or once the input has been idle for a quarter of it (``Batcher.due``). A bulk mail
an earlier run recorded is formed again from its recipients still unsettled, under its
recorded id, and waits for all of them, idle input or not (``Batcher.add_recorded``).
Packs of the ordered family keep each customer's calls in input order, a customer's
creation first (``Outbox``).
See docs/realtime.md.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
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
from optisync.realtime.plan import Part

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

# The ordered family: calls that change a customer, and where a part names its customer.
# A customer is in at most one call of a pack, and a later call holding a customer waits
# until every earlier call holding it is settled, so a member's later update never
# overtakes an earlier one. One line adds an endpoint to the family.
ORDERED: dict[Endpoint, Callable[[Any], str]] = {
    Endpoint.UPDATE_CUSTOMER_ATTRIBUTES: lambda body: str(
        body["CustomerNewAttributesValuesList"][0]["CustomerID"]
    ),
    Endpoint.INSERT_OR_UPDATE_CUSTOMERS: lambda body: str(body["Customers"][0]["CustomerId"]),
    Endpoint.UPSERT_CUSTOMER: lambda body: str(body["CustomerId"]),
}
# The input is idle when nothing arrived for this share of the linger: a lone message or
# the tail of a burst then goes at once, while a feed with messages a few tens of
# milliseconds apart still fills packs (and spares the quota).
IDLE_SHARE = 0.25
# A recorded mail waits this long for its recipients: a restart feeds them all at once,
# unless one no longer comes as mail (the config changed meanwhile). Idle input does not
# cut it: once its id goes with fewer recipients, the others cannot go under it. Nor does
# time spent with input waiting on the run (``Batcher.hold_recorded``).
RECORDED_WAIT = 30.0
# ...however busy the run, it goes with what it has after this long (its messages stay
# safe either way; this only keeps a changed config from holding them forever)
RECORDED_MAX = 300.0


@dataclass
class Pack(Generic[M]):
    """Parts of one or more messages sent as one request."""

    endpoint: Endpoint
    items: list[tuple[M, Part]] = field(default_factory=list)
    # who the call is for: customers (attribute updates) or addresses (unsubscribers)
    customers: set[str] = field(default_factory=set)
    opened: float = 0.0  # when its oldest part arrived (the batcher's clock)
    # a bulk mail formed again from an earlier run's record goes under that run's id
    uid: str | None = None
    expected: int = 0  # ...once it holds this many parts
    first: bool = False  # the first call formed again under ``uid``: its 409 means it went
    formed: float = 0.0  # when it was formed again (``opened`` restarts while input waits)
    # the body actually sent, set once: a failed part's letter may need it
    sent: Any = None

    def body(self) -> Any:
        bodies = [part.body for _, part in self.items]
        if self.uid is not None:
            return pack_transactional(bodies, self.uid)
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
    """Collects parts into packs; ``add`` hands back the packs that are full, ``due`` those
    that have waited long enough."""

    def __init__(
        self,
        events_per_request: int,
        *,
        linger: float | None = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``linger`` None: packs go only when full or drained, whatever the time."""
        self.events_per_request = events_per_request
        self.linger = linger
        self.idle = linger * IDLE_SHARE if linger is not None else 0.0
        self.clock = clock
        self.pending: dict[str, Pack[M]] = {}
        self.promo_codes: set[str] = set()
        self.forming = 0  # recorded mails collecting

    def already_sent(self, part: Part) -> bool:
        """A promotion code this run already packed: Optimove needs each code once."""
        return part.endpoint is Endpoint.ADD_PROMOTIONS and part.promo_code in self.promo_codes

    def add(self, message: M, part: Part) -> list[Pack[M]]:
        """Place ``part``; returns the packs now ready, in the order they must go."""
        endpoint = part.endpoint
        if endpoint is Endpoint.UPDATE_CUSTOMER_ATTRIBUTES:
            customer = part.body["CustomerNewAttributesValuesList"][0]["CustomerID"]
            creating = self.pending.get("customers")
            if creating is not None and customer in creating.customers:
                # the customer is created before any update of theirs goes out
                return [
                    self.pending.pop("customers"),
                    *self._add_capped("attributes", message, part),
                ]
            return self._add_capped("attributes", message, part)
        if endpoint is Endpoint.INSERT_OR_UPDATE_CUSTOMERS:
            return self._add_capped("customers", message, part)
        if endpoint is Endpoint.SEND_TRANSACTIONAL_MAIL:
            return self._add_capped(f"email:{part.body['TemplateID']}", message, part)
        if endpoint is Endpoint.ADD_PROMOTIONS:
            self.promo_codes.add(part.promo_code)
            return self._add_capped("promotions", message, part)
        if endpoint is Endpoint.EVENTS and self.events_per_request > 1:
            return self._add_capped("events", message, part)
        if endpoint is Endpoint.ADD_UNSUBSCRIBERS:
            return self._add_unsubscriber(message, part)
        alone = self._new(endpoint, message, part)
        if endpoint is Endpoint.DELETE_UNSUBSCRIBERS:
            # a re-subscription leaves after the opt-out of the same address waiting in a
            # pack, or the pack would undo it
            key = f"unsubscribe:{part.body['BrandId']}"
            waiting = self.pending.get(key)
            if waiting is not None and part.body["EmailAddress"].lower() in waiting.customers:
                return [self.pending.pop(key), alone]
        return [alone]

    def add_recorded(self, uid: str, expected: int, message: M, part: Part) -> list[Pack[M]]:
        """Place a mail ``part`` an earlier run recorded in the call ``uid``, which still
        has ``expected`` parts unsettled: that call is formed again and goes once it holds
        them all, or once it waited ``RECORDED_WAIT`` (one no longer comes as mail), or at
        the end of the input. Whether a part still belongs under ``uid`` is the
        journal's to say (``Journal.recorded_pack``)."""
        key = f"recorded:{uid}"
        pack = self.pending.get(key)
        if pack is None:
            now = self.clock()
            pack = self.pending[key] = Pack(part.endpoint, opened=now, uid=uid, formed=now)
            pack.expected = expected
            self.forming += 1
        pack.items.append((message, part))
        if len(pack.items) >= pack.expected:
            return [self._pop(key)]
        return []

    def drain(self) -> Iterator[Pack[M]]:
        """Every pack still collecting, emptied from the batcher as it is handed out."""
        for key in list(self.pending):
            yield self._pop(key)

    def _pop(self, key: str) -> Pack[M]:
        pack = self.pending.pop(key)
        if pack.uid is not None:
            self.forming -= 1
        return pack

    def hold_recorded(self) -> None:
        """Input is waiting on the run (sends full, records read ahead): the recipients of
        a recorded mail may be among it, so its wait starts again (up to ``RECORDED_MAX``)."""
        now = self.clock()
        for pack in self.pending.values():
            if pack.uid is not None and now - pack.formed < RECORDED_MAX:
                pack.opened = now

    def deadline(self, last_input: float) -> float | None:
        """When the next pack falls due (see ``due``), or None when none is collecting."""
        if not self.pending or self.linger is None:
            return None
        due = [self._waits(pack) + pack.opened for pack in self.pending.values()]
        if any(pack.uid is None for pack in self.pending.values()):
            due.append(last_input + self.idle)
        return min(due)

    def due(self, now: float, last_input: float) -> list[Pack[M]]:
        """The packs to send now though not full: every pack whose oldest part has waited
        the linger, or all of them once nothing arrived for ``idle`` (``last_input``). A
        recorded mail waits for its recipients (``RECORDED_WAIT``), idle or not."""
        if self.linger is None:
            return []
        idle = now - last_input >= self.idle
        keys = [
            k
            for k, pack in self.pending.items()
            if (idle and pack.uid is None) or now - pack.opened >= self._waits(pack)
        ]
        return [self._pop(key) for key in keys]

    def _waits(self, pack: Pack[M]) -> float:
        """How long ``pack`` may collect while input goes on."""
        assert self.linger is not None
        return self.linger if pack.uid is None else max(RECORDED_WAIT, self.linger)

    def _cap(self, endpoint: Endpoint) -> int:
        return CAPS.get(endpoint, self.events_per_request)

    def _new(self, endpoint: Endpoint, message: M, part: Part) -> Pack[M]:
        pack: Pack[M] = Pack(endpoint, opened=self.clock())
        pack.items.append((message, part))
        customer = ORDERED.get(endpoint)
        if customer is not None:
            pack.customers.add(customer(part.body))
        return pack

    def _add_capped(self, key: str, message: M, part: Part) -> list[Pack[M]]:
        ready: list[Pack[M]] = []
        pack = self.pending.get(key)
        customer = ORDERED.get(part.endpoint)
        who = customer(part.body) if customer is not None else None
        if pack is not None and who is not None and who in pack.customers:
            # a customer seen again goes in a later call, keeping its updates in order
            ready.append(self.pending.pop(key))
            pack = None
        if pack is None:
            self.pending[key] = self._new(part.endpoint, message, part)
            pack = self.pending[key]
        else:
            pack.items.append((message, part))
            if who is not None:
                pack.customers.add(who)
        # each customer is in a pack once, so items count customers where that is the cap
        if len(pack.items) >= self._cap(part.endpoint):
            ready.append(self.pending.pop(key))
        return ready

    def _add_unsubscriber(self, message: M, part: Part) -> list[Pack[M]]:
        ready: list[Pack[M]] = []
        key, cap = f"unsubscribe:{part.body['BrandId']}", self._cap(part.endpoint)
        addresses = {address.lower() for address in part.body["EmailAddresses"]}
        pack = self.pending.setdefault(key, Pack(part.endpoint, opened=self.clock()))
        if len(pack.customers | addresses) > cap:
            ready.append(self.pending.pop(key))
            pack = self.pending.setdefault(key, Pack(part.endpoint, opened=self.clock()))
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


#: Slots of the in-flight bound a send takes, unless ``send_slots`` says otherwise.
FULL_SEND = 8


def send_slots(endpoint: Endpoint) -> int:
    """The share of the in-flight bound a send to ``endpoint`` takes.

    An events call is small, goes to a host of its own and waits on no quota of Optimove's
    API, and by default carries one event: what bounds it is the thread switch each answer
    costs, so many may be in flight at once, and the run plans ahead while they go. Any
    other call may carry a thousand customers or wait seconds for a quota: two per worker.
    """
    return 1 if endpoint is Endpoint.EVENTS else FULL_SEND


class Outbox(Generic[M]):
    """Packs ready to go, in the order they became ready.

    ``take`` hands out the first pack that may go now: a pack of the ordered family waits
    while a pack holding one of its customers is in flight (until ``settled``) or is
    itself waiting ahead of it; other packs never wait for it.
    """

    def __init__(self) -> None:
        self.queue: deque[Pack[M]] = deque()
        self.busy: Counter[str] = Counter()  # customers of ordered packs in flight
        self.parts = 0
        self.slots = 0  # of the in-flight bound, that the waiting packs will take

    def __len__(self) -> int:
        return len(self.queue)

    def put(self, pack: Pack[M]) -> None:
        self.queue.append(pack)
        self.parts += len(pack.items)
        self.slots += send_slots(pack.endpoint)

    def take(self) -> Pack[M] | None:
        blocked: set[str] = set()
        for n, pack in enumerate(self.queue):
            if pack.endpoint in ORDERED:
                if any(c in self.busy or c in blocked for c in pack.customers):
                    blocked |= pack.customers
                    continue
                self.busy.update(pack.customers)
            del self.queue[n]
            self.parts -= len(pack.items)
            self.slots -= send_slots(pack.endpoint)
            return pack
        return None

    def settled(self, pack: Pack[M]) -> None:
        """``pack`` (handed out by ``take``) is settled: its customers may go again."""
        self.busy.subtract(pack.customers)
        for customer in pack.customers:
            if self.busy[customer] <= 0:
                del self.busy[customer]

    def drain(self) -> Iterator[Pack[M]]:
        while self.queue:
            pack = self.queue.popleft()
            self.parts -= len(pack.items)
            self.slots -= send_slots(pack.endpoint)
            yield pack


def pack_transactional(bodies: list[Any], uid: str | None = None) -> Any:
    """One SendTransactionalMail body for many recipients of one template.

    Its UniqueMessageID (unless ``uid`` gives the one an earlier run recorded) is derived
    from the recipients' own ids, so the same batch always carries the same id and a resend
    of it is answered 409, never mailed twice.
    """
    if uid is None:
        if len(bodies) == 1:
            return bodies[0]
        uids = sorted(body["UniqueMessageID"] for body in bodies)
        digest = hashlib.sha256("\x1f".join(uids).encode()).hexdigest()[:40]
        uid = f"optisync-b{len(bodies)}-{digest}"
    return {
        "TemplateID": bodies[0]["TemplateID"],
        "UniqueMessageID": uid,
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
