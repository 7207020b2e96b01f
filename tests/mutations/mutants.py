"""The mutants: small text patches, each with the tests that must fail because of it.

A patch replaces ``old`` by ``new`` in one file; ``old`` must occur exactly once, so a
refactor that moves the code makes the runner say so instead of testing nothing. Tests
are pytest node ids or ``path -k expr`` selections, quickest first: the first failure kills.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


QUICK_ORACLE = "tests/test_fault_suite.py::test_a_rerun_without_its_journal_mails_no_one_twice"

MUTANTS = (
    Mutant(
        "routing drops a message's last target",
        "optisync/realtime/routing.py",
        "    return Route(tuple(targets), tuple(matched))",
        "    return Route(tuple(targets[:-1] if len(targets) > 1 else targets), tuple(matched))",
        (QUICK_ORACLE, "tests/test_crash.py::test_push_killed_mid_send_then_rerun"),
    ),
    Mutant(
        "attribute parts not planned",
        "optisync/realtime/plan.py",
        '            if kind == "attributes":\n                plan.parts.extend(',
        '            if kind == "attributes-never":\n                plan.parts.extend(',
        (QUICK_ORACLE, "tests/test_crash.py::test_push_killed_mid_send_then_rerun"),
    ),
    Mutant(
        "journal skip disabled",
        "optisync/realtime/settle.py",
        "        return self.journal is not None and self.journal.handled(message_id, slot)",
        "        return False",
        (
            "tests/test_reliability.py -k signal_exits_130_and_a_rerun_finishes",
            "tests/test_crash.py::test_push_killed_mid_send_then_rerun",
        ),
    ),
    Mutant(
        "a recorded bulk mail formed anew after a restart",
        "optisync/realtime/push.py",
        "        return self.journal.recorded_pack(message.message_id, part.slot)",
        "        return None",
        (
            "tests/test_linger.py::"
            "test_a_bulk_mail_in_the_air_at_a_crash_goes_again_as_the_same_call",
        ),
    ),
    Mutant(
        "no dead letter written for a failed part",
        "optisync/realtime/settle.py",
        "        self._write(\n            DeadLetter(\n"
        "                message_id=envelope.message_id,",
        "        (lambda _letter: None)(\n            DeadLetter(\n"
        "                message_id=envelope.message_id,",
        (
            "tests/test_fault_suite.py::test_fault_suite",
            "tests/test_crash.py::test_replay_killed_mid_send_then_rerun",
        ),
    ),
    Mutant(
        "UniqueMessageID made random",
        "optisync/realtime/plan.py",
        '    digest = hashlib.sha256(f"{message_id}\\x1f{name}'
        '\\x1f{template.template_id}".encode())',
        '    digest = hashlib.sha256(__import__("os").urandom(16))',
        (QUICK_ORACLE,),
    ),
    Mutant(
        "batch state advanced before _SUCCESS",
        "optisync/batch/local.py",
        "        publish_files(writer, staged.files, con, staged.totals, summary, started)\n"
        "        for tmp, ds in staged.state:  # only now: manifest and _SUCCESS are on disk\n"
        "            state.commit(tmp, ds)",
        "        for tmp, ds in staged.state:\n"
        "            state.commit(tmp, ds)\n"
        "        publish_files(writer, staged.files, con, staged.totals, summary, started)",
        (
            "tests/batch/test_export_batch.py -k crash",
            "tests/test_crash.py::test_export_killed_at_random_then_rerun",
        ),
    ),
    # -- our own ---------------------------------------------------------------------------
    Mutant(
        "Optimove's 409 for a mail sent before taken as a failure",
        "optisync/realtime/settle.py",
        '        if answer.ok:\n            if answer.outcome == "duplicate":',
        '        if answer.ok and answer.outcome != "duplicate":\n'
        '            if answer.outcome == "duplicate":',
        (QUICK_ORACLE,),
    ),
    Mutant(
        "events signed with something else than the token",
        "optisync/optimove/client.py",
        '    return hmac.new(token.encode("utf-8"), content, hashlib.sha256).hexdigest()',
        '    return hmac.new(token.encode("utf-8"), content + b" ", hashlib.sha256).hexdigest()',
        ("tests/cassettes/test_contract.py",),
    ),
    Mutant(
        "X-API-KEY header left out",
        "optisync/optimove/client.py",
        '        return {"X-API-KEY": key.get_secret_value()}\n\n',
        "        return {}\n\n",
        ("tests/cassettes/test_contract.py",),
    ),
    Mutant(
        "the unsubscribe list never told of consent",
        "optisync/realtime/plan.py",
        '    if settings.method in {"unsubscribe_list", "both"}:',
        '    if settings.method in {"unsubscribe_list"}:',
        (QUICK_ORACLE, "tests/test_fault_suite.py::test_fault_suite"),
    ),
)
