"""The shape of the package, checked on every run: what import-linter cannot see."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "optisync"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_imports(text: str, here: str) -> list[str]:
    """``from other.module import _name`` in ``text``: a private name crossing a module."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("optisync") or node.module == here:
                continue
            found += [
                f"{node.lineno}: {node.module}.{alias.name}"
                for alias in node.names
                if alias.name.startswith("_") and not alias.name.startswith("__")
            ]
    return found


def test_the_checker_sees_a_private_import() -> None:
    text = (
        "from optisync.cards import _mask_digits, mask_text\n"
        "from optisync import __version__\n"
        "from optisync.cards import _own\n"
    )
    assert private_imports(text, "optisync.realtime.inputs") == [
        "1: optisync.cards._mask_digits",
        "3: optisync.cards._own",
    ]
    assert private_imports(text, "optisync.cards") == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_crosses_a_module(path: Path) -> None:
    assert private_imports(path.read_text(encoding="utf-8"), _module(path)) == []


# Comments and docstrings speak of this repository: its code and its docs/ pages.
OUTSIDE_REFERENCE = re.compile(
    r"design\.md|style\.md|optimove-api\.md|§|\bissue [0-9]|\bM[0-9]{1,2}\b"
)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_comment_cites_a_document_outside_the_repository(path: Path) -> None:
    hits = [
        f"{path.name}:{n}: {line.strip()}"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE_REFERENCE.search(line)
    ]
    assert hits == []
