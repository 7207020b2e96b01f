"""Every mutant of the mutation check still matches the code exactly once.

The check itself runs in CI (``tests/mutations/run.py``); this keeps a refactoring from
silently turning a mutant into a patch that applies nowhere.
"""

from __future__ import annotations

import pytest

from tests.mutations.mutants import MUTANTS, Mutant
from tests.support import ROOT


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_the_mutant_applies_exactly_once(mutant: Mutant) -> None:
    text = (ROOT / mutant.path).read_text(encoding="utf-8")
    assert text.count(mutant.old) == 1
    assert mutant.new != mutant.old
