"""What the sandbox says the account holds: its custom attributes and its transactional
templates, as GetCustomerAttributeList and GetTemplateDetails return them.

Learnt from a config (its declared attributes, its template files) unless told otherwise,
so that ``validate-config --online`` has something real to compare against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TemplateDetail:
    template_id: int
    name: str
    content: str
    tags: tuple[str, ...]

    def as_optimove(self) -> dict[str, Any]:
        return {
            "TemplateID": self.template_id,
            "TemplateName": self.name,
            "TemplateContent": self.content,
            "TemplateAttributes": list(self.tags),
        }


@dataclass(frozen=True)
class Catalog:
    attributes: tuple[str, ...] = ()
    templates: tuple[TemplateDetail, ...] = ()

    def attribute_list(self) -> list[dict[str, str]]:
        return [{"RealFieldName": name, "Description": name} for name in self.attributes]

    def template_details(self) -> list[dict[str, Any]]:
        return [t.as_optimove() for t in self.templates]

    def tags_by_id(self) -> dict[int, frozenset[str]]:
        """TemplateID -> tags, the form the transactional endpoint checks sends against."""
        return {t.template_id: frozenset(t.tags) for t in self.templates}


def catalog_from_config(path: Path, attributes: list[str] | None = None) -> Catalog:
    """The account a config expects: every attribute it declares (or ``attributes``), and
    every template optisync sends itself with its file's content and tags."""
    from optisync.config import load_config
    from optisync.config.checks import template_tags

    config = load_config(path)
    if attributes is None:
        declared = [a.name for a in [*config.attributes.realtime, *config.attributes.batch]]
        attributes = list(dict.fromkeys(declared))
    details = []
    for name, template in config.templates.items():
        sent_by_optisync = template.kind == "transactional" or (
            template.kind == "triggered" and template.delivery == "api"
        )
        if not sent_by_optisync or template.template_id is None:
            continue
        content = ""
        if template.file is not None:
            content = config.path(template.file).read_text(encoding="utf-8")
        tags = tuple(sorted(template_tags(content, template.kind)))
        details.append(TemplateDetail(template.template_id, name, content, tags))
    return Catalog(tuple(attributes), tuple(details))
