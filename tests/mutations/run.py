"""Mutation check: every mutant in ``mutants.py`` must make a test fail.

Usage: ``python tests/mutations/run.py [-k SUBSTRING] [--quick]``. The repository is copied
to a temporary folder (the checkout is never touched); each mutant is applied there as a
text patch, its tests run with this interpreter and ``PYTHONPATH`` at the copy, then the
patch is undone. One line per mutant; the last line is ``mutants: N, killed: M``; the exit
status is 1 when a mutant survives (or a patch no longer applies). ``--quick`` runs only
each mutant's first test selection; ``--every`` runs all of them, to show each one kills.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from tests.mutations.mutants import MUTANTS, Mutant  # noqa: E402

IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv*",
    "var",
    "dist",
    "build",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "*.egg-info",
)
FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


def run_tests(copy: Path, selection: str) -> tuple[bool, str]:
    """Run one selection in the copy: (it failed, the first failing test or why)."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    args = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rfE"]
    args += shlex.split(selection)
    proc = subprocess.run(args, cwd=copy, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode == 0:
        return False, ""
    if proc.returncode == 5:
        raise SystemExit(f"{selection}: no test selected; the mutant list is out of date")
    found = FAILED.findall(proc.stdout)
    return True, found[0] if found else f"{selection} (exit {proc.returncode})"


def apply(copy: Path, mutant: Mutant) -> str:
    path = copy / mutant.path
    text = path.read_text(encoding="utf-8")
    count = text.count(mutant.old)
    if count != 1:
        raise ValueError(f"the patch matches {count} times in {mutant.path}")
    path.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only mutants whose name contains this")
    parser.add_argument("--quick", action="store_true", help="first test selection only")
    parser.add_argument("--every", action="store_true", help="run every selection")
    options = parser.parse_args()
    mutants = [m for m in MUTANTS if options.k.lower() in m.name.lower()]
    killed = 0
    with tempfile.TemporaryDirectory(prefix="optisync-mutants-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=IGNORE, symlinks=True)
        for mutant in mutants:
            started = time.monotonic()
            try:
                original = apply(copy, mutant)
            except ValueError as exc:
                print(f"{mutant.name}: NOT APPLIED ({exc})", flush=True)
                continue
            try:
                selections = mutant.tests[:1] if options.quick else mutant.tests
                killers: list[str] = []
                for selection in selections:
                    failed, by = run_tests(copy, selection)
                    if failed:
                        killers.append(by)
                    if killers and not options.every:
                        break
                    if options.every and not failed:
                        killers.append(f"NOT {selection}")
                caught = [k for k in killers if not k.startswith("NOT ")]
                verdict = f"killed by {', '.join(killers)}" if caught else "survived"
                killed += bool(caught)
            finally:
                (copy / mutant.path).write_text(original, encoding="utf-8")
            print(f"{mutant.name}: {verdict} ({time.monotonic() - started:.0f}s)", flush=True)
    print(f"mutants: {len(mutants)}, killed: {killed}")
    return 0 if killed == len(mutants) else 1


if __name__ == "__main__":
    raise SystemExit(main())
