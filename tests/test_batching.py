"""The packing rules of real-time sends: which parts share a request, within Optimove's caps."""

from __future__ import annotations

from typing import Any

from optisync.optimove.limits import (
    MAX_CUSTOMERS_PER_CALL,
    MAX_PROMOTIONS_PER_CALL,
    MAX_RECIPIENTS_PER_CALL,
)
from optisync.optimove.outcome import Endpoint
from optisync.realtime.batching import Batcher, Pack
from optisync.realtime.deadletter import Kind
from optisync.realtime.plan import Part


def attributes(customer: str, value: str) -> Part:
    body = {
        "CustomerNewAttributesValuesList": [
            {"CustomerID": customer, "Attributes": [{"RealFieldName": "Tier", "Value": value}]}
        ]
    }
    return Part(Kind.ATTRIBUTES, Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, body, "attributes")


def mail(template: int, uid: str) -> Part:
    body = {
        "TemplateID": template,
        "UniqueMessageID": uid,
        "Recipients": [{"Email": f"{uid}@example.com", "Personalizations": []}],
    }
    return Part(Kind.EMAIL, Endpoint.SEND_TRANSACTIONAL_MAIL, body, f"email:t{template}")


def promotion(code: str) -> Part:
    body = [{"PromoCode": code, "PromotionName": code}]
    return Part(Kind.PROMOTIONS, Endpoint.ADD_PROMOTIONS, body, "promotions", promo_code=code)


def add_all(batcher: Batcher[int], parts: list[Part]) -> list[Pack[int]]:
    ready = [pack for n, part in enumerate(parts) for pack in batcher.add(n, part)]
    return ready + list(batcher.drain())


def customers(pack: Pack[Any]) -> list[str]:
    return [e["CustomerID"] for e in pack.seal()["CustomerNewAttributesValuesList"]]


def test_a_customer_seen_again_starts_the_next_attribute_call() -> None:
    packs = add_all(Batcher(1), [attributes("A", "1"), attributes("B", "1"), attributes("A", "2")])
    assert [customers(p) for p in packs] == [["A", "B"], ["A"]]


def test_attribute_calls_stop_at_the_customer_cap() -> None:
    n = MAX_CUSTOMERS_PER_CALL + 1
    packs = add_all(Batcher(1), [attributes(f"C{i}", "x") for i in range(n)])
    assert [len(customers(p)) for p in packs] == [MAX_CUSTOMERS_PER_CALL, 1]


def test_mail_packs_per_template_up_to_the_recipient_cap() -> None:
    parts = [mail(1, f"a{i}") for i in range(MAX_RECIPIENTS_PER_CALL + 1)] + [mail(2, "b")]
    packs = add_all(Batcher(1), parts)
    sizes = sorted((p.seal()["TemplateID"], len(p.seal()["Recipients"])) for p in packs)
    assert sizes == [(1, 1), (1, MAX_RECIPIENTS_PER_CALL), (2, 1)]
    # a packed call's id comes from its recipients' ids: the same batch, the same id
    full = next(p for p in packs if len(p.items) == MAX_RECIPIENTS_PER_CALL)
    assert full.sent["UniqueMessageID"].startswith(f"optisync-b{MAX_RECIPIENTS_PER_CALL}-")
    # a failed recipient's letter keeps the whole call, so a replay cannot mail twice
    assert full.letter_request(full.items[0][1]) is full.sent


def test_each_promotion_code_once_per_run_and_at_most_the_cap_per_call() -> None:
    batcher: Batcher[int] = Batcher(1)
    codes = [f"P{i}" for i in range(MAX_PROMOTIONS_PER_CALL + 1)]
    packs = add_all(batcher, [promotion(code) for code in codes])
    assert [len(p.seal()) for p in packs] == [MAX_PROMOTIONS_PER_CALL, 1]
    assert batcher.already_sent(promotion("P0"))
    assert not batcher.already_sent(promotion("P-new"))


def test_events_pack_only_when_the_config_asks() -> None:
    event = Part(Kind.EVENTS, Endpoint.EVENTS, {"event": "e"}, "events")
    assert [len(p.items) for p in add_all(Batcher(1), [event] * 3)] == [1, 1, 1]
    assert [len(p.items) for p in add_all(Batcher(2), [event] * 3)] == [2, 1]
    assert add_all(Batcher(2), [event] * 2)[0].seal() == [{"event": "e"}, {"event": "e"}]
