"""Reading optisync.yaml: YAML with line numbers, ``${ENV}`` interpolation, environment
overrides, and pydantic validation turned into located problems.

Every problem carries the file, the line and the dotted key, so an operator can jump to it;
``load_config`` raises one ``ConfigError`` holding all of them rather than the first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from optisync.config.models import (
    SECRET_KEYS,
    SECTIONS,
    AttributesSection,
    Config,
    RoutingSection,
    secret_problem,
)
from optisync.errors import ConfigError

Severity = Literal["error", "warning"]
Loc = tuple[str | int, ...]
SECRET_PATHS: frozenset[Loc] = frozenset(tuple(key.split(".")) for key in SECRET_KEYS)
# Secrets sent in an HTTP header: printable ASCII only.
HEADER_SECRETS: frozenset[Loc] = frozenset({("optimove", "api_key"), ("optimove", "events_token")})
ENV_PREFIX = "OPTISYNC_"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    key: str
    message: str
    severity: Severity = "error"
    hint: str | None = None

    def render(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        label = "" if self.severity == "error" else "warning: "
        text = f"{where}: {self.key or '(top)'}: {label}{self.message}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "key": self.key,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
        }


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Source:
    """A parsed config file: data, where each key sits, and the problems found so far."""

    path: Path
    data: dict[str, Any]
    lines: dict[Loc, int]
    problems: list[Problem] = field(default_factory=list)
    env_overrides: dict[Loc, str] = field(default_factory=dict)
    # secrets written as ${VAR} with VAR unset: where -> VAR
    unset_secrets: dict[Loc, str] = field(default_factory=dict)

    def line(self, loc: Loc) -> int | None:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None

    def add(
        self,
        loc: Loc,
        message: str,
        *,
        severity: Severity = "error",
        hint: str | None = None,
    ) -> None:
        for end in range(len(loc), 0, -1):
            env = self.env_overrides.get(loc[:end])
            if env:
                self.problems.append(
                    Problem(f"env {env}", None, dotted(loc), message, severity, hint)
                )
                return
        self.problems.append(
            Problem(str(self.path), self.line(loc), dotted(loc), message, severity, hint)
        )

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def find_config(explicit: Path | None) -> Path:
    """The config path: the flag, else $OPTISYNC_CONFIG, else ./optisync.yaml."""
    if explicit is not None:
        return explicit
    env = os.environ.get("OPTISYNC_CONFIG")
    return Path(env) if env else Path("optisync.yaml")


def read_source(path: Path, environ: AbcMapping[str, str] | None = None) -> Source:
    """Parse the file, keeping line numbers; YAML errors become problems, not exceptions."""
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found",
            hint="pass --config PATH, set OPTISYNC_CONFIG, or create ./optisync.yaml"
            " (see examples/optisync.yaml)",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    src = Source(path, {}, {})
    node = _compose_recovering(text, src)
    if node is not None and not isinstance(node, yaml.MappingNode):
        src.add((), "the file must be a YAML mapping of sections (optimove:, attributes:, ...)")
        node = None
    if node is not None:
        src.data = _construct(node, (), src)
    _interpolate(src, src.data, (), environ)
    _apply_env_overrides(src, environ)
    _check_secrets(src)
    return src


class AliasRefused(yaml.MarkedYAMLError):
    """The config uses a YAML alias (``*name``)."""


class NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases: a few hundred bytes of nested aliases expand to
    gigabytes (and ``&a [*a]`` to an endless structure); a config never needs them."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise AliasRefused(
                problem=f"alias *{event.anchor}",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)


def _compose_recovering(text: str, src: Source) -> yaml.Node | None:
    """Compose the YAML; on a syntax error, report it, blank that line and try again.

    Blanking the offending line lets one run report a syntax error *and* the problems in
    the rest of the file, instead of making the operator fix and rerun once per mistake.
    """
    lines = text.splitlines()
    for _ in range(20):
        try:
            return yaml.compose("\n".join(lines), Loader=NoAliasLoader)
        except AliasRefused as exc:
            mark = exc.problem_mark
            line = mark.line if mark is not None else len(lines)
            src.problems.append(
                Problem(
                    str(src.path),
                    line + 1 if mark is not None else None,
                    "",
                    f"YAML {exc.problem} at column {mark.column + 1 if mark else '?'}:"
                    " anchors and aliases are not allowed in the config",
                    hint="write the value out in full where the alias stands",
                )
            )
            if line >= len(lines) or not lines[line].strip():
                return None
            lines[line] = ""
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            if mark is None:
                src.problems.append(Problem(str(src.path), None, "", f"YAML syntax error: {exc}"))
                return None
            reason = exc.problem or exc.context or "syntax error"
            src.problems.append(
                Problem(
                    str(src.path),
                    mark.line + 1,
                    "",
                    f"YAML syntax error at column {mark.column + 1}: {reason}",
                    hint="check indentation, colons and matching quotes/brackets on this line",
                )
            )
            if mark.line >= len(lines) or not lines[mark.line].strip():
                return None
            lines[mark.line] = ""
        except yaml.YAMLError as exc:
            src.problems.append(Problem(str(src.path), None, "", f"YAML error: {exc}"))
            return None
    return None


def _construct(
    node: yaml.Node, loc: Loc, src: Source, loader: yaml.SafeLoader | None = None
) -> Any:
    loader = loader or yaml.SafeLoader("")  # one per file: building one costs ~10 µs
    src.lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node)  # scalar keys only
            if not isinstance(key, str | int | float | bool):
                src.add(loc, "mapping keys must be plain scalars")
                continue
            key = str(key)
            child = (*loc, key)
            if key in out:
                src.problems.append(
                    Problem(
                        str(src.path),
                        key_node.start_mark.line + 1,
                        dotted(child),
                        f"duplicate key (first at line {src.lines[child]}); YAML keeps only one",
                    )
                )
            src.lines[child] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, child, src, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*loc, i), src, loader) for i, item in enumerate(node.value)]
    try:
        return loader.construct_object(node)
    except yaml.YAMLError as exc:
        src.add(loc, f"bad value: {exc}")
        return None


def _interpolate(src: Source, value: Any, loc: Loc, environ: AbcMapping[str, str]) -> Any:
    if isinstance(value, dict):
        for key in list(value):
            value[key] = _interpolate(src, value[key], (*loc, key), environ)
        return value
    if isinstance(value, list):
        return [_interpolate(src, item, (*loc, i), environ) for i, item in enumerate(value)]
    if loc in SECRET_PATHS and isinstance(value, str) and value and "${" not in value:
        src.add(
            loc,
            "a literal secret is written in the file",
            severity="warning",
            hint=f"write {loc[-1]}: ${{{str(loc[-2]).upper()}_{str(loc[-1]).upper()}}}"
            " and export that variable",
        )
    if not isinstance(value, str) or "${" not in value:
        return value
    missing: list[str] = []

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    result = _ENV_REF.sub(sub, value)
    if missing:
        if loc in SECRET_PATHS:
            src.unset_secrets[loc] = missing[0]
            src.add(
                loc,
                f"environment variable {missing[0]} is not set;"
                f" {'exports' if loc[0] == 'batch' else 'sends'} will fail until it is",
                severity="warning",
            )
            return None
        src.add(loc, f"environment variable {', '.join(missing)} is not set")
    return result


def _apply_env_overrides(src: Source, environ: AbcMapping[str, str]) -> None:
    """``OPTISYNC_<SECTION>__<KEY>[__<KEY>...]`` overrides the file's value at that path."""
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if parts[0] not in SECTIONS or not all(parts):
            continue
        # Walk the file's own keys: environment names are upper case, but event types
        # (MEMBER_TIER) and template names keep the case the file gives them.
        node: Any = src.data
        keys: list[str | int] = []
        for i, part in enumerate(parts):
            key: str | int = part
            if isinstance(node, list):
                if not (part.isdigit() and int(part) < len(node)):
                    break  # no such entry: reported below, the file's list is left alone
                key = int(part)
            elif isinstance(node, dict):
                key = next((k for k in node if isinstance(k, str) and k.lower() == part), part)
            keys.append(key)
            if i < len(parts) - 1:
                child = node[key] if isinstance(key, int) else node.get(key)
                if not isinstance(child, dict | list):
                    child = node[key] = {}
                node = child
        if len(keys) < len(parts):
            src.add(
                tuple(keys),
                f"{name}: this list has no entry {parts[len(keys)]!r}",
                hint=f"an index from 0 to {len(node) - 1}" if node else "the list is empty",
            )
            continue
        loc: Loc = tuple(keys)
        value: Any = raw
        if loc not in SECRET_PATHS:
            try:
                value = yaml.load(raw, Loader=NoAliasLoader) if raw.strip() else raw  # noqa: S506
            except yaml.YAMLError:
                value = raw
        node[keys[-1]] = value
        src.env_overrides[loc] = name


def _check_secrets(src: Source) -> None:
    """Refuse secrets with control characters or surrounding whitespace, naming the key only.

    A secret with a newline would be refused by the HTTP library with an error quoting it, so
    it is stopped here, before anything can print it.
    """
    for loc in sorted(SECRET_PATHS):
        parent: Any = src.data
        for part in loc[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        value = parent.get(loc[-1])
        if not isinstance(value, str) or not value:
            continue
        problem = secret_problem(value, header=loc in HEADER_SECRETS)
        if problem:
            parent[loc[-1]] = None  # never kept, so never echoed by a later check
            src.add(
                loc,
                problem,
                hint="a variable or file holding a secret often ends in a newline: remove it",
            )


def validate_source(src: Source) -> Config | None:
    """Validate the data; every pydantic error becomes a located problem.

    Returns the Config when it validates. When it does not, the sections and entries that
    do validate are still returned (``lenient``) so semantic checks can report more at once.
    """
    try:
        config = Config.model_validate(src.data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            _report(src, err)
        return None
    config.read_from(
        src.path.parent, {dotted(loc): name for loc, name in src.unset_secrets.items()}
    )
    return config


def lenient(src: Source) -> Config:
    """A best-effort Config of everything that validates on its own, for further checks."""
    kwargs: dict[str, Any] = {}
    for name in SECTIONS:
        raw = src.data.get(name)
        if raw is None:
            continue
        annotation = Config.model_fields[name].annotation
        try:
            kwargs[name] = TypeAdapter(annotation).validate_python(raw)
        except ValidationError:
            kwargs[name] = _salvage(name, raw)
    config = Config.model_construct(**{k: v for k, v in kwargs.items() if v is not None})
    for name in SECTIONS:
        if name not in kwargs or kwargs[name] is None:
            setattr(config, name, Config.model_fields[name].get_default(call_default_factory=True))
    config.read_from(src.path.parent)
    return config


def _salvage(name: str, raw: Any) -> Any:
    def keep(annotation: Any, items: Any) -> Any:
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        if isinstance(items, dict):
            good = {}
            for key, value in items.items():
                try:
                    good.update(adapter.validate_python({key: value}))
                except ValidationError:
                    continue
            return good
        if isinstance(items, list):
            kept = []
            for value in items:
                try:
                    kept.extend(adapter.validate_python([value]))
                except ValidationError:
                    continue
            return kept
        return None

    if not isinstance(raw, dict):
        return None
    if name in {"events", "templates"}:
        return keep(Config.model_fields[name].annotation, raw)
    if name == "attributes":
        fields = AttributesSection.model_fields
        parts = {
            key: keep(fields[key].annotation, raw.get(key))
            for key in ("realtime", "batch")
            if isinstance(raw.get(key), list)
        }
        emd: Any
        try:
            emd = TypeAdapter(fields["emd"].annotation).validate_python(raw.get("emd", {}))
        except ValidationError:
            emd = fields["emd"].get_default(call_default_factory=True)
        return AttributesSection.model_construct(emd=emd, **parts)
    if name == "routing" and isinstance(raw.get("rules"), list):
        rules = keep(RoutingSection.model_fields["rules"].annotation, raw["rules"])
        return RoutingSection.model_construct(rules=rules)
    return None


def _report(src: Source, err: Any) -> None:
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        from difflib import get_close_matches

        close = get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        hint = (
            f"did you mean '{close[0]}'?"
            if close
            else (f"known keys here: {', '.join(known)}" if known else None)
        )
        src.add(loc, f"unknown key '{loc[-1]}'", hint=hint)
        return
    message = err["msg"]
    if kind == "missing":
        message = "required key is missing"
    elif message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    # pydantic puts dict keys in loc; a bad dict key reads better named as such
    if kind in {"enum", "literal_error"} and loc and loc[-1] == "[key]":
        loc = loc[:-1]
        allowed = [
            str(c)
            for c in (err.get("ctx") or {})
            .get("expected", "")
            .replace("'", "")
            .replace(" or ", ", ")
            .split(", ")
            if c
        ]
        from difflib import get_close_matches

        close = get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        src.add(
            loc,
            f"unknown key '{loc[-1]}'",
            hint=f"did you mean '{close[0]}'?" if close else f"one of: {', '.join(allowed)}",
        )
        return
    src.add(loc, message)


def _known_keys(loc: Loc) -> list[str]:
    """The keys the model accepts at ``loc``, for 'did you mean' hints."""
    annotation: Any = Config
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return []
    model = _model_of(annotation)
    return list(model.model_fields) if model else []


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in {Union, type(int | None)}:
        for arg in get_args(annotation):
            model = _model_of(arg)
            if model:
                return model
    return None


def _step(annotation: Any, part: str | int) -> Any:
    model = _model_of(annotation)
    if model is not None:
        info = model.model_fields.get(str(part))
        return info.annotation if info else None
    origin = get_origin(annotation)
    if origin is dict:
        return get_args(annotation)[1]
    if origin is list:
        return get_args(annotation)[0]
    return None
