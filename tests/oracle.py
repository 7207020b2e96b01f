"""What must reach Optimove, derived from the input alone, and what the sandbox saw.

The reliability suites never ask optisync what it planned: ``EXPECTED`` is written by hand
from the example config (its routing, events, templates and realtime attributes) with the
opt-in sent both ways (``opt_in.method: both``), and the calls the sandbox recorded or a
dead letter kept are read back into the same terms. Every input message of these suites
has its own member id, email and promotion codes, so a recorded call names its message.

A call is ``(message id, call)`` where call is ``event:<name>``, ``attributes``, ``customers``,
``mail:<TemplateID>``, ``unsubscribe``, ``resubscribe`` or ``promotion:<code>``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The settings that make the example config's opt-in reach both the event and the list,
# so the suites exercise unsubscribes as well as opt-in events.
BOTH_OPT_IN = {"OPTIMOVE__OPT_IN__METHOD": "both", "OPTIMOVE__OPT_IN__BRAND_ID": "7"}

# event type -> the calls one message of that type must make under examples/optisync.yaml
# (routing rules, events.*.name, templates.*.template_id). "optin" stands for the consent
# the message states: the opt_in_email event and the unsubscribe list (resubscribe when
# opted in, unsubscribe when opted out); "promotions" for one call per offer. The welcome
# mail is absent on purpose: its delivery is "event", so Optimove's campaign sends it.
EXPECTED: dict[str, tuple[str, ...]] = {
    # a registration creates the customer (attributes.create_method: insert_or_update)
    "MEMBER_REGISTRATION": ("event:member_registration", "customers", "optin"),
    # routed to events, its own event carries the consent; only the list call is added
    "OPT_IN_EMAIL": ("event:opt_in_email", "optin-list"),
    "REDEMPTION": ("event:redemption", "attributes", "mail:1001"),
    "MEMBER_PROFILE_UPDATE": ("event:member_profile_update", "attributes", "optin", "promotions"),
    "MEMBER_TIER": ("event:member_tier", "attributes", "mail:1007"),
    "PARTNER_CARD_LINKED": ("attributes", "mail:1003"),
    "PARTNER_CARD_UNLINKED": ("attributes", "mail:1004"),
    "POINTS_TRANSFERRED": ("mail:1005",),
    "PURCHASE": ("mail:1002",),
    "HOUSEHOLD_BALANCE_UPDATED": ("attributes", "mail:1006"),
    "GAMEPLAY_QUALIFIED": ("mail:1008",),
}

# the dead letter kind a failed call is kept under
LETTER_KIND = {
    "event": "events",
    "attributes": "attributes",
    "customers": "attributes",
    "mail": "email",
    "unsubscribe": "opt_in",
    "resubscribe": "opt_in",
    "promotion": "promotions",
}


def consent(message: Mapping[str, Any]) -> bool | None:
    """The email consent a message states, read from the input as the contract words it."""
    data = message.get("data") or {}
    if message["type"] == "OPT_IN_EMAIL":
        return bool(data.get("opted_in"))
    emd = data.get("emd") or {}
    if emd.get("email_opt_in") is not None:
        return str(emd["email_opt_in"]).upper() in {"Y", "YES", "TRUE", "1"}
    if message["type"] == "MEMBER_REGISTRATION" and data.get("email_opt_in") is not None:
        return bool(data["email_opt_in"])
    return None


def expected_calls(
    message: Mapping[str, Any], table: Mapping[str, tuple[str, ...]] = EXPECTED
) -> list[str]:
    """The calls one input message must make, from ``table`` and its own fields."""
    calls: list[str] = []
    stated = consent(message)
    for entry in table[message["type"]]:
        if entry in {"optin", "optin-list"}:
            if stated is None:
                continue
            if entry == "optin":
                calls.append("event:opt_in_email")
            calls.append("resubscribe" if stated else "unsubscribe")
        elif entry == "promotions":
            calls += [f"promotion:{o['promo_code']}" for o in message["data"].get("offers", [])]
        else:
            calls.append(entry)
    return calls


def expected_table(
    messages: Iterable[Mapping[str, Any]], table: Mapping[str, tuple[str, ...]] = EXPECTED
) -> Counter[tuple[str, str]]:
    return Counter((m["id"], call) for m in messages for call in expected_calls(m, table))


class Index:
    """Who each recorded call is for: member id, email and promotion code -> message id."""

    def __init__(self, messages: Iterable[Mapping[str, Any]]) -> None:
        self.by_member: dict[str, str] = {}
        self.by_email: dict[str, str] = {}
        self.by_code: dict[str, str] = {}
        for m in messages:
            for table, value in ((self.by_member, m["member_id"]), (self.by_email, m.get("email"))):
                if value is None:
                    continue
                assert value not in table, f"{value} is in two messages; the oracle needs one"
                table[value] = m["id"]
            for offer in (m.get("data") or {}).get("offers", []):
                self.by_code[offer["promo_code"]] = m["id"]

    def calls(self, path: str, body: Any) -> Iterator[tuple[str, str]]:
        """The (message id, call) pairs one request body (or one letter's part) holds."""
        where = path.lower()
        if where.endswith(("reportevent", "events")):
            for event in body if isinstance(body, list) else [body]:
                yield self.by_member[event["customer"]], f"event:{event['event']}"
        elif where.endswith("updatecustomerattributes"):
            for customer in body["CustomerNewAttributesValuesList"]:
                yield self.by_member[customer["CustomerID"]], "attributes"
        elif where.endswith("insertorupdatecustomers"):
            for customer in body["Customers"]:
                yield self.by_member[customer["CustomerId"]], "customers"
        elif where.endswith("upsertcustomer"):
            yield self.by_member[body["CustomerId"]], "customers"
        elif where.endswith("sendtransactionalmail"):
            for recipient in body["Recipients"]:
                yield self.by_email[recipient["Email"]], f"mail:{body['TemplateID']}"
        elif where.endswith("addunsubscribers"):
            for email in body["EmailAddresses"]:
                yield self.by_email[email], "unsubscribe"
        elif where.endswith("deleteunsubscribers"):
            yield self.by_email[body["EmailAddress"]], "resubscribe"
        elif where.endswith("addpromotions"):
            for promo in body:
                yield self.by_code[promo["PromoCode"]], f"promotion:{promo['PromoCode']}"
        else:
            raise AssertionError(f"a call the oracle does not know: {path}")


@dataclass
class Arrived:
    """What the sandbox accepted, as (message id, call) counts, and its mails' ids."""

    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    unique_ids: Counter[str] = field(default_factory=Counter)
    # the calls of each accepted request, in the order the sandbox accepted them
    order: list[list[tuple[str, str]]] = field(default_factory=list)

    def duplicated(self, prefix: str) -> int:
        """Calls of this kind (``event:``, ``attributes``, ``mail:`` ...) that arrived more
        than once for one message: the extra copies."""
        counts = [n for (_, call), n in self.calls.items() if call.startswith(prefix)]
        return sum(n - 1 for n in counts if n > 1)

    def duplicated_mail(self) -> int:
        """Mails beyond one per message and template, and UniqueMessageIDs seen twice."""
        return self.duplicated("mail:") + sum(n - 1 for n in self.unique_ids.values() if n > 1)


def arrived(index: Index, records: Iterable[Mapping[str, Any]]) -> Arrived:
    """Read the sandbox's records (``Sandbox.received()``, ``GET /_sandbox/received`` or
    its ``--record`` JSONL lines) into calls per message."""
    out = Arrived()
    for rec in records:
        out.calls.update(index.calls(rec["path"], rec["body"]))
        out.order.append(list(index.calls(rec["path"], rec["body"])))
        if rec["kind"] == "transactional":
            out.unique_ids[rec["body"]["UniqueMessageID"]] += 1
    return out


def letters(folder: Path) -> list[dict[str, Any]]:
    """The dead letters visible in ``folder/new`` as plain JSON (not through optisync)."""
    new = folder / "new"
    if not new.exists():
        return []
    return [
        json.loads(p.read_bytes())
        for p in sorted(new.iterdir())
        if p.name.endswith(".json") and not p.name.startswith(".")
    ]


def lettered(index: Index, found: Iterable[Mapping[str, Any]]) -> Counter[tuple[str, str]]:
    """The calls dead letters hold, each checked against its letter's message id and kind."""
    calls: Counter[tuple[str, str]] = Counter()
    for letter in found:
        assert letter["endpoint"] and letter["request"] is not None, letter
        for message_id, call in index.calls(letter["endpoint"], letter["request"]):
            assert message_id == letter["message_id"], (message_id, letter["message_id"])
            kind = LETTER_KIND[call.split(":")[0]]
            if call == "event:opt_in_email" and letter["kind"] == "opt_in":
                kind = "opt_in"
            assert letter["kind"] == kind, f"{call} kept as a {letter['kind']} letter"
            calls[(message_id, call)] += 1
    return calls


def missing(
    expected: Counter[tuple[str, str]],
    got: Arrived,
    kept: Counter[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """Expected calls that neither arrived nor wait in a dead letter."""
    kept = kept or Counter()
    return sorted(k for k in expected if got.calls[k] + kept[k] < 1)


def unexpected(expected: Counter[tuple[str, str]], got: Arrived) -> list[tuple[str, str]]:
    """Calls that arrived although the input asks for none such."""
    return sorted(k for k in got.calls if k not in expected)
