"""Where a background mount writes what it has to say.

A detached mount has no terminal, so without a file its warnings (an EIO and why, a re-login)
would be lost and finding out why a read failed would mean remounting with ``-f -vv``. Each
mount point gets its own file under the user's log folder, rotated so that a mount left
running for months cannot fill the disk.
"""

from __future__ import annotations

import logging
import logging.handlers
import os

import platformdirs

from xnatfs.errors import UsageError
from xnatfs.mount import serving

MAX_BYTES = 5 << 20
BACKUPS = 3
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def default_path(mountpoint: str) -> str:
    """One file per mount point: its base name for people, a digest of its full path so that
    /a/data and /b/data do not share a file."""
    return os.path.join(platformdirs.user_log_dir("xnatfs"), f"{serving.key(mountpoint)}.log")


def prepare(path: str) -> str:
    """The log file's absolute path once it is known to be writable: a folder we cannot
    write must be told now, in one line, not after the mount has detached. It is private
    (0600): it names the user's files."""
    path = os.path.abspath(path)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    except OSError as exc:
        raise UsageError(f"cannot write the log file {path}: {exc.strerror or exc}") from None
    return path


def log_to(path: str, *, replace: bool) -> logging.Handler:
    """Send the process's log records to ``path`` (rotating), instead of or beside stderr."""
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES,
                                                   backupCount=BACKUPS, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    if replace:
        root.handlers.clear()
    root.addHandler(handler)
    return handler
