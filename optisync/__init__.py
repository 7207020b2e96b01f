"""optisync: sync ES Loyalty member events and daily batch data into Optimove."""

from __future__ import annotations

__version__ = "0.1.0"
