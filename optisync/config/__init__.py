"""The config file: its models, how it is read, and the checks of ``validate-config``."""

from __future__ import annotations

from optisync.config.load import Report, load_config, validate_config
from optisync.config.models import Config
from optisync.config.source import find_config

__all__ = ["Config", "Report", "find_config", "load_config", "validate_config"]
