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
"""

import hashlib
import os
from pathlib import Path
from typing import IO

from optisync.durable import is_symlink_error, open_private
from optisync.errors import StorageError


def journal_path(state_dir: Path, input_file: Path) -> Path:
    """One journal per input file (by absolute path)."""
    digest = hashlib.sha256(str(input_file.resolve()).encode()).hexdigest()[:16]
    return state_dir / "journals" / f"{digest}.journal"


_PACK = "P "  # a line recording a bulk mail's id and parts; entries are 24 hex characters


def _key(message_id: str, slot: str) -> str:
    return hashlib.sha1(f"{message_id}\x1f{slot}".encode(), usedforsecurity=False).hexdigest()[:24]


class Journal:
    def __init__(self, path: Path, *, fresh: bool = False) -> None:
        self.path = path
        self._done: set[str] = set()
        self._packs: dict[str, tuple[str, list[str]]] = {}  # part key -> its recorded call
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
        self.flush()
        try:  # a record lost to a power cut would let a rerun mail these recipients again
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise StorageError(f"cannot write the input journal {self.path}: {exc}") from None

    def recorded_pack(self, message_id: str, slot: str) -> tuple[str, int] | None:
        """The call an earlier run recorded this part in: its ``UniqueMessageID`` and how
        many of its parts are still unsettled (this one among them), or None."""
        if not self._packs:
            return None
        found = self._packs.get(_key(message_id, slot))
        if found is None:
            return None
        uid, keys = found
        return uid, sum(key not in self._done for key in keys)

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
