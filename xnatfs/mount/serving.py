"""Whether a process still serves a mount point, so that ``xnatfs umount`` returns when the
mount is really over.

``fusermount -u`` returns once the kernel has detached the mount. The process behind it then
still stores what its cache writer holds, closes the cache and exits; ``xnatfs cache clear``
or another mount over the same cache run right then met a cache still being written. So the
serving process holds an exclusive lock on a file named for its mount point for as long as it
lives (the kernel lets go of it when the process ends, however it ends), and umount waits
for that lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import time
import warnings

import platformdirs

from xnatfs.dirs import private_dir

log = logging.getLogger(__name__)

WAIT = 30.0
"""Seconds umount waits for the serving process, at most: far longer than storing what a
cache writer may hold (32 MiB)."""
POLL = 0.02

_held: list[int] = []  # descriptors kept open, and so locked, until the process ends


def key(mountpoint: str) -> str:
    """One name per mount point: its base name for people, a digest of its full path so that
    /a/data and /b/data do not share one."""
    digest = hashlib.sha256(mountpoint.encode(errors="surrogateescape")).hexdigest()[:8]
    return f"{os.path.basename(mountpoint.rstrip('/')) or 'root'}-{digest}"


def _path(mountpoint: str) -> str:
    """In the user's runtime folder (gone at logout or reboot, as a serving process is);
    without ``XDG_RUNTIME_DIR``, platformdirs' private fallback, without its warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = platformdirs.user_runtime_dir("xnatfs")
    return os.path.join(folder, "mounts", key(mountpoint) + ".lock")


def hold(mountpoint: str) -> None:
    """Mark this process as serving ``mountpoint`` until it exits."""
    try:
        path = _path(mountpoint)
        private_dir(os.path.dirname(path))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        log.debug("no serving lock for %s: %s", mountpoint, exc)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another process serves it too (a mount stacked over this one)
        os.close(fd)
        return
    _held.append(fd)


def wait_gone(mountpoint: str, timeout: float = WAIT) -> bool:
    """Wait until no process holds ``mountpoint``'s lock; False if one still does."""
    try:
        fd = os.open(_path(mountpoint), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True  # never held (a mount of an older xnatfs, or no state folder)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(POLL)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
