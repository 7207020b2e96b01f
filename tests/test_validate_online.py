"""validate-config --online against the live sandbox: the account's attributes and templates."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from optisync.errors import ExitCode
from optisync.sandbox import Sandbox, SandboxConfig
from optisync.sandbox.catalog import Catalog, TemplateDetail, catalog_from_config
from tests.support import EXAMPLES, invoke

KEY = "sandbox-key-online"


def line_of(path: Path, text: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


@pytest.fixture
def config(example_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPTIMOVE_API_KEY", KEY)
    monkeypatch.setenv("OPTIMOVE_EVENTS_TOKEN", "token")
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__RETRY__BASE_DELAY", "0.001")
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__RETRY__MAX_DELAY", "0.01")
    return example_dir / "optisync.yaml"


Serve = Callable[[Catalog], Sandbox]


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Serve]:
    """Start a sandbox holding ``catalog`` and point the config at it; it is stopped after
    the test whatever the test's outcome."""
    with contextlib.ExitStack() as stack:

        def start(catalog: Catalog) -> Sandbox:
            box = stack.enter_context(Sandbox(SandboxConfig(api_key=KEY, catalog=catalog)))
            monkeypatch.setenv("OPTIMOVE_API_URL", box.url)
            return box

        yield start


def example_account(config: Path) -> Catalog:
    """What a real account for the example holds, written out rather than derived from the
    config: every attribute it uses and more, every template it sends itself and one it
    does not. Tags are left to the content, as an account's TemplateAttributes may be."""
    attributes = (
        *("FirstName", "LastName", "PreferredLanguage", "TierName", "TierExpiry"),
        *("PartnerLinkStatus", "PartnerLinkId", "HouseholdId", "HouseholdPoints"),
        *("FavouriteStore", "PointsBalance", "EnrolledOn", "LifetimeSpend", "OfferName"),
        *("OfferEnd", "Age", "HomeStoreRegion", "LastVisitDate"),  # unused by the config
    )
    files = {
        1001: "redemption",
        1002: "purchase",
        1003: "partner_card_linked",
        1004: "partner_card_unlinked",
        1005: "points_transfer",
        1006: "household_balance",
        1007: "tier_change",
        1008: "gameplay",
    }
    folder = config.parent / "templates"
    templates = tuple(
        TemplateDetail(tid, name, (folder / f"{name}.html").read_text(encoding="utf-8"), ())
        for tid, name in files.items()
    )
    other = TemplateDetail(4242, "password_reset", "<p>[%TRANS:RESET_LINK%]</p>", ("RESET_LINK",))
    return Catalog(attributes, (*templates, other))


def test_a_clean_account_passes_and_is_read_with_two_calls(config: Path, serve: Serve) -> None:
    box = serve(example_account(config))
    result = invoke("--json", "validate-config", str(config), "--online")
    assert box.stats["requests"] == 2
    data = json.loads(result.stdout)
    assert data["valid"] is True
    assert data["errors"] == 0
    assert data["online"]["checked"] is True
    assert (data["online"]["attributes"], data["online"]["templates"]) == (18, 9)
    # the welcome template is sent by Optimove's own campaign (delivery: event): the account's
    # transactional templates need not list it
    assert not [p for p in data["problems"] if "Optimove" in p["message"]]
    assert not [p for p in data["problems"] if p["key"].startswith("templates.welcome")]


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("TierExpiry", "TierExpiryDate", "attributes.realtime[4].name"),  # realtime
        ("LifetimeSpend", "LifetimeSpendCAD", "attributes.batch[4].name"),  # batch only
    ],
)
def test_one_renamed_attribute_in_that_account_fails(
    config: Path, serve: Serve, old: str, new: str, key: str
) -> None:
    clean = example_account(config)
    serve(
        dataclasses.replace(
            clean, attributes=tuple(new if a == old else a for a in clean.attributes)
        )
    )
    result = invoke("--json", "validate-config", str(config), "--online", expect=ExitCode.CONFIG)
    data = json.loads(result.stdout)
    errors = [p for p in data["problems"] if p["severity"] == "error"]
    assert [(p["key"], p["message"]) for p in errors] == [
        (key, f"the Optimove account has no attribute '{old}'")
    ]
    assert errors[0]["hint"] == f"did you mean '{new}'?"


def test_an_attribute_the_account_lacks_is_an_error_with_the_nearest_name(
    config: Path, serve: Serve
) -> None:
    full = catalog_from_config(config)
    renamed = tuple("TierExpiryDate" if a == "TierExpiry" else a for a in full.attributes)
    serve(dataclasses.replace(full, attributes=renamed))
    result = invoke("validate-config", str(config), "--online", expect=ExitCode.CONFIG)
    line = line_of(config, "- name: TierExpiry")
    assert (
        f"{config}:{line}: attributes.realtime[4].name: the Optimove account has no attribute"
        " 'TierExpiry'\n  hint: did you mean 'TierExpiryDate'?"
    ) in result.stderr
    assert "1 error(s)" in result.stderr


def test_a_template_id_the_account_does_not_list_is_an_error(config: Path, serve: Serve) -> None:
    full = catalog_from_config(config)
    fewer = tuple(t for t in full.templates if t.template_id != 1002)
    serve(dataclasses.replace(full, templates=fewer))
    result = invoke("validate-config", str(config), "--online", expect=ExitCode.CONFIG)
    line = line_of(config, "template_id: 1002")
    assert (
        f"{config}:{line}: templates.purchase_confirmation.template_id: template_id 1002 is not"
        " among the account's transactional templates"
    ) in result.stderr
    assert "1 error(s)" in result.stderr


def test_a_triggered_template_sent_through_the_api_must_be_in_the_account(
    config: Path, serve: Serve
) -> None:
    text = config.read_text(encoding="utf-8")
    assert text.count("delivery: event") == 1
    config.write_text(text.replace("delivery: event", "delivery: api"), encoding="utf-8")
    serve(example_account(config))  # lists 1001-1008 and 4242, not the welcome's 2001
    result = invoke("validate-config", str(config), "--online", expect=ExitCode.CONFIG)
    line = line_of(config, "template_id: 2001")
    assert (
        f"{config}:{line}: templates.welcome.template_id: template_id 2001 is not among the"
        " account's transactional templates"
    ) in result.stderr
    assert "1 error(s)" in result.stderr


def test_a_tag_the_config_does_not_map_is_an_error_and_the_stale_file_a_warning(
    config: Path, serve: Serve
) -> None:
    full = catalog_from_config(config)

    def changed(t: TemplateDetail) -> TemplateDetail:
        if t.template_id != 1001:
            return t
        content = t.content.replace("[%TRANS:", "[%TRANS:VOUCHER_CODE%] [%TRANS:", 1)
        return dataclasses.replace(t, content=content)

    catalog = dataclasses.replace(full, templates=tuple(changed(t) for t in full.templates))
    serve(catalog)
    result = invoke("--json", "validate-config", str(config), "--online", expect=ExitCode.CONFIG)
    problems = json.loads(result.stdout)["problems"]
    errors = [p for p in problems if p["severity"] == "error"]
    assert len(errors) == 1
    assert errors[0]["key"] == "templates.redemption_confirmation.attribute_mappings"
    assert errors[0]["message"] == (
        "template 1001 in Optimove uses tags the config does not map: VOUCHER_CODE"
    )
    stale = [p for p in problems if p["key"] == "templates.redemption_confirmation.file"]
    assert stale and stale[0]["severity"] == "warning"
    assert "differs from template 1001's content in Optimove" in stale[0]["message"]


def test_a_mapping_the_account_template_no_longer_uses_is_a_warning(
    config: Path, serve: Serve
) -> None:
    full = catalog_from_config(config)
    redemption = next(t for t in full.templates if t.template_id == 1001)
    dropped = redemption.tags[0]
    content = redemption.content.replace(f"[%TRANS:{dropped}%]", "")
    catalog = dataclasses.replace(
        full,
        templates=tuple(
            dataclasses.replace(t, content=content, tags=t.tags[1:]) if t is redemption else t
            for t in full.templates
        ),
    )
    serve(catalog)
    result = invoke("--json", "validate-config", str(config), "--online")
    problems = json.loads(result.stdout)["problems"]
    key = f"templates.redemption_confirmation.attribute_mappings.{dropped}"
    unused = [p for p in problems if p["key"] == key]
    assert unused and unused[0]["severity"] == "warning"
    assert unused[0]["message"] == f"mapping '{dropped}' is not used by template 1001 in Optimove"


def test_unreachable_optimove_exits_6_with_the_offline_report(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPTIMOVE_EVENTS_TOKEN")  # so the offline report has a warning to keep
    offline = invoke("validate-config", str(config))
    monkeypatch.setenv("OPTIMOVE_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__RETRY__MAX_ATTEMPTS", "2")
    result = invoke(
        "validate-config", str(config), "--online", "--timeout", "5", expect=ExitCode.UNAVAILABLE
    )
    report = [line for line in offline.stderr.splitlines() if "valid (" not in line]
    assert any("OPTIMOVE_EVENTS_TOKEN" in line for line in report)
    assert "\n".join(report) in result.stderr
    assert "Optimove did not answer /current/model/GetCustomerAttributeList" in result.stderr


def test_a_refused_key_exits_5_and_json_says_the_account_was_not_checked(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Sandbox(SandboxConfig(api_key="another-key")) as box:
        monkeypatch.setenv("OPTIMOVE_API_URL", box.url)
        result = invoke(
            "--json", "validate-config", str(config), "--online", expect=ExitCode.REFUSED
        )
    data = json.loads(result.stdout)
    assert data["online"] == {
        "checked": False,
        "error": "Optimove refused the API key (HTTP 403) on"
        " /current/model/GetCustomerAttributeList: The API key is invalid",
    }
    assert data["valid"] is True  # the offline report stands: the config itself is fine


def test_a_config_error_outranks_an_unreachable_account(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = config.read_text(encoding="utf-8").replace("template_id: 1002", "template_id: 0")
    config.write_text(text, encoding="utf-8")
    monkeypatch.setenv("OPTIMOVE_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("OPTISYNC_OPTIMOVE__RETRY__MAX_ATTEMPTS", "1")
    result = invoke("validate-config", str(config), "--online", expect=ExitCode.CONFIG)
    assert "positive integer template_id" in result.stderr
    assert "Optimove did not answer" in result.stderr


def test_the_sandbox_serves_the_account_from_its_options(tmp_path: Path) -> None:
    import httpx

    catalog = Catalog(
        ("Tier", "Points"), (TemplateDetail(7, "receipt", "<p>[%TRANS:A%]</p>", ("A",)),)
    )
    with Sandbox(SandboxConfig(api_key=KEY, catalog=catalog)) as box:
        headers = {"X-API-KEY": KEY}
        attrs = httpx.get(f"{box.url}/current/model/GetCustomerAttributeList", headers=headers)
        details = httpx.get(
            f"{box.url}/current/transactionalmail/GetTemplateDetails", headers=headers
        )
    assert [a["RealFieldName"] for a in attrs.json()] == ["Tier", "Points"]
    assert details.json() == [
        {
            "TemplateID": 7,
            "TemplateName": "receipt",
            "TemplateContent": "<p>[%TRANS:A%]</p>",
            "TemplateAttributes": ["A"],
        }
    ]


def test_the_sandbox_command_learns_the_account_from_a_config_or_its_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import optisync.sandbox as sandbox_package

    served: list[SandboxConfig] = []
    monkeypatch.setattr(sandbox_package, "serve", lambda config, host, port: served.append(config))
    example = str(EXAMPLES / "optisync.yaml")

    invoke("sandbox", "--templates-from", example)
    invoke("sandbox", "--attributes", "Tier, Points")
    invoke("sandbox", "--templates-from", example, "--attributes", "Tier")
    learnt, listed, both = (config.catalog for config in served)
    assert learnt is not None and listed is not None and both is not None
    assert "TierExpiry" in learnt.attributes
    assert 1001 in learnt.tags_by_id()
    assert served[0].templates == learnt.tags_by_id()
    assert (listed.attributes, listed.templates, served[1].templates) == (
        ("Tier", "Points"),
        (),
        None,
    )
    assert both.attributes == ("Tier",)
    assert both.templates == learnt.templates
