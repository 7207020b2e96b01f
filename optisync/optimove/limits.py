"""Optimove's documented caps, stated once: the real-time planner packs calls up to them,
so Optimove never refuses a call for its size."""

from __future__ import annotations

from typing import Final

#: Recipients in one SendTransactionalMail call.
MAX_RECIPIENTS_PER_MAIL: Final = 200
#: Promotions in one AddPromotions call.
MAX_PROMOTIONS_PER_CALL: Final = 100
#: Customers in one UpdateCustomerAttributes call.
MAX_CUSTOMERS_PER_ATTRIBUTE_CALL: Final = 1000
#: Attributes of one customer in one UpdateCustomerAttributes call.
MAX_ATTRIBUTES_PER_CUSTOMER: Final = 10
#: Parameters (context keys) of one server-side event.
MAX_EVENT_PARAMETERS: Final = 50
#: Email addresses in one AddUnsubscribers call.
MAX_UNSUBSCRIBERS_PER_CALL: Final = 200
#: Characters of a string value (event parameter or personalization tag).
MAX_STRING_LENGTH: Final = 255
