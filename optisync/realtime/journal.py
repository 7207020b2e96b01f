"""The journal of a bulk input: which parts of which messages are already handled.

A crashed or killed ``push-event --input FILE`` leaves its journal behind; a rerun of the
same file skips every part recorded there, so nothing Optimove acknowledged is sent again.
A part is recorded only once it is settled — accepted by Optimove, or safely written as a
dead letter — so nothing is skipped that was not handled. Entries are short hashes, not
member data.

A bulk mail's recipients are recorded too, before the call goes out (``record_pack``): a
pack cut by time cannot be formed again by a rerun, so a rerun sends the recipients it
finds there, still unsettled, as that same call again, under the same ``UniqueMessageID``,
which Optimove refuses (409) if the first call went through. Nobody is mailed twice.
The first call formed again spends the id on the recipients it carries: that is recorded
before it goes (``record_spent``), so one of the others that comes later (a call sent
short) is new mail, never refused under an id it had no part in. A 409 to the first call
formed again says the first call went, and every recipient it was recorded with was mailed
(``record_went``).
"""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from optisync.durable import is_symlink_error, open_private
from optisync.errors import StorageError


def journal_path(state_dir: Path, input_file: Path) -> Path:
    """One journal per input file (by absolute path)."""
    digest = hashlib.sha256(str(input_file.resolve()).encode()).hexdigest()[:16]
    return state_dir / "journals" / f"{digest}.journal"


_PACK = "P "  # a line recording a bulk mail's id and parts; entries are 24 hex characters
# a line on a call formed again: "A <id> took <count> <key>..." (its id spent on those
# parts) or "A <id> went" (Optimove refused it: the first call went)
_ANSWER = "A "


@dataclass(frozen=True)
class RecordedCall:
    """The bulk mail an earlier run recorded a part in, as it stands for that part."""

    uid: str
    unsettled: int  # parts still to go under ``uid``, this one among them
    went: bool = False  # Optimove said the call went (409): this part was mailed


def _whole(count: str, keys: list[str]) -> bool:
    """Whether a line's keys are all there, as many as it says: a kill cuts lines short."""
    return count.isdigit() and int(count) == len(keys) and all(len(k) == 24 for k in keys)


def _key(message_id: str, slot: str) -> str:
    return hashlib.sha1(f"{message_id}\x1f{slot}".encode(), usedforsecurity=False).hexdigest()[:24]


class Journal:
    def __init__(self, path: Path, *, fresh: bool = False) -> None:
        self.path = path
        self._done: set[str] = set()
        self._packs: dict[str, tuple[str, list[str]]] = {}  # part key -> its recorded call
        self._went: set[str] = set()  # recorded calls Optimove said went before
        self._took: dict[str, set[str]] = {}  # recorded call -> the parts its id is spent on
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if fresh:
                path.unlink(missing_ok=True)
            # The name is predictable: never read or append through a planted link.
            fd = open_private(path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
            self._file: IO[str] = os.fdopen(fd, "a+", encoding="ascii", errors="replace")
            self._file.seek(0)
            # a line cut short by a kill is ignored: that part is simply redone, and the
            # call of a pack line cut short never went out (it is written first)
            line = ""
            for line in self._file:
                if len(line) == 25:
                    self._done.add(line[:24])
                elif line.startswith(_PACK):
                    self._read_pack(line)
                elif line.startswith(_ANSWER):
                    self._read_answer(line)
            self._file.seek(0, os.SEEK_END)
            if self._file.tell() and not line.endswith("\n"):
                self._file.write("\n")  # a line cut short stays apart from what follows
        except OSError as exc:
            reason = "it is a symbolic link" if is_symlink_error(exc) else exc.strerror or exc
            raise StorageError(
                f"cannot use the input journal {path}: {reason}",
                hint="check optimove.state_dir is writable and has space",
            ) from None

    def _read_pack(self, line: str) -> None:
        # "P <id> <count> <key>...": a line cut short lacks keys, or has its last one short
        match line.split():
            case [_, uid, count, *keys] if _whole(count, keys):
                for key in keys:
                    self._packs[key] = (uid, keys)

    def _read_answer(self, line: str) -> None:
        # a line cut short says nothing: a "took" line is written before its call goes
        match line.split():
            case [_, uid, "went"]:
                self._went.add(uid)
            case [_, uid, "took", count, *keys] if _whole(count, keys):
                self._took[uid] = set(keys)

    def __len__(self) -> int:
        return len(self._done)

    def handled(self, message_id: str, slot: str) -> bool:
        return bool(self._done) and _key(message_id, slot) in self._done

    def record(self, message_id: str, slot: str) -> None:
        self._file.write(_key(message_id, slot) + "\n")

    def record_pack(self, uid: str, parts: list[tuple[str, str]]) -> None:
        """A bulk mail's ``UniqueMessageID`` and parts (message id, slot), on disk before
        the call goes out."""
        keys = " ".join(_key(message_id, slot) for message_id, slot in parts)
        self._file.write(f"{_PACK}{uid} {len(parts)} {keys}\n")
        self._sync()  # a record lost to a power cut would let a rerun mail these again

    def _sync(self) -> None:
        self.flush()
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise StorageError(f"cannot write the input journal {self.path}: {exc}") from None

    def spent(self, uid: str) -> bool:
        """Whether a call was formed again from the recorded call ``uid`` already."""
        return uid in self._took

    def record_spent(self, uid: str, parts: list[tuple[str, str]]) -> None:
        """The recorded call ``uid`` goes again with ``parts``: its id is theirs."""
        keys = list(dict.fromkeys(_key(message_id, slot) for message_id, slot in parts))
        self._took[uid] = set(keys)
        self._file.write(f"{_ANSWER}{uid} took {len(keys)} {' '.join(keys)}\n")
        self._sync()

    def record_went(self, uid: str) -> None:
        """Optimove refused the first call formed again from ``uid`` (409): the first call
        went, and mailed every recipient it was recorded with."""
        self._went.add(uid)
        self._file.write(f"{_ANSWER}{uid} went\n")
        self._sync()

    def recorded_pack(self, message_id: str, slot: str) -> RecordedCall | None:
        """The call an earlier run recorded this part in, or None: the part is new mail."""
        if not self._packs:
            return None
        key = _key(message_id, slot)
        found = self._packs.get(key)
        if found is None:
            return None
        uid, keys = found
        if uid in self._went:
            return RecordedCall(uid, 0, went=True)
        took = self._took.get(uid)
        if took is not None:
            if key not in took:
                return None  # the id is spent on other recipients: this one is new mail
            keys = [k for k in keys if k in took]
        return RecordedCall(uid, sum(k not in self._done for k in keys))

    def flush(self) -> None:
        """Hand the entries to the OS: they survive a killed process from here on."""
        try:
            self._file.flush()
        except OSError as exc:
            raise StorageError(f"cannot write the input journal {self.path}: {exc}") from None

    def close(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError:
            pass
        self._file.close()
