"""``validate-config``: every check of a config file, reported in one run.

Structural problems (YAML, unknown keys, types) come from ``source``; this module adds
the checks that need the whole picture: the 50-attribute limit, template tags against
their mappings, mapping sources against the event models, routing targets, locales.
"""

from __future__ import annotations

import re

from optisync.config.models import (
    SNAKE,
    Config,
    Mapping,
    Target,
    Template,
)
from optisync.config.source import Loc, Source
from optisync.events import EventType, has_path
from optisync.optimove import limits

_PREFIXED_TAG = re.compile(r"\b(TRANS|EVENT):([A-Za-z0-9_]+)")
_TAG_START = re.compile(r"\[%\s*([A-Za-z][A-Za-z0-9_]*(?::[A-Za-z0-9_]*)*)")
_MODIFIERS = ("UPPER:", "LOWER:", "TITLE_CASE:")
# Optimove's own tag words: conditionals and date/time helpers, not personalization data.
_BUILTIN_WORDS = frozenset(
    {"IF", "ELSEIF", "ELSE", "END", "CURRENT_DATE", "TOMORROW_DATE", "CURRENT_TIME"}
)


def check(src: Source, config: Config) -> None:
    _attributes(src, config)
    _events(src, config)
    _templates(src, config)
    check_routing(src, config)
    _locale(src, config)
    _optimove(src, config)
    _verdicts(src, config)

    check_serve(src, config)


def check_serve(src: Source, config: Config) -> None:
    """``serve`` refuses every caller without a token; say so before it is started."""
    if "serve" not in src.data:
        return  # no serve section: the connector is not used with this file
    if not config.secret_configured("serve.tokens"):
        src.add(
            ("serve",),
            "no serve.tokens or serve.tokens_file: optisync serve would refuse every request",
            severity="warning",
            hint="export OPTISYNC_SERVE__TOKENS=... or set serve.tokens_file",
        )
    elif config.serve.tokens_file is not None:
        path = config.path(config.serve.tokens_file)
        if not path.exists():
            src.add(("serve", "tokens_file"), f"{path} does not exist", severity="warning")


def _raw_names(src: Source, key: str) -> list[tuple[int, str]]:
    section = src.data.get("attributes")
    items = section.get(key) if isinstance(section, dict) else None
    if not isinstance(items, list):
        return []
    return [
        (i, str(item["name"]))
        for i, item in enumerate(items)
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    ]


def _attributes(src: Source, config: Config) -> None:
    sets = {key: _raw_names(src, key) for key in ("realtime", "batch")}
    for key, names in sets.items():
        first: dict[str, int] = {}
        for i, name in names:
            if name in first:
                src.add(
                    ("attributes", key, i, "name"),
                    f"duplicate attribute '{name}' (first at"
                    f" line {src.line(('attributes', key, first[name]))})",
                )
            first.setdefault(name, i)
    realtime = {n for _, n in sets["realtime"]}
    batch = {n for _, n in sets["batch"]}
    union = realtime | batch
    limit = config.attributes.limit
    if len(union) > limit:
        src.add(
            ("attributes",),
            f"{len(union)} custom attributes (realtime set {len(realtime)}, batch set"
            f" {len(batch)}, {len(realtime & batch)} in both) but Optimove allows at most"
            f" {limit} across both sets",
            hint="drop or merge attributes; an attribute used by both sets counts once",
        )
    types: dict[str, str] = {}
    for key in ("realtime", "batch"):
        for i, attr in enumerate(getattr(config.attributes, key)):
            if attr.name in types and types[attr.name] != attr.type:
                src.add(
                    ("attributes", key, i, "type"),
                    f"'{attr.name}' is {attr.type} here but {types[attr.name]} in the other set",
                )
            types.setdefault(attr.name, attr.type)
    for i, attr in enumerate(config.attributes.realtime):
        loc: Loc = ("attributes", "realtime", i)
        if not attr.events:
            src.add((*loc, "events"), "a realtime attribute needs the events that update it")
        if not attr.source:
            src.add((*loc, "source"), "a realtime attribute needs a source (e.g. data.tier)")
            continue
        _fields_exist(src, (*loc, "source"), attr.source, attr.events)
    for i, attr in enumerate(config.attributes.batch):
        if attr.events:
            src.add(
                ("attributes", "batch", i, "events"),
                "batch attributes are exported nightly; 'events' applies to realtime ones",
            )
    emd = config.attributes.emd
    if not emd.opt_in_key:
        src.add(
            ("attributes", "emd", "opt_in_key"),
            "the EMD opt-in key is not set",
            hint="name the Extended Member Data key that holds email consent, e.g."
            " opt_in_key: email_opt_in",
        )
    for key, name in emd.map.items():
        if name not in union:
            src.add(
                ("attributes", "emd", "map", key),
                f"EMD key '{key}' maps to '{name}', which no attribute set declares",
                hint="declare it under attributes.realtime or attributes.batch so it counts"
                " toward the limit",
            )


def _path_hint(kind: EventType, path: str) -> str:
    from difflib import get_close_matches

    from optisync.events import data_paths

    close = get_close_matches(path, sorted(data_paths(kind)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else "run 'optisync schema events' for fields"


def _fields_exist(src: Source, loc: Loc, path: str, kinds: list[EventType]) -> None:
    """``path`` must be a field of every one of ``kinds``; each miss is reported at ``loc``."""
    for kind in kinds:
        if not has_path(kind, path):
            src.add(
                loc,
                f"'{path}' is not a field of {kind.value} events",
                hint=_path_hint(kind, path),
            )


def _source_ok(src: Source, loc: Loc, mapping: Mapping, kinds: list[EventType]) -> None:
    where = (*loc, "source") if _is_long_form(src, loc) else loc
    _fields_exist(src, where, mapping.source, kinds)


def _is_long_form(src: Source, loc: Loc) -> bool:
    return (*loc, "source") in src.lines


def _events(src: Source, config: Config) -> None:
    for kind, mapping in config.events.items():
        loc: Loc = ("events", kind.value)
        if not SNAKE.match(mapping.name):
            src.add(
                (*loc, "name"),
                f"Optimove event name '{mapping.name}' must be snake_case",
                hint=f"e.g. {kind.value.lower()}",
            )
        if len(mapping.context) > limits.MAX_CONTEXT_PARAMS:
            src.add(
                (*loc, "context"),
                f"{len(mapping.context)} context parameters; Optimove allows at most"
                f" {limits.MAX_CONTEXT_PARAMS} per event",
            )
        for param, value in mapping.context.items():
            ploc: Loc = (*loc, "context", param)
            if not SNAKE.match(param):
                src.add(ploc, f"parameter name '{param}' must be snake_case")
            _source_ok(src, ploc, value, [kind])


def template_tags(text: str, kind: str) -> set[str]:
    """The personalization tags a template uses, conditional blocks included.

    ``[%TRANS:X%]`` and ``[%EVENT:X%]`` count wherever they stand (also inside
    ``[%IF:...%]``); scheduled templates also use plain attribute tags like ``[%FIRSTNAME%]``.
    """
    tags = {m.group(2) for m in _PREFIXED_TAG.finditer(text)}
    if kind == "scheduled":
        for match in _TAG_START.finditer(text):
            name = match.group(1)
            while name.startswith(_MODIFIERS):
                name = name.split(":", 1)[1]
            word = name.split(":", 1)[0]
            if name and word not in _BUILTIN_WORDS and word not in {"TRANS", "EVENT"}:
                tags.add(name)
    return tags


def _templates(src: Source, config: Config) -> None:
    for name, template in config.templates.items():
        loc: Loc = ("templates", name)
        if template.kind in {"transactional", "triggered"} and (
            template.template_id is None or template.template_id <= 0
        ):
            src.add(
                (*loc, "template_id") if template.template_id is not None else loc,
                f"a {template.kind} template needs a positive integer template_id",
                hint="the TemplateID shown in OptiMail's template list",
            )
        if (
            template.kind == "triggered"
            and template.delivery == "event"
            and template.event is not None
            and template.event not in config.events
        ):
            src.add(
                (*loc, "event"),
                f"a triggered template in event mode is sent on the reported event, but"
                f" events.{template.event.value} is not mapped to an Optimove event",
            )
        if template.kind in {"transactional", "triggered"} and template.event is None:
            src.add(
                loc, f"a {template.kind} template needs 'event': the loyalty event that sends it"
            )
        for tag, mapping in template.attribute_mappings.items():
            _mapping_source(src, (*loc, "attribute_mappings", tag), mapping, template, config)
        if template.file is not None:
            _template_file(src, loc, template, config)


def _mapping_source(
    src: Source, loc: Loc, mapping: Mapping, template: Template, config: Config
) -> None:
    if mapping.source.startswith("attribute."):
        declared = {a.name for a in [*config.attributes.realtime, *config.attributes.batch]}
        if mapping.source.removeprefix("attribute.") not in declared:
            src.add(loc, f"'{mapping.source}' names no declared attribute")
        return
    if template.event is None:
        if template.kind == "scheduled":
            src.add(loc, "a scheduled template's mappings take attribute.<Name> sources")
        return
    _source_ok(src, loc, mapping, [template.event])


def _template_file(src: Source, loc: Loc, template: Template, config: Config) -> None:
    assert template.file is not None
    path = config.path(template.file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        src.add((*loc, "file"), f"cannot read template file {path}: {exc.strerror or exc}")
        return
    tags = template_tags(text, template.kind)
    covered = set(template.attribute_mappings)
    by_event = template.kind == "triggered" and template.delivery == "event"
    if by_event and template.event in config.events:
        # Optimove's campaign fills [%EVENT:X%] from the reported event's parameters
        covered |= {param.upper() for param in config.events[template.event].context}
    missing = sorted(tags - covered)
    if missing:
        where = "attribute_mappings entry"
        if by_event:
            where = f"events.{template.event.value if template.event else '?'}.context parameter"
            where += " or attribute_mappings entry"
        src.add(
            (*loc, "file"),
            f"template {template.file} uses tags with no {where}: {', '.join(missing)}",
            hint="add each under attribute_mappings, e.g. "
            f"{missing[0]}: data.<field>; Optimove would send them empty (HTTP 206)",
        )
    for tag in sorted(set(template.attribute_mappings) - tags):
        src.add(
            (*loc, "attribute_mappings", tag),
            f"mapping '{tag}' is not used by {template.file}",
            severity="warning",
        )


def check_routing(src: Source, config: Config) -> None:
    """Targets, template names and conditions of the routing rules, and the credential of
    the events host they send to (also run on every load: a wrong target would fail every
    message it routes)."""
    routed: set[EventType] = set()
    for i, rule in enumerate(config.routing.rules):
        loc: Loc = ("routing", "rules", i)
        routed.update(rule.types)
        for j, target in enumerate(rule.to):
            kind, _, name = target.partition(":")
            tloc: Loc = (*loc, "to", j)
            if kind not in set(Target) or (kind == "email") != bool(name):
                src.add(
                    tloc,
                    f"unknown target '{target}'",
                    hint=f"one of: {Target.listing()}:<template>",
                )
            elif kind == "email" and name not in config.templates:
                from difflib import get_close_matches

                close = get_close_matches(name, list(config.templates), n=1)
                src.add(
                    tloc,
                    f"target '{target}' names no template in templates",
                    hint=f"did you mean 'email:{close[0]}'?" if close else None,
                )
            elif kind == "events":
                for t in rule.types:
                    if t not in config.events:
                        src.add(
                            tloc,
                            f"{t.value} is routed to events but events.{t.value} is"
                            " not mapped to an Optimove event",
                        )
        for j, cond in enumerate(rule.where):
            cloc: Loc = (*loc, "where", j)
            _fields_exist(src, (*cloc, "field"), cond.field, rule.types)
            if cond.op in {"in", "not_in"} and not isinstance(cond.value, list):
                src.add((*cloc, "value"), f"op '{cond.op}' needs a list value")
            if cond.op in {"gt", "gte", "lt", "lte", "eq", "ne"} and cond.value is None:
                src.add((*cloc, "value"), f"op '{cond.op}' needs a value")
    for kind in EventType:
        if kind not in routed:
            src.add(
                ("routing", "rules"),
                f"no rule routes {kind.value} events; they would be reported as unrouted",
                severity="warning",
            )
    _events_auth(src, config)


def sends_events(config: Config) -> bool:
    """Whether the routing makes anything go to the events host: the ``events`` target,
    consent reported as an event, or a triggered template sent on its event."""
    opt_in_event = config.optimove.opt_in.method in {"event", "both"}
    for rule in config.routing.rules:
        for target in rule.to:
            kind, _, name = target.partition(":")
            template = config.templates.get(name) if kind == "email" else None
            if (
                kind == "events"
                or (kind == "opt_in" and opt_in_event)
                or (template and template.kind == "triggered" and template.delivery == "event")
            ):
                return True
    return False


def _events_auth(src: Source, config: Config) -> None:
    """No credential is sent to the events host unless the config says which one it takes."""
    settings = config.optimove
    token = config.secret_configured("events_token")
    if settings.events_auth == "token" and not token and sends_events(config):
        src.add(
            ("optimove",),
            "events are routed but no events token is set, so the events host would get no"
            " credential (the API key is never sent there unless events_auth says so)",
            hint="set optimove.events_token (events_token: ${OPTIMOVE_EVENTS_TOKEN}, or the"
            " variable OPTISYNC_OPTIMOVE__EVENTS_TOKEN) or optimove.events_token_file; if"
            " Optimove told you its events host takes the API key, set optimove.events_auth:"
            " api_key_header, or none if it takes no credential",
        )
    elif settings.events_auth != "token" and token:
        src.add(
            ("optimove", "events_auth"),
            f"events_auth is {settings.events_auth}: the events token is set but events are"
            " not signed with it",
            severity="warning",
            hint="remove events_token, or set events_auth: token",
        )


def _locale(src: Source, config: Config) -> None:
    from babel import Locale, UnknownLocaleError

    try:
        Locale.parse(config.locale.default_locale)
    except (UnknownLocaleError, ValueError, TypeError):
        src.add(
            ("locale", "default_locale"),
            f"unknown locale '{config.locale.default_locale}'",
            hint="a Babel locale such as en_CA or fr_CA",
        )
    check_currency(src, config)


def check_currency(src: Source, config: Config) -> None:
    """The default currency is an ISO 4217 code (Babel's list). Run at every load: the
    code is written into the export's SQL and files."""
    from babel.numbers import list_currencies

    if config.locale.default_currency not in list_currencies():
        src.add(
            ("locale", "default_currency"),
            f"unknown currency '{config.locale.default_currency}'",
            hint="an ISO 4217 code such as CAD or USD",
        )


def _optimove(src: Source, config: Config) -> None:
    targets = {t.partition(":")[0] for r in config.routing.rules for t in r.to}
    settings = config.optimove
    if "events" in targets:
        if not settings.events_url:
            src.add(
                ("optimove",),
                "events are routed but optimove.events_url is not set",
                hint="the events endpoint Optimove gave at onboarding",
            )
        if settings.tenant_id is None:
            src.add(("optimove",), "events are routed but optimove.tenant_id is not set")
    if (
        settings.api_key is None
        and settings.api_key_file is None
        and not any(p.key.startswith("optimove") for p in src.problems)
    ):
        src.add(
            ("optimove",),
            "no api_key: sends will fail",
            severity="warning",
            hint="api_key: ${OPTIMOVE_API_KEY}",
        )


def _verdicts(src: Source, config: Config) -> None:
    """Customer creation against routing, and whether Optimove's verdicts can be heard."""
    to_attributes = {
        kind
        for rule in config.routing.rules
        if any(t.partition(":")[0] == "attributes" for t in rule.to)
        for kind in rule.types
    }
    if not to_attributes:
        return
    attributes = config.attributes
    if attributes.create_method == "none":
        if EventType.MEMBER_REGISTRATION in to_attributes:
            src.add(
                ("attributes", "create_method"),
                "MEMBER_REGISTRATION is routed to attributes but create_method is none:"
                " Optimove refuses attribute updates of a member it does not know yet",
                severity="warning",
                hint="create_method: insert_or_update (or upsert) creates the customer",
            )
    else:
        for kind in attributes.create_on:
            if kind not in to_attributes:
                src.add(
                    ("attributes", "create_on"),
                    f"{kind.value} creates customers but no rule routes it to attributes,"
                    " so it creates no one",
                    severity="warning",
                    hint=f"add attributes to the targets of the rule for {kind.value}",
                )
    if not config.optimove.callback_url and not any(
        p.key.startswith("optimove") and p.severity == "error" for p in src.problems
    ):
        src.add(
            ("optimove",),
            "no callback_url: the verdicts on attribute updates are never heard, so rejected"
            " ones (unknown customer, unknown attribute, bad value) stay invisible and every"
            " accepted call counts as delivered",
            severity="warning",
            hint="set optimove.callback_url to the public URL of optisync serve's"
            " /v1/optimove/callback",
        )
