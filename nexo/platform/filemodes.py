"""Nexo's files are private to its user (docs/security.md "Logs, files and secrets").

The data directory holds password hashes and messages (``nexo.db`` and its WAL),
the log signing key and the development JWT secret; an export holds all of it.
So the data directory is 0700 and every file Nexo creates is 0600, whatever the
umask: the ``nexo`` command sets the umask to :data:`UMASK` (covering files that
SQLite and gzip create), creators pass explicit modes, and every start tightens
a data directory an older Nexo left group- or world-readable.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("nexo.files")

UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def restrict_umask() -> None:
    """Every file and directory this process creates from now on is private."""
    os.umask(UMASK)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) with mode 0700; an existing one is left as is."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for part in reversed(missing):
        try:
            part.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        part.chmod(DIR_MODE)  # mkdir's mode passes through the umask
    return path


def tighten(data_dir: Path, extra: tuple[Path, ...] = ()) -> list[Path]:
    """Make ``data_dir`` 0700 and the files directly in it (and ``extra``) 0600 when group
    or others may read them. Returns what was changed; files of other users are left alone."""
    changed = []
    candidates = [data_dir]
    if data_dir.is_dir():
        candidates += sorted(p for p in data_dir.iterdir() if p.is_file() and not p.is_symlink())
    candidates += [p for p in extra if p.is_file()]
    for path in candidates:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if info.st_uid != os.getuid() or not info.st_mode & 0o077:
            continue
        wanted = DIR_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE
        path.chmod(stat.S_IMODE(info.st_mode) & wanted)
        changed.append(path)
    if changed:
        log.warning("made private (group and others could read them): %s", ", ".join(str(p) for p in changed))
    return changed
