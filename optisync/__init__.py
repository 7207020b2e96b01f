"""optisync: sync ES Loyalty member events and daily batch data into Optimove."""

from __future__ import annotations

import sys
import types

__version__ = "0.1.0"

# httpx imports its own command-line tool on import, and with it rich, pygments and click's
# help machinery: about 60 ms of every cold start, for code optisync never runs. An empty
# stand-in makes httpx fall back to its stub (its ``from ._main import main`` is guarded).
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", types.ModuleType("httpx._main"))
