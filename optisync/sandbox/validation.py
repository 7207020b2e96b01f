"""Pure payload checks of the sandbox, one function per endpoint, as Optimove documents them.

Each ``check_*`` function returns ``None`` when the payload is acceptable, else a plain,
human-readable reason. They never raise on bad input and never look at headers.
"""

from __future__ import annotations

import math
import re
from datetime import datetime

SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*\Z", re.ASCII)
EVENT_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.\d{1,6})? UTC\Z", re.ASCII
)

MAX_EVENTS_PER_REQUEST = 50
MAX_EVENT_PARAMS = 50
MAX_STRING_PARAM = 255
MAX_CUSTOMERS_PER_UPDATE = 1_000
MAX_ATTRIBUTES_PER_CUSTOMER = 10
MAX_RECIPIENTS = 200
MAX_PERSONALIZATION_BYTES = 50_000
MAX_UNIQUE_MESSAGE_ID = 254
MAX_PROMOTIONS = 100
MAX_UNSUBSCRIBERS = 200

EVENT_FIELDS = frozenset(
    {"tenant", "event", "customer", "visitor", "timestamp", "context", "category", "origin"}
)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nonempty_str(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""


def check_event(event: object, tenant_id: int, enforce_limits: bool) -> str | None:
    """Validate one server-side event envelope (Optimove's event gateway rules)."""
    if not isinstance(event, dict):
        return "an event must be a JSON object"
    unknown = sorted(set(event) - EVENT_FIELDS)
    if unknown:
        return f"unknown field(s): {', '.join(map(str, unknown))}"
    tenant = event.get("tenant")
    if not _is_int(tenant) or tenant != tenant_id:
        return "tenantId is missing or invalid"
    name = event.get("event")
    if not isinstance(name, str) or not SNAKE_CASE.match(name):
        return "event name is missing or not lowercase snake_case"
    customer, visitor = event.get("customer"), event.get("visitor")
    if customer is None and visitor is None:
        return "either customer or visitor is required"
    for field in ("customer", "visitor"):
        if field in event and not _nonempty_str(event[field]):
            return f"{field} must be a non-empty string"
    problem = _check_timestamp(event.get("timestamp"))
    if problem:
        return problem
    context = event.get("context", {})
    if not isinstance(context, dict):
        return "context must be a flat JSON object"
    return _check_context(context, enforce_limits)


def _check_timestamp(value: object) -> str | None:
    expected = "timestamp must be 'YYYY-MM-DD HH:MM:SS[.ffffff] UTC'"
    if not isinstance(value, str):
        return expected
    match = EVENT_TIMESTAMP.match(value)
    if not match:
        return expected
    try:
        year, month, day, hour, minute, second = map(int, match.groups())
        datetime(year, month, day, hour, minute, second)  # only checks the calendar
    except ValueError:
        return f"timestamp is not a real date/time: {value!r}"
    return None


def _check_context(context: dict[str, object], enforce_limits: bool) -> str | None:
    if enforce_limits and len(context) > MAX_EVENT_PARAMS:
        return f"too many parameters: {len(context)} (max {MAX_EVENT_PARAMS})"
    for key, value in context.items():
        if not SNAKE_CASE.match(key):
            return f"parameter name {key!r} is not lowercase snake_case"
        if isinstance(value, str):
            if enforce_limits and len(value) > MAX_STRING_PARAM:
                return (
                    f"parameter {key!r} is too long: {len(value)} characters "
                    f"(max {MAX_STRING_PARAM})"
                )
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int | float):
            if not math.isfinite(value):
                return f"parameter {key!r} is not a finite number"
        else:
            return f"parameter {key!r} must be a string, number or boolean, not {_kind(value)}"
    return None


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def check_events_body(body: object, tenant_id: int, enforce_limits: bool) -> str | None:
    """Validate a reportEvent body: one event or an array of them; all or nothing."""
    if isinstance(body, list):
        if not body:
            return "the event array is empty"
        if enforce_limits and len(body) > MAX_EVENTS_PER_REQUEST:
            return f"too many events: {len(body)} (max {MAX_EVENTS_PER_REQUEST})"
        for index, event in enumerate(body):
            problem = check_event(event, tenant_id, enforce_limits)
            if problem:
                return f"event[{index}]: {problem}"
        return None
    return check_event(body, tenant_id, enforce_limits)


def check_update_attributes(body: object, enforce_limits: bool) -> str | None:
    """Validate an UpdateCustomerAttributes body."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    customers = body.get("CustomerNewAttributesValuesList")
    if not isinstance(customers, list) or not customers:
        return "CustomerNewAttributesValuesList must be a non-empty array"
    if enforce_limits and len(customers) > MAX_CUSTOMERS_PER_UPDATE:
        return f"too many customers: {len(customers)} (max {MAX_CUSTOMERS_PER_UPDATE})"
    callback = body.get("CallbackURL")
    if callback is not None and not isinstance(callback, str):
        return "CallbackURL must be a string"
    for index, customer in enumerate(customers):
        where = f"CustomerNewAttributesValuesList[{index}]"
        if not isinstance(customer, dict):
            return f"{where} must be an object"
        customer_id = customer.get("CustomerID")
        if not (_nonempty_str(customer_id) or _is_int(customer_id)):
            return f"{where}.CustomerID is missing"
        attributes = customer.get("Attributes")
        if not isinstance(attributes, list) or not attributes:
            return f"{where}.Attributes must be a non-empty array"
        if enforce_limits and len(attributes) > MAX_ATTRIBUTES_PER_CUSTOMER:
            return (
                f"{where}: too many attributes: {len(attributes)} "
                f"(max {MAX_ATTRIBUTES_PER_CUSTOMER})"
            )
        for attribute in attributes:
            if not isinstance(attribute, dict) or not _nonempty_str(attribute.get("RealFieldName")):
                return f"{where}: every attribute needs a RealFieldName"
            if "Value" not in attribute:
                return f"{where}: attribute {attribute['RealFieldName']!r} has no Value"
            if isinstance(attribute["Value"], dict | list):
                return f"{where}: attribute {attribute['RealFieldName']!r} must be a scalar"
    return None


def check_transactional(body: object, enforce_limits: bool) -> str | None:
    """Validate a SendTransactionalMail body."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not _is_int(body.get("TemplateID")):
        return "TemplateID must be an integer"
    recipients = body.get("Recipients")
    if not isinstance(recipients, list) or not recipients:
        return "Recipients must be a non-empty array"
    if enforce_limits and len(recipients) > MAX_RECIPIENTS:
        return f"too many recipients: {len(recipients)} (max {MAX_RECIPIENTS})"
    unique = body.get("UniqueMessageID")
    if unique is not None and (
        not _nonempty_str(unique) or len(str(unique)) > MAX_UNIQUE_MESSAGE_ID
    ):
        return f"UniqueMessageID must be a non-empty string of at most {MAX_UNIQUE_MESSAGE_ID}"
    schedule = body.get("ScheduleTime")
    if schedule is not None and not isinstance(schedule, str):
        return "ScheduleTime must be a string"
    for index, recipient in enumerate(recipients):
        where = f"Recipients[{index}]"
        if not isinstance(recipient, dict) or not _nonempty_str(recipient.get("Email")):
            return f"{where}.Email is missing"
        personalizations = recipient.get("Personalizations", [])
        if not isinstance(personalizations, list):
            return f"{where}.Personalizations must be an array"
        size = 0
        for item in personalizations:
            if not isinstance(item, dict) or not _nonempty_str(item.get("Tag")):
                return f"{where}: every personalization needs a Tag"
            value = item.get("Value")
            if isinstance(value, dict | list):
                return f"{where}: personalization {item['Tag']!r} must be a scalar"
            size += len(str(item["Tag"]).encode()) + len(str(value).encode())
        if enforce_limits and size > MAX_PERSONALIZATION_BYTES:
            return f"{where}: personalizations exceed {MAX_PERSONALIZATION_BYTES} bytes"
    return None


def missing_tags(body: dict[str, object], required: frozenset[str]) -> list[str]:
    """One line per recipient lacking a template tag, naming the tags (case-insensitive)."""
    wanted = {tag.upper(): tag for tag in required}
    problems: list[str] = []
    recipients = body.get("Recipients")
    assert isinstance(recipients, list)
    for recipient in recipients:
        given = {
            str(item.get("Tag", "")).upper()
            for item in recipient.get("Personalizations", [])
            if isinstance(item, dict)
        }
        lacking = sorted(wanted[tag] for tag in wanted.keys() - given)
        if lacking:
            problems.append(f"{recipient['Email']}: {', '.join(lacking)}")
    return problems


def check_promotions(body: object, enforce_limits: bool, *, need_name: bool) -> str | None:
    """Validate an AddPromotions (``need_name``) or DeletePromotions body."""
    if not isinstance(body, list) or not body:
        return "body must be a non-empty JSON array"
    if enforce_limits and len(body) > MAX_PROMOTIONS:
        return f"too many promotions: {len(body)} (max {MAX_PROMOTIONS})"
    for index, promo in enumerate(body):
        if not isinstance(promo, dict):
            return f"[{index}] must be an object"
        code = promo.get("PromoCode")
        if not (_nonempty_str(code) or _is_int(code)):
            return f"[{index}].PromoCode is missing"
        if need_name and not isinstance(promo.get("PromotionName"), str):
            return f"[{index}].PromotionName must be a string"
    return None


def is_email(value: object) -> bool:
    if not isinstance(value, str):
        return False
    local, _, domain = value.partition("@")
    return bool(local) and "." in domain and " " not in value


def check_add_unsubscribers(body: object, enforce_limits: bool) -> str | None:
    """Validate an AddUnsubscribers body; bad addresses answer ``Invalid email``."""
    if not isinstance(body, dict) or not _is_int(body.get("BrandId")):
        return "BrandId must be an integer"
    emails = body.get("EmailAddresses")
    if not isinstance(emails, list) or not emails:
        return "EmailAddresses must be a non-empty array"
    if enforce_limits and len(emails) > MAX_UNSUBSCRIBERS:
        return f"too many email addresses: {len(emails)} (max {MAX_UNSUBSCRIBERS})"
    if not all(is_email(email) for email in emails):
        return "Invalid email"
    return None


def check_delete_unsubscriber(body: object) -> str | None:
    if not isinstance(body, dict) or not _is_int(body.get("BrandId")):
        return "BrandId must be an integer"
    if not is_email(body.get("EmailAddress")):
        return "Invalid email"
    return None


MAX_CUSTOMERS_PER_INSERT = 1_000


def _check_customer(customer: object, where: str, id_key: str) -> str | None:
    if not isinstance(customer, dict):
        return f"{where} must be an object"
    if not _nonempty_str(customer.get(id_key)):
        return f"{where}.{id_key} must be a non-empty string"
    attributes = customer.get("Attributes", [])
    if attributes is None:
        return None
    if not isinstance(attributes, list):
        return f"{where}.Attributes must be an array"
    for attribute in attributes:
        if not isinstance(attribute, dict) or not _nonempty_str(attribute.get("RealFieldName")):
            return f"{where}: every attribute needs a RealFieldName"
        if isinstance(attribute.get("Value"), dict | list):
            return f"{where}: attribute {attribute['RealFieldName']!r} must be a scalar"
    return None


def check_upsert_customer(body: object) -> str | None:
    """Validate an UpsertCustomer body: one customer, its attributes, a callback URL."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    callback = body.get("CallbackUrl")
    if callback is not None and not isinstance(callback, str):
        return "CallbackUrl must be a string"
    return _check_customer(body, "body", "CustomerId")


def check_insert_or_update(body: object, enforce_limits: bool) -> str | None:
    """Validate an InsertOrUpdateCustomers body: 1 to 1,000 customers."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    customers = body.get("Customers")
    if not isinstance(customers, list) or not customers:
        return "Customers must be a non-empty array"
    if enforce_limits and len(customers) > MAX_CUSTOMERS_PER_INSERT:
        return f"too many customers: {len(customers)} (max {MAX_CUSTOMERS_PER_INSERT})"
    for index, customer in enumerate(customers):
        problem = _check_customer(customer, f"Customers[{index}]", "CustomerId")
        if problem:
            return problem
    return None
