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
Optimove's answer to a call formed again is recorded too (``record_answer``): a 409 says
every recipient it was recorded with was mailed, a 2xx that the call's id is now spent on
the recipients it carried, so one of the others that comes later is new mail.
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
# a line recording Optimove's answer to a call formed again: "A <id> went" (409) or
# "A <id> took <count> <key>..." (2xx, with the parts it carried)
_ANSWER = "A "


@dataclass(frozen=True)
class RecordedCall:
    """The bulk mail an earlier run recorded a part in, as it stands for that part."""

    uid: str
    unsettled: int  # parts still to go under ``uid``, this one among them
    went: bool = False  # Optimove said the call went (409): this part was mailed


def _key(message_id: str, slot: str) -> str:
    return hashlib.sha1(f"{message_id}\x1f{slot}".encode(), usedforsecurity=False).hexdigest()[:24]


class Journal:
    def __init__(self, path: Path, *, fresh: bool = False) -> None:
        self.path = path
        self._done: set[str] = set()
        self._packs: dict[str, tuple[str, list[str]]] = {}  # part key -> its recorded call
        self._went: set[str] = set()  # recorded calls Optimove said went before
        self._took: dict[str, set[str]] = {}  # recorded call -> the parts it went with
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
        fields = line.split()
        if len(fields) < 3:
            return
        _, uid, count, *keys = fields
        if count.isdigit() and int(count) == len(keys) and all(len(k) == 24 for k in keys):
            for key in keys:
                self._packs[key] = (uid, keys)

    def _read_answer(self, line: str) -> None:
        # a line cut short is no answer: the call is formed again and asks Optimove again
        match line.split():
            case [_, uid, "went"]:
                self._went.add(uid)
            case [_, uid, "took", count, *keys] if count.isdigit() and int(count) == len(
                keys
            ) and all(len(k) == 24 for k in keys):
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

    def record_answer(self, uid: str, parts: list[tuple[str, str]], *, went: bool) -> None:
        """Optimove's answer to the recorded call ``uid`` formed again with ``parts``: 409
        (``went``: the first call went through) or 2xx (it did not, until now)."""
        if uid in self._took:
            return  # answered already: a 409 now is for the parts that call took
        keys = [_key(message_id, slot) for message_id, slot in parts]
        if went:
            self._went.add(uid)
            self._file.write(f"{_ANSWER}{uid} went\n")
        else:
            self._took[uid] = set(keys)
            self._file.write(f"{_ANSWER}{uid} took {len(keys)} {' '.join(keys)}\n")
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
                return None  # the id went with other recipients: this one was never mailed
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
