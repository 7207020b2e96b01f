"""The test suite's own shape: shared helpers live in tests/support.py, fixtures in conftest."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
MODULES = sorted(p for p in TESTS.rglob("*.py") if ".venv" not in p.parts)
CONFTESTS = [p for p in MODULES if p.name == "conftest.py"]


def helper_imports(text: str) -> list[str]:
    """Imports of a conftest or of another test module: helpers belong in tests.support."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            leaf = module.rpartition(".")[2]
            if leaf == "conftest" or leaf.startswith("test_"):
                found.append(f"{node.lineno}: {module}")
        elif isinstance(node, ast.Import):
            found += [
                f"{node.lineno}: {alias.name}"
                for alias in node.names
                if alias.name.rpartition(".")[2] == "conftest"
                or alias.name.rpartition(".")[2].startswith("test_")
            ]
    return found


def non_fixtures(text: str) -> list[str]:
    """Top-level definitions of a conftest that are neither fixtures nor pytest hooks."""
    found = []
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            is_fixture = any(
                ast.unparse(d.func if isinstance(d, ast.Call) else d) == "pytest.fixture"
                for d in node.decorator_list
            )
            if not is_fixture and not node.name.startswith("pytest_"):
                found.append(f"{node.lineno}: def {node.name}")
        elif isinstance(node, ast.ClassDef):
            found.append(f"{node.lineno}: class {node.name}")
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            found.append(f"{node.lineno}: {ast.unparse(node).partition('=')[0].strip()}")
    return found


def test_the_checkers_see_what_they_look_for() -> None:
    text = (
        "from .conftest import invoke\n"
        "from tests.conftest import KEY\n"
        "from .test_validate_config import BASE\n"
        "import tests.conftest\n"
        "from tests.support import invoke\n"
        "from tests.optimove import loopback\n"
    )
    assert helper_imports(text) == [
        "1: .conftest",
        "2: tests.conftest",
        "3: .test_validate_config",
        "4: tests.conftest",
    ]
    conftest = (
        "import pytest\n"
        "KEY = 'k'\n"
        "class Fake: ...\n"
        "def helper() -> None: ...\n"
        "@pytest.fixture\ndef fake() -> None: ...\n"
        "@pytest.fixture(autouse=True)\ndef _env() -> None: ...\n"
        "def pytest_terminal_summary(terminalreporter) -> None: ...\n"
    )
    assert non_fixtures(conftest) == ["2: KEY", "3: class Fake", "4: def helper"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(TESTS)))
def test_helpers_are_imported_from_support_only(path: Path) -> None:
    assert helper_imports(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", CONFTESTS, ids=lambda p: str(p.relative_to(TESTS)))
def test_conftest_holds_fixtures_only(path: Path) -> None:
    assert non_fixtures(path.read_text(encoding="utf-8")) == []
