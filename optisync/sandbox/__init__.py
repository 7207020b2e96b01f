"""A local stand-in for Optimove's APIs on loopback.

For the README quick start, the tests and the benchmarks; never a substitute in production.
Paths are case-insensitive and may carry a ``/current`` prefix; JSON in and out.

=====================================================  ======================================
``POST /reportEvent``                                  one event or an array of <= 50
``POST /Customers/UpdateCustomerAttributes``           <= 1,000 customers x 10 attrs -> 202,
                                                       then the verdict to its CallbackURL
``PUT /Customers/UpsertCustomer``                      one customer, created; errors in body
``PUT /Customers/InsertOrUpdateCustomers``             <= 1,000 customers, created -> 202
``POST /TransactionalMail/SendTransactionalMail``      200 / 206 / 409 / "Invalid template"
``POST /Integrations/AddPromotions``, ``DeletePromotions``, ``GET GetPromotions``
``POST /Optimail/AddUnsubscribers``, ``DeleteUnsubscribers``, ``GET GetUnsubscribers``
``GET /model/GetCustomerAttributeList``               the catalog's attributes
``GET /TransactionalMail/GetTemplateDetails``          the catalog's (or known) templates
``GET /_sandbox/received?kind=``, ``GET /_sandbox/stats``, ``POST /_sandbox/reset``,
``GET|POST /_sandbox/faults``                          inspection: key required, no faults
=====================================================  ======================================

See ``optisync.sandbox.state`` for the auth rules (events may authenticate by HMAC alone when
``events_token`` is set) and the order of checks.
"""

from __future__ import annotations

from optisync.sandbox.server import Sandbox, serve
from optisync.sandbox.state import KINDS, Faults, SandboxConfig

__all__ = ["KINDS", "Faults", "Sandbox", "SandboxConfig", "serve"]
