"""Where xnatfs keeps its own files, and how it makes their folders.

Every folder xnatfs creates for itself (cache, configuration, logs) may come to hold identifiable
patient data or credentials, so each one it creates is 0700, parents included: the XDG base
directory spec asks that folders it makes on a user's behalf be private, and ``os.makedirs``
would give the parents the umask's mode (usually 0755). Folders that exist already keep their
mode, except the last one, which is ours.
"""

from __future__ import annotations

import contextlib
import os


def private_dir(path: str) -> str:
    """Create ``path`` and any missing parents as 0700; make ``path`` itself 0700."""
    path = os.path.abspath(path)
    missing = []
    head = path
    while not os.path.isdir(head):
        missing.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
    os.chmod(path, 0o700)
    return path
