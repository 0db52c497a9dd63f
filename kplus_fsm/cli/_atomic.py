"""
Crash-safe files: :func:`atomic_write` writes a file so that, whenever the
process dies (SIGKILL, power loss after the call returned), the name holds
either the previous file or the complete new one, never a part.

How: the new content goes to a temporary file in the same directory
(``.NAME.XXXXXXXX.tmp``, created owner-only, then given the previous file's
permissions, or the umask's for a new file), which is flushed and ``fsync``ed,
then renamed over the name (``os.replace``: atomic on POSIX), and the directory
is ``fsync``ed so that the rename itself survives a power loss. If anything
fails before the rename, the temporary file is removed and the name is
untouched. A process killed before the rename may leave its temporary file
behind (never under the final name): it is safe to delete.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import attrs

#: The longest part of the final name kept in the temporary file's name.
_NAME_KEPT = 100


def _mode_for(path: Path) -> int:
    """The permissions the new file gets: the previous file's, else the umask's."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def fsync_directory(directory: Path) -> None:
    """``fsync`` a directory (so a rename in it survives a power loss)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@attrs.define
class AtomicFile:
    """
    The file being written (``file``) and the name it takes once complete
    (``path``: may be changed before the block ends, within the same directory).
    """

    file: IO[str]
    path: Path


@contextlib.contextmanager
def atomic_write(path: Path, *, encoding: str = "utf-8", newline: str = "") -> Iterator[AtomicFile]:
    """
    A text file to write (``.file``) that replaces ``path`` only once it is
    complete and on disk. An exception inside the block leaves ``path`` as it
    was and removes the temporary file.

    Raises:
        OSError: the directory cannot be written, the disk is full, ...
    """
    directory = path.parent
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name[:_NAME_KEPT]}.", suffix=".tmp")
    try:
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "w", encoding=encoding, newline=newline) as out:
            target = AtomicFile(file=out, path=path)
            yield target
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target.path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(target.path.parent)


__all__ = ["AtomicFile", "atomic_write", "fsync_directory"]
