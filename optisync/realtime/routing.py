"""Routing: the config's rules decide where each message goes (docs/realtime.md).

Every rule whose types and conditions match contributes its targets; a message no rule
matches is reported as unrouted, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel

from optisync.config.models import Condition, Rule, Target
from optisync.events import Envelope, EventType, resolve


@dataclass(frozen=True)
class Route:
    targets: tuple[str, ...]
    rules: tuple[str, ...]

    @property
    def unrouted(self) -> bool:
        return not self.targets


_RANK = {str(target): rank for rank, target in enumerate(Target)}


def _rank(target: str) -> int:
    kind = target.partition(":")[0]
    rank = _RANK.get(kind)
    return rank if rank is not None else list(Target).index(Target(kind))


class Router:
    """The rules compiled once for a run: an event type whose rules have no conditions
    always routes the same way, so its route is worked out on first use and kept."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.fixed: dict[EventType, Route] = {}
        self.conditional = {t for rule in rules if rule.where for t in rule.types}

    def route(self, envelope: Envelope) -> Route:
        kind = envelope.type
        found = self.fixed.get(kind)
        if found is not None:
            return found
        routed = route(envelope, self.rules)
        if kind not in self.conditional:
            self.fixed[kind] = routed
        return routed


def route(envelope: Envelope, rules: list[Rule]) -> Route:
    """The targets of every matching rule, in a stable order, and which rules matched."""
    targets: list[str] = []
    matched: list[str] = []
    for index, rule in enumerate(rules):
        if envelope.type not in rule.types:
            continue
        if all(matches(envelope, cond) for cond in rule.where):
            matched.append(rule.name or f"rules[{index}]")
            targets.extend(t for t in rule.to if t not in targets)
    targets.sort(key=_rank)
    return Route(tuple(targets), tuple(matched))


def matches(envelope: Envelope, cond: Condition) -> bool:
    value = resolve(envelope, cond.field)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    op = cond.op
    if op == "exists":
        return value is not None
    if op == "missing":
        return value is None
    if op in {"in", "not_in"}:
        options = cond.value if isinstance(cond.value, list) else [cond.value]
        found = any(_equal(value, option) for option in options)
        return found if op == "in" else not found
    if op == "eq":
        return _equal(value, cond.value)
    if op == "ne":
        return not _equal(value, cond.value)
    left, right = _decimal(value), _decimal(cond.value)
    if left is None or right is None:
        return False
    return {
        "gt": left > right,
        "gte": left >= right,
        "lt": left < right,
        "lte": left <= right,
    }[op]


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _equal(left: Any, right: Any) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right or left == right
    a, b = _decimal(left), _decimal(right)
    if a is not None and b is not None:
        return a == b
    return str(left) == str(right) if left is not None and right is not None else left is right
