"""Optimove's documented limits, stated once.

optisync keeps below them so that Optimove never refuses a call for its size or its rate:
the real-time planner packs calls up to the per-call caps, the config bounds what a user may
set, and the client's rate limiters default to the quotas. The sandbox keeps its own copy on
purpose, so that it checks optisync against the limits instead of trusting them.

It depends on nothing, so the config models can use it without loading the client.
"""

from __future__ import annotations

from typing import Final

# -- request quotas, per API key, counted in a sliding window ----------------------------

#: Requests per window across the REST API (one quota per API key).
GENERAL_REQUESTS: Final = 50
#: Length of the REST API's window, in seconds.
GENERAL_WINDOW_SECONDS: Final = 10.0
#: SendTransactionalMail has a quota of its own: calls per window...
TRANSACTIONAL_REQUESTS: Final = 10
#: ...of this many seconds.
TRANSACTIONAL_WINDOW_SECONDS: Final = 1.0
#: The unsubscribe endpoints (AddUnsubscribers, DeleteUnsubscribers, GetUnsubscribers)
#: have caps of their own on top of the general quota: calls per window...
UNSUBSCRIBE_REQUESTS: Final = 600
#: ...of this many seconds...
UNSUBSCRIBE_WINDOW_SECONDS: Final = 60.0
#: ...and calls in flight at once.
UNSUBSCRIBE_PARALLEL: Final = 10

# -- per call ----------------------------------------------------------------------------

#: Customers in one UpdateCustomerAttributes call.
MAX_CUSTOMERS_PER_CALL: Final = 1000
#: Attributes of one customer in one UpdateCustomerAttributes call.
MAX_ATTRIBUTES_PER_CUSTOMER: Final = 10
#: Customers in one InsertOrUpdateCustomers call (UpsertCustomer takes one).
MAX_CUSTOMERS_PER_INSERT: Final = 1000
#: Recipients in one SendTransactionalMail call.
MAX_RECIPIENTS_PER_CALL: Final = 200
#: Promotions in one AddPromotions call.
MAX_PROMOTIONS_PER_CALL: Final = 100
#: Email addresses in one AddUnsubscribers call.
MAX_UNSUBSCRIBERS_PER_CALL: Final = 200
#: Events in one request to the events gateway (it takes an object or an array).
MAX_EVENTS_PER_REQUEST: Final = 50

# -- values ------------------------------------------------------------------------------

#: Parameters (context keys) of one server-side event.
MAX_CONTEXT_PARAMS: Final = 50
#: Characters of a string value (event parameter or attribute).
MAX_STRING: Final = 255
#: Custom member attributes Optimove holds for one tenant, real-time and batch together.
MAX_CUSTOM_ATTRIBUTES: Final = 50

# -- batch files -------------------------------------------------------------------------

#: Size of one batch file Optimove ingests, in MB.
MAX_BATCH_FILE_MB: Final = 1024
