"""A local stand-in for Optimove's APIs on loopback (design.md §7).

For the README quick start, the tests and the benchmarks; never a substitute in production.
See ``optisync.sandbox.state`` for the endpoints, the auth rules and the order of checks.
"""

from __future__ import annotations

from optisync.sandbox.server import Sandbox, serve
from optisync.sandbox.state import KINDS, Faults, SandboxConfig

__all__ = ["KINDS", "Faults", "Sandbox", "SandboxConfig", "serve"]
