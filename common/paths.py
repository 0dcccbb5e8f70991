"""Folders the user names (``--out``, ``--state-dir``, ``keys create --dir``): checked, and
created, before anything starts, so that a path that cannot hold our files is one clear line."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from common.errors import ConfigError


def writable_folder(path: str | Path, what: str) -> Path:
    """``path`` as an existing folder we can write into, creating it (and its parents) if
    needed; a path that is a file, lies under a file or cannot be written raises
    :class:`ConfigError` naming ``what`` (the flag or setting) and the path."""
    path = Path(path)
    for ancestor in (path, *path.parents):
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                where = "is a file" if ancestor == path else f"lies under {ancestor}, which is a file"
                raise ConfigError(f"{what} {path}: {where}, not a folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot create the folder ({exc.strerror or exc})") from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".fedshield-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot write in the folder ({exc.strerror or exc})") from None
    return path
