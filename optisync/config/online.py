"""``validate-config --online``: the config against what the Optimove account holds.

The account is read elsewhere (the command fetches it); here its answers are parsed and
compared, and every difference becomes a located problem like the offline checks': an
attribute the account lacks, a template id it does not list, a tag its template uses that
no mapping fills, a mapping its template no longer uses, a local template file that is
not the account's.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any

from optisync.config.checks import template_tags
from optisync.config.models import Config, Template
from optisync.config.source import Loc, Source

# Keys that have been seen naming a tag when TemplateAttributes holds objects.
_TAG_KEYS = ("Tag", "Name", "AttributeName", "RealFieldName", "Attribute")


@dataclass(frozen=True)
class RemoteTemplate:
    template_id: int
    name: str
    content: str
    attributes: tuple[str, ...]

    def tags(self, kind: str) -> set[str]:
        """Every tag the template uses: those Optimove lists and those in its content."""
        tags = template_tags(self.content, kind)
        for item in self.attributes:
            if "[%" in item:
                tags |= template_tags(item, kind)
            else:
                tags.add(item.split(":", 1)[1] if item.startswith(("TRANS:", "EVENT:")) else item)
        return tags


@dataclass(frozen=True)
class Account:
    """The account's custom attributes and transactional templates."""

    attributes: tuple[str, ...]
    templates: dict[int, RemoteTemplate]

    @classmethod
    def from_optimove(cls, attribute_list: Any, template_details: Any) -> Account:
        """Parse GetCustomerAttributeList's and GetTemplateDetails' answers.

        Raises:
            ValueError: an answer is not the documented list of objects.
        """
        if not isinstance(attribute_list, list):
            raise ValueError("GetCustomerAttributeList did not answer a list")
        names = []
        for item in attribute_list:
            name = item.get("RealFieldName") if isinstance(item, dict) else item
            if isinstance(name, str) and name:
                names.append(name)
        if not isinstance(template_details, list):
            raise ValueError("GetTemplateDetails did not answer a list")
        templates = {}
        for item in template_details:
            if not isinstance(item, dict):
                continue
            try:
                template_id = int(item.get("TemplateID"))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                continue
            templates[template_id] = RemoteTemplate(
                template_id,
                str(item.get("TemplateName") or ""),
                str(item.get("TemplateContent") or ""),
                _attribute_names(item.get("TemplateAttributes")),
            )
        return cls(tuple(names), templates)


def _attribute_names(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [part for part in raw.replace(";", ",").split(",")]
    if not isinstance(raw, list):
        return ()
    names = []
    for item in raw:
        if isinstance(item, dict):
            item = next((item[k] for k in _TAG_KEYS if isinstance(item.get(k), str)), None)
        if isinstance(item, str) and item.strip():
            names.append(item.strip())
    return tuple(names)


def sent_by_optisync(template: Template) -> bool:
    """Templates optisync sends through the transactional API itself."""
    return template.kind == "transactional" or (
        template.kind == "triggered" and template.delivery == "api"
    )


def check_online(src: Source, config: Config, account: Account) -> None:
    """Add a problem to ``src`` for every difference between the config and the account."""
    _attributes(src, config, account)
    for name, template in config.templates.items():
        if not sent_by_optisync(template) or template.template_id is None:
            continue
        if template.template_id <= 0:
            continue  # the offline checks report it
        remote = account.templates.get(template.template_id)
        loc: Loc = ("templates", name)
        if remote is None:
            src.add(
                (*loc, "template_id"),
                f"template_id {template.template_id} is not among the account's"
                " transactional templates",
                hint=_template_hint(account),
            )
            continue
        _template(src, config, loc, template, remote)


def _attributes(src: Source, config: Config, account: Account) -> None:
    existing = set(account.attributes)
    lowered = {name.lower(): name for name in account.attributes}
    for key in ("realtime", "batch"):
        for i, attr in enumerate(getattr(config.attributes, key)):
            if attr.name in existing:
                continue
            close = lowered.get(attr.name.lower())
            if close is None:
                matches = get_close_matches(attr.name, sorted(existing), n=1, cutoff=0.6)
                close = matches[0] if matches else None
            src.add(
                ("attributes", key, i, "name"),
                f"the Optimove account has no attribute '{attr.name}'",
                hint=f"did you mean '{close}'?"
                if close
                else "create it in Optimove, or fix the name (RealFieldName)",
            )


def _template_hint(account: Account) -> str:
    if not account.templates:
        return "the account lists no transactional templates"
    listed = ", ".join(
        f"{t.template_id} ({t.name})" if t.name else str(t.template_id)
        for t in sorted(account.templates.values(), key=lambda t: t.template_id)[:8]
    )
    more = " ..." if len(account.templates) > 8 else ""
    return f"the account lists: {listed}{more}"


def _template(
    src: Source, config: Config, loc: Loc, template: Template, remote: RemoteTemplate
) -> None:
    remote_tags = remote.tags(template.kind)
    covered = set(template.attribute_mappings)
    local_text: str | None = None
    if template.file is not None:
        try:
            local_text = config.path(template.file).read_text(encoding="utf-8")
        except OSError:
            local_text = None  # the offline checks report the unreadable file
    if local_text is None:
        missing = remote_tags - covered
        unused = covered - remote_tags
    else:
        # what the offline checks already said of the local file is not said twice
        local_tags = template_tags(local_text, template.kind)
        missing = remote_tags - covered - local_tags
        unused = (covered & local_tags) - remote_tags
    if missing:
        names = ", ".join(sorted(missing))
        src.add(
            (*loc, "attribute_mappings") if template.attribute_mappings else loc,
            f"template {remote.template_id} in Optimove uses tags the config does not map:"
            f" {names}",
            hint=f"add each under attribute_mappings, e.g. {min(missing)}: data.<field>;"
            " the member would get a blank",
        )
    for tag in sorted(unused):
        src.add(
            (*loc, "attribute_mappings", tag),
            f"mapping '{tag}' is not used by template {remote.template_id} in Optimove",
            severity="warning",
        )
    if local_text is not None and remote.content and _normal(local_text) != _normal(remote.content):
        src.add(
            (*loc, "file"),
            f"{template.file} differs from template {remote.template_id}'s content in" " Optimove",
            severity="warning",
            hint=f"copy the template's current content from OptiMail into {template.file}",
        )


def _normal(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").strip().splitlines())
