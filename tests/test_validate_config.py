"""validate-config: each check, in the exact `file:line: key: message` format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optisync.config import validate_config
from optisync.config.checks import template_tags
from optisync.errors import ExitCode
from tests.support import ALL_TYPES, EXAMPLES, VALID_CONFIG, WriteConfig, invoke


def lines_of(path: Path) -> list[str]:
    return [p.render() for p in validate_config(path).problems]


def test_base_config_is_valid(write_config: WriteConfig) -> None:
    path = write_config(VALID_CONFIG)
    assert lines_of(path) == []
    invoke("validate-config", str(path))


def test_51_attributes_is_one_error_naming_each_set(write_config: WriteConfig) -> None:
    realtime = "".join(
        f"    - {{name: Rt{i}, type: INT, source: data.points, events: [REDEMPTION]}}\n"
        for i in range(30)
    )
    batch = "".join(f"    - {{name: Bt{i}, type: INT}}\n" for i in range(20))
    shared = "    - {name: Rt0, type: INT}\n    - {name: Extra, type: INT}\n"
    text = VALID_CONFIG.replace(
        "attributes:\n", f"attributes:\n  realtime:\n{realtime}  batch:\n{batch}{shared}"
    )
    path = write_config(text)
    assert lines_of(path) == [
        f"{path}:3: attributes: 51 custom attributes (realtime set 30, batch set 22, 1 in both)"
        " but Optimove allows at most 50 across both sets\n"
        "  hint: drop or merge attributes; an attribute used by both sets counts once"
    ]
    invoke("validate-config", str(path), expect=ExitCode.CONFIG)


FIFTY_BATCH_ATTRIBUTES = "".join(f"    - {{name: Bt{i}, type: INT}}\n" for i in range(50))


# One edit to the valid config each, and the exact problems it yields: (line, report).
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            VALID_CONFIG.replace(
                "attributes:\n", f"attributes:\n  batch:\n{FIFTY_BATCH_ATTRIBUTES}"
            ),
            [],
            id="exactly_50_attributes_pass",
        ),
        pytest.param(
            VALID_CONFIG.replace("    opt_in_key: email_opt_in\n", "    map: {}\n"),
            [
                (
                    4,
                    "attributes.emd.opt_in_key: the EMD opt-in key is not set\n"
                    "  hint: name the Extended Member Data key that holds email consent, e.g."
                    " opt_in_key: email_opt_in",
                )
            ],
            id="emd_opt_in_key_required",
        ),
        pytest.param(
            VALID_CONFIG.replace("  api_key:", '  api_url: "http://127.0.0.1:9",\n  api_kee:'),
            [(3, "optimove.api_kee: unknown key 'api_kee'\n  hint: did you mean 'api_key'?")],
            id="misspelt_key_suggests_the_nearest",
        ),
        pytest.param(
            VALID_CONFIG + "routeing: {}\nevents:\n  REDEMPTON: {name: redemption}\n",
            [
                (11, "routeing: unknown key 'routeing'\n  hint: did you mean 'routing'?"),
                (
                    13,
                    "events.REDEMPTON: unknown key 'REDEMPTON'\n"
                    "  hint: did you mean 'REDEMPTION'?",
                ),
            ],
            id="unknown_section_and_event_type",
        ),
        pytest.param(
            VALID_CONFIG + "dead_letter: {retention_days: soon}\n",
            [
                (
                    11,
                    "dead_letter.retention_days: Input should be a valid integer, unable to"
                    " parse string as an integer",
                )
            ],
            id="wrong_type_is_reported",
        ),
        pytest.param(
            VALID_CONFIG + "templates:\n  welcome:\n    kind: triggered\n"
            "    event: MEMBER_REGISTRATION\n    delivery: api\n",
            [
                (
                    12,
                    "templates.welcome: a triggered template needs a positive integer"
                    " template_id\n  hint: the TemplateID shown in OptiMail's template list",
                )
            ],
            id="triggered_template_without_template_id",
        ),
        pytest.param(
            VALID_CONFIG.replace("en_CA, default_currency: CAD", "xx_YY, default_currency: CAX"),
            [
                (
                    10,
                    "locale.default_locale: unknown locale 'xx_YY'\n"
                    "  hint: a Babel locale such as en_CA or fr_CA",
                ),
                (
                    10,
                    "locale.default_currency: unknown currency 'CAX'\n"
                    "  hint: an ISO 4217 code such as CAD or USD",
                ),
            ],
            id="unknown_locale_and_currency",
        ),
        pytest.param(
            VALID_CONFIG + "dead_letter:\n  dir: ${DL_DIR}\n",
            [(12, "dead_letter.dir: environment variable DL_DIR is not set")],
            id="unset_env_reference_is_an_error_outside_secrets",
        ),
        pytest.param(
            VALID_CONFIG + "templates:\n  welcome:\n    kind: triggered\n    template_id: 5\n"
            "    event: MEMBER_REGISTRATION\n",
            [
                (
                    15,
                    "templates.welcome.event: a triggered template in event mode is sent on the"
                    " reported event, but events.MEMBER_REGISTRATION is not mapped to an Optimove"
                    " event",
                )
            ],
            id="event_mode_needs_the_event_mapped",
        ),
        pytest.param(
            VALID_CONFIG.replace('  api_key: "${OPTIMOVE_API_KEY:-}"}', "  concurrency: 2}"),
            [
                (
                    1,
                    "optimove: warning: no api_key: sends will fail\n"
                    "  hint: api_key: ${OPTIMOVE_API_KEY}",
                )
            ],
            id="missing_api_key_is_a_warning",
        ),
    ],
)
def test_one_edit_yields_exactly_its_problems(
    write_config: WriteConfig, text: str, expected: list[tuple[int, str]]
) -> None:
    path = write_config(text)
    assert lines_of(path) == [f"{path}:{line}: {report}" for line, report in expected]


def test_attribute_name_type_and_duplicate(write_config: WriteConfig) -> None:
    text = VALID_CONFIG.replace(
        "attributes:\n",
        "attributes:\n  batch:\n"
        "    - {name: 1st_name, type: INT}\n"  # line 5
        "    - {name: Points, type: FLOAT}\n"  # line 6
        "    - {name: Tier, type: varchar(20)}\n"  # line 7
        "    - {name: Tier, type: VARCHAR(20)}\n",  # line 8
    )
    path = write_config(text)
    assert lines_of(path) == [
        f"{path}:5: attributes.batch[0].name: attribute name '1st_name' must start with a"
        " letter and hold only letters and digits (Optimove's naming rule)",
        f"{path}:6: attributes.batch[1].type: unknown attribute type 'FLOAT'; use one of"
        " DECIMAL(19,4), INT, BIGINT, DATE, VARCHAR(n), NVARCHAR(n) or an alias (bigint,"
        " boolean, date, decimal, int, integer, money, number, string, text)",
        f"{path}:8: attributes.batch[3].name: duplicate attribute 'Tier' (first at line 7)",
    ]


def test_realtime_attribute_source_must_exist(write_config: WriteConfig) -> None:
    text = VALID_CONFIG.replace(
        "attributes:\n",
        "attributes:\n  realtime:\n"
        "    - name: Tier\n"  # line 5
        "      type: string\n"
        "      source: data.teir\n"  # line 7
        "      events: [MEMBER_TIER]\n",
    )
    path = write_config(text)
    assert lines_of(path) == [
        f"{path}:7: attributes.realtime[0].source: 'data.teir' is not a field of MEMBER_TIER"
        " events\n  hint: did you mean 'data.tier'?"
    ]


def test_yaml_syntax_error_names_line_and_column(write_config: WriteConfig) -> None:
    path = write_config(VALID_CONFIG + "batch: {output: [unclosed\n")
    (problem,) = lines_of(path)
    assert problem == (
        f"{path}:11: (top): YAML syntax error at column 26: expected ',' or ']', but got"
        " '<stream end>'\n  hint: check indentation, colons and matching quotes/brackets on"
        " this line"
    )
    invoke("validate-config", str(path), expect=ExitCode.CONFIG)


TEMPLATE_BASE = (
    VALID_CONFIG
    + """\
templates:
  receipt:
    kind: transactional
    template_id: 7
    event: REDEMPTION
    file: receipt.html
    attribute_mappings:
      POINTS: data.points
      NAME: data.reward_name
"""
)


def test_template_tags_must_all_be_mapped(write_config: WriteConfig) -> None:
    html = (
        "<p>[%TRANS:POINTS%] [%TRANS:NAME%]</p>"
        "[%IF:[%TRANS:BALANCE%] != ''%]<b>[%UPPER:TRANS:VALUE%]</b>[%END:IF%]"
    )
    path = write_config(TEMPLATE_BASE, {"receipt.html": html})
    assert lines_of(path) == [
        f"{path}:16: templates.receipt.file: template receipt.html uses tags with no"
        " attribute_mappings entry: BALANCE, VALUE\n"
        "  hint: add each under attribute_mappings, e.g. BALANCE: data.<field>; Optimove would"
        " send them empty (HTTP 206)"
    ]


def test_unused_mapping_is_a_warning_and_strict_makes_it_fatal(
    write_config: WriteConfig,
) -> None:
    path = write_config(TEMPLATE_BASE, {"receipt.html": "<p>[%TRANS:POINTS%]</p>"})
    assert lines_of(path) == [
        f"{path}:19: templates.receipt.attribute_mappings.NAME: warning: mapping 'NAME' is not"
        " used by receipt.html"
    ]
    invoke("validate-config", str(path))
    invoke("validate-config", "--strict", str(path), expect=ExitCode.CONFIG)


def test_mapping_source_must_be_a_field_of_the_event(write_config: WriteConfig) -> None:
    text = TEMPLATE_BASE.replace("NAME: data.reward_name", "NAME: data.first_name")
    path = write_config(text, {"receipt.html": "[%TRANS:POINTS%][%TRANS:NAME%]"})
    assert lines_of(path) == [
        f"{path}:19: templates.receipt.attribute_mappings.NAME: 'data.first_name' is not a"
        " field of REDEMPTION events\n  hint: did you mean 'data.reward_name'?"
    ]


def test_template_kind_and_missing_file(write_config: WriteConfig) -> None:
    text = (
        VALID_CONFIG + "templates:\n  a: {kind: marketing}\n"
        "  b: {kind: transactional, template_id: 0, event: PURCHASE, file: nope.html}\n"
    )
    path = write_config(text)
    problems = lines_of(path)
    assert problems[0] == (
        f"{path}:12: templates.a.kind: Input should be 'transactional', 'triggered' or"
        " 'scheduled'"
    )
    assert problems[1] == (
        f"{path}:13: templates.b.template_id: a transactional template needs a positive"
        " integer template_id\n  hint: the TemplateID shown in OptiMail's template list"
    )
    assert problems[2].startswith(f"{path}:13: templates.b.file: cannot read template file ")
    assert len(problems) == 3


def test_scheduled_template_attribute_tags() -> None:
    html = "[%FIRSTNAME%] [%IF:[%TIER%] == 'Gold'%]x[%ELSE%]y[%END:IF%] [%CURRENT_DATE:dd%]"
    assert template_tags(html, "scheduled") == {"FIRSTNAME", "TIER"}
    assert template_tags("[%LOWER:EVENT:A%] [%TRANS:B%]", "transactional") == {"A", "B"}


def test_event_mapping_checks(write_config: WriteConfig) -> None:
    params = "".join(f"      p{i}: data.points\n" for i in range(51))
    text = (
        VALID_CONFIG + "events:\n"
        "  REDEMPTION:\n"
        "    name: Redemption\n"  # line 13
        "    context:\n"  # line 14
        "      BadName: data.points\n"  # line 15
        "      value: data.reward_valu\n" + params  # line 16
    )
    path = write_config(text)
    assert lines_of(path) == [
        f"{path}:13: events.REDEMPTION.name: Optimove event name 'Redemption' must be"
        " snake_case\n  hint: e.g. redemption",
        f"{path}:14: events.REDEMPTION.context: 53 context parameters; Optimove allows at"
        " most 50 per event",
        f"{path}:15: events.REDEMPTION.context.BadName: parameter name 'BadName' must be"
        " snake_case",
        f"{path}:16: events.REDEMPTION.context.value: 'data.reward_valu' is not a field of"
        " REDEMPTION events\n  hint: did you mean 'data.reward_value'?",
    ]


def test_routing_targets_must_exist_and_unrouted_types_warn(write_config: WriteConfig) -> None:
    text = VALID_CONFIG.replace(
        f"    - types: {ALL_TYPES}\n      to: [attributes]\n",
        "    - types: REDEMPTION\n"  # line 8
        "      to: [events, 'email:receit', webhook]\n"  # line 9
        "      where: [{field: data.pionts, op: in, value: 3}]\n",  # line 10
    )
    path = write_config(text)
    problems = lines_of(path)
    warnings = [p for p in problems if "warning:" in p]
    assert len(warnings) == 10
    assert warnings[:5] == [
        f"{path}:7: routing.rules: warning: no rule routes MEMBER_REGISTRATION events; they"
        " would be reported as unrouted",
        f"{path}:7: routing.rules: warning: no rule routes OPT_IN_EMAIL events; they would be"
        " reported as unrouted",
        f"{path}:7: routing.rules: warning: no rule routes MEMBER_PROFILE_UPDATE events; they"
        " would be reported as unrouted",
        f"{path}:7: routing.rules: warning: no rule routes MEMBER_TIER events; they would be"
        " reported as unrouted",
        f"{path}:7: routing.rules: warning: no rule routes PARTNER_CARD_LINKED events; they"
        " would be reported as unrouted",
    ]
    errors = [p for p in problems if "warning:" not in p]
    assert errors == [
        f"{path}:1: optimove: events are routed but no events token is set, so the events"
        " host would get no credential (the API key is never sent there unless events_auth"
        " says so)\n  hint: set optimove.events_token (events_token:"
        " ${OPTIMOVE_EVENTS_TOKEN}, or the variable OPTISYNC_OPTIMOVE__EVENTS_TOKEN) or"
        " optimove.events_token_file; if Optimove told you its events host takes the API"
        " key, set optimove.events_auth: api_key_header, or none if it takes no credential",
        f"{path}:1: optimove: events are routed but optimove.events_url is not set\n"
        "  hint: the events endpoint Optimove gave at onboarding",
        f"{path}:1: optimove: events are routed but optimove.tenant_id is not set",
        f"{path}:9: routing.rules[0].to[0]: REDEMPTION is routed to events but"
        " events.REDEMPTION is not mapped to an Optimove event",
        f"{path}:9: routing.rules[0].to[1]: target 'email:receit' names no template in"
        " templates",
        f"{path}:9: routing.rules[0].to[2]: unknown target 'webhook'\n"
        "  hint: one of: events, attributes, opt_in, promotions, email:<template>",
        f"{path}:10: routing.rules[0].where[0].field: 'data.pionts' is not a field of"
        " REDEMPTION events\n  hint: did you mean 'data.points'?",
        f"{path}:10: routing.rules[0].where[0].value: op 'in' needs a list value",
    ]


def test_literal_secret_is_a_warning(write_config: WriteConfig) -> None:
    path = write_config(VALID_CONFIG.replace("${OPTIMOVE_API_KEY:-}", "sk-live-123"))
    assert lines_of(path) == [
        f"{path}:2: optimove.api_key: warning: a literal secret is written in the file\n"
        "  hint: write api_key: ${OPTIMOVE_API_KEY} and export that variable"
    ]
    result = invoke("validate-config", str(path))
    assert "sk-live-123" not in result.stdout + result.stderr


def test_all_done_when_problems_in_one_file_in_one_run(write_config: WriteConfig) -> None:
    """51 attributes, triggered without template_id, unmapped tag, YAML error, misspelt key."""
    batch = "".join(f"    - {{name: Bt{i}, type: INT}}\n" for i in range(51))
    text = (
        VALID_CONFIG.replace("attributes:\n", f"attributes:\n  batch:\n{batch}").replace(
            "  api_key:", "  api_kee:"
        )
        + "templates:\n"
        "  welcome: {kind: triggered, event: MEMBER_REGISTRATION, delivery: api}\n"
        "  receipt:\n"
        "    kind: transactional\n"
        "    template_id: 7\n"
        "    event: REDEMPTION\n"
        "    file: receipt.html\n"
        "batch: {output: [unclosed\n"
    )
    path = write_config(text, {"receipt.html": "[%TRANS:POINTS%]"})
    result = invoke("validate-config", str(path), expect=ExitCode.CONFIG)
    lines = result.stderr.splitlines()
    assert any(":2: optimove.api_kee: unknown key 'api_kee'" in x for x in lines)
    assert any(":3: attributes: 51 custom attributes" in x for x in lines)
    assert any(":64: templates.welcome: a triggered template needs a positive" in x for x in lines)
    assert any(":69: templates.receipt.file: template receipt.html uses tags" in x for x in lines)
    assert any(":70: (top): YAML syntax error" in x for x in lines)
    assert lines[-1] == f"optisync: error: {path}: 5 error(s), 0 warning(s)"


def test_json_report(write_config: WriteConfig) -> None:
    path = write_config(VALID_CONFIG.replace("${OPTIMOVE_API_KEY:-}", "literal"))
    result = invoke("--json", "validate-config", str(path))
    report = json.loads(result.stdout)
    assert report["valid"] is True
    assert report["warnings"] == 1
    assert report["problems"][0] == {
        "file": str(path),
        "line": 2,
        "key": "optimove.api_key",
        "severity": "warning",
        "message": "a literal secret is written in the file",
        "hint": "write api_key: ${OPTIMOVE_API_KEY} and export that variable",
    }


def test_config_discovery_from_env(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write_config(VALID_CONFIG + "dead_letter: {retention_days: soon}\n")
    monkeypatch.setenv("OPTISYNC_CONFIG", str(path))
    result = invoke("validate-config", expect=ExitCode.CONFIG)
    assert f"{path}:11: dead_letter.retention_days" in result.stderr
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPTISYNC_CONFIG")
    result = invoke("validate-config", expect=ExitCode.CONFIG)
    assert "optisync.yaml:11: dead_letter.retention_days" in result.stderr


def test_env_override_is_validated_and_named(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(VALID_CONFIG)
    monkeypatch.setenv("OPTISYNC_DEAD_LETTER__RETENTION_DAYS", "-3")
    assert lines_of(path) == [
        "env OPTISYNC_DEAD_LETTER__RETENTION_DAYS: dead_letter.retention_days: Input should be"
        " greater than or equal to 1"
    ]


def test_example_config_is_valid() -> None:
    report = validate_config(EXAMPLES / "optisync.yaml")
    assert [p.render() for p in report.errors] == []


def test_event_mode_tags_are_checked_against_the_event_context(write_config: WriteConfig) -> None:
    text = (
        VALID_CONFIG + "events:\n"
        "  MEMBER_REGISTRATION:\n"
        "    {name: member_registration, context: {first_name: data.first_name}}\n"
        "templates:\n"
        "  welcome:\n"  # line 15
        "    kind: triggered\n"
        "    template_id: 5\n"
        "    event: MEMBER_REGISTRATION\n"
        "    file: welcome.html\n"  # line 19
        "    attribute_mappings: {TIER: data.tier}\n"
    )
    html = "[%EVENT:FIRST_NAME%] [%EVENT:TIER%] [%EVENT:CARD_TYPE%]"
    path = write_config(text, {"welcome.html": html})
    assert lines_of(path) == [
        f"{path}:19: templates.welcome.file: template welcome.html uses tags with no"
        " events.MEMBER_REGISTRATION.context parameter or attribute_mappings entry: CARD_TYPE\n"
        "  hint: add each under attribute_mappings, e.g. CARD_TYPE: data.<field>; Optimove would"
        " send them empty (HTTP 206)"
    ]


def test_attribute_set_conflicts_and_emd_map(write_config: WriteConfig) -> None:
    text = VALID_CONFIG.replace(
        "attributes:\n  emd:\n    opt_in_key: email_opt_in\n",
        "attributes:\n"
        "  realtime:\n"
        "    - {name: Tier, type: INT, source: data.tier, events: [MEMBER_TIER]}\n"  # 3
        "  batch:\n"
        "    - {name: Tier, type: DATE}\n"  # line 5
        "    - {name: Points, type: INT, events: [REDEMPTION]}\n"  # line 6
        "  emd:\n"
        "    opt_in_key: email_opt_in\n"
        "    map: {store: FavouriteStore}\n",  # line 9
    )
    path = write_config(text)
    assert lines_of(path) == [
        f"{path}:7: attributes.batch[0].type: 'Tier' is DATE here but INT in the other set",
        f"{path}:8: attributes.batch[1].events: batch attributes are exported nightly;"
        " 'events' applies to realtime ones",
        f"{path}:11: attributes.emd.map.store: EMD key 'store' maps to 'FavouriteStore', which no"
        " attribute set declares\n  hint: declare it under attributes.realtime or"
        " attributes.batch so it counts toward the limit",
    ]


def test_scheduled_template_takes_attribute_sources(write_config: WriteConfig) -> None:
    text = (
        VALID_CONFIG.replace(
            "attributes:\n", "attributes:\n  batch:\n    - {name: FirstName, type: string}\n"
        )
        + (
            "templates:\n"
            "  offers:\n"  # line 13
            "    kind: scheduled\n"
            "    attribute_mappings:\n"
            "      FIRSTNAME: attribute.FirstName\n"
            "      POINTS: attribute.Points\n"  # line 17
            "      TIER: data.tier\n"  # line 18
        )
    )
    path = write_config(text)
    assert lines_of(path) == [
        f"{path}:18: templates.offers.attribute_mappings.POINTS: 'attribute.Points' names no"
        " declared attribute",
        f"{path}:19: templates.offers.attribute_mappings.TIER: a scheduled template's mappings"
        " take attribute.<Name> sources",
    ]


def test_strict_counts_its_warnings_as_errors_in_json(write_config: WriteConfig) -> None:
    path = write_config(TEMPLATE_BASE, {"receipt.html": "<p>[%TRANS:POINTS%]</p>"})
    result = invoke("--json", "validate-config", "--strict", str(path), expect=ExitCode.CONFIG)
    report = json.loads(result.stdout)
    assert (report["valid"], report["errors"], report["warnings"]) == (False, 1, 1)


def test_a_file_that_does_not_parse_reports_only_that(tmp_path: Path) -> None:
    path = tmp_path / "optisync.yaml"
    path.write_text("events: [unclosed\n", encoding="utf-8")
    report = validate_config(path)
    assert len(report.problems) == 1 and report.problems[0].line == 1
    assert "warning" not in " ".join(p.render() for p in report.problems)


def test_output_escapes_a_lone_surrogate_instead_of_failing() -> None:
    import io

    from optisync.console import Output

    out, err = io.BytesIO(), io.BytesIO()
    wrap = {"encoding": "utf-8", "write_through": True}
    output = Output(stdout=io.TextIOWrapper(out, **wrap), stderr=io.TextIOWrapper(err, **wrap))
    output.write('{"key": "\ud800"}\n')
    output.line("unknown key '\ud800'")
    assert out.getvalue() == b'{"key": "\\ud800"}\n'
    assert err.getvalue() == b"unknown key '\\ud800'\n"
