"""Teach the sandbox the transactional templates of a config, so it answers 206 for missing
tags and "Invalid template" for unknown ids, as Optimove does."""

from __future__ import annotations

from pathlib import Path

from optisync.config import load_config
from optisync.config.checks import template_tags


def templates_from_config(path: Path) -> dict[int, frozenset[str]]:
    """TemplateID -> the tags its file uses, for every template optisync sends itself."""
    config = load_config(path)
    known: dict[int, frozenset[str]] = {}
    for template in config.templates.values():
        sent_by_optisync = template.kind == "transactional" or (
            template.kind == "triggered" and template.delivery == "api"
        )
        if not sent_by_optisync or template.template_id is None:
            continue
        tags: frozenset[str] = frozenset()
        if template.file is not None:
            text = config.path(template.file).read_text(encoding="utf-8")
            tags = frozenset(template_tags(text, template.kind))
        known[template.template_id] = tags
    return known
