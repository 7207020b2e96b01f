"""Making a write survive a crash: a file is written under a temporary name, fsynced,
renamed into place, and the folder that names it fsynced. A reader sees the old content
or the new, never a part."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

__all__ = ["TMP_PREFIX", "atomic_write", "fsync_dir", "fsync_file", "publish", "write_new"]

# Temporary files carry this prefix, so a folder's leftovers after a crash can be found.
TMP_PREFIX = ".tmp-"


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Persist a rename or a new name in ``path``."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a directory
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_new(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` (it must not exist), write ``data``, fsync; remove it on failure."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def publish(tmp: Path, final: Path) -> None:
    """Move a finished temporary file into place for good (replacing ``final``)."""
    try:
        fsync_file(tmp)
        tmp.replace(final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(final.parent)


def atomic_write(
    path: Path, data: bytes, *, tmp_dir: Path | None = None, mode: int = 0o600
) -> None:
    """Replace ``path`` with ``data`` crash-safely.

    The temporary file gets a random name in ``tmp_dir`` (default: ``path``'s folder, which
    must be on the same file system), so concurrent writers never share one. Raises OSError;
    nothing is left behind on failure.
    """
    tmp = (tmp_dir or path.parent) / f"{TMP_PREFIX}{path.name}.{secrets.token_hex(8)}"
    write_new(tmp, data, mode)
    publish(tmp, path)
