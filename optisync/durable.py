"""Making a write survive a crash: a file is written under a temporary name, fsynced,
renamed into place, and the folder that names it fsynced. A reader sees the old content
or the new, never a part."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "TMP_PREFIX",
    "atomic_write",
    "ensure_private_dir",
    "fsync_dir",
    "fsync_file",
    "is_symlink_error",
    "open_private",
    "publish",
    "write_new",
]

# Temporary files carry this prefix, so a folder's leftovers after a crash can be found.
TMP_PREFIX = ".tmp-"
# What optisync creates holds member data or secrets: for the owner only.
FILE_MODE = 0o600
DIR_MODE = 0o700
# Never write through a link someone planted at a name optisync predictably uses.
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents as 0700 folders, whatever the umask.

    Folders that already exist keep their mode: they are the operator's to choose.
    """
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # a concurrent run made it: fine, and not ours to chmod
        # mkdir's mode is cut by the umask; an odd one (0277) would leave it unusable
        made = folder.lstat()
        if stat.S_ISDIR(made.st_mode) and stat.S_IMODE(made.st_mode) != DIR_MODE:
            folder.chmod(DIR_MODE)
    return path


def open_private(path: Path, flags: int, mode: int = FILE_MODE) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (OSError ELOOP) and creates the
    file with ``mode`` (default 0600) if ``flags`` hold O_CREAT."""
    return os.open(path, flags | NOFOLLOW | os.O_CLOEXEC, mode)


def is_symlink_error(exc: OSError) -> bool:
    """The error ``open_private`` raises for a link at the path."""
    return exc.errno == errno.ELOOP


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


def write_new(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Create ``path`` (it must not exist, not even as a link), write ``data``, fsync; remove
    it on failure."""
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
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
    path: Path, data: bytes, *, tmp_dir: Path | None = None, mode: int = FILE_MODE
) -> None:
    """Replace ``path`` with ``data`` crash-safely.

    The temporary file gets a random name in ``tmp_dir`` (default: ``path``'s folder, which
    must be on the same file system), so concurrent writers never share one; it is created
    with O_EXCL and O_NOFOLLOW, and the rename replaces a link at ``path`` rather than writing
    through it. Raises OSError; nothing is left behind on failure.
    """
    tmp = (tmp_dir or path.parent) / f"{TMP_PREFIX}{path.name}.{secrets.token_hex(8)}"
    write_new(tmp, data, mode)
    publish(tmp, path)
