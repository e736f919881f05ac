"""What the host must offer before a mount can start: /dev/fuse and libfuse, a usable mount
point, and FUSE options it accepts; and what /proc/self/mountinfo says is mounted where.

Every check fails with one line that says what to do, so that nothing the user can get wrong
surfaces later as a libfuse message from a detached process.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from typing import Any

from xnatfs.errors import UsageError, XnatfsError

_UNESCAPE = re.compile(r"\\([0-7]{3})")


def mount_points() -> list[str]:
    """Every mount point of this mount namespace, unescaped (mountinfo writes a space as \\040)."""
    with open("/proc/self/mountinfo") as info:
        return [_UNESCAPE.sub(lambda m: chr(int(m[1], 8)), line.split()[4]) for line in info]


def is_mounted(path: str) -> bool:
    """Whether ``path`` (a real path) is a mount point, dead FUSE mounts included."""
    try:
        return path in mount_points()
    except OSError:
        return os.path.ismount(path)


def is_dead(path: str) -> bool:
    """Whether the mount at ``path`` has lost its process (kill -9, a crash). statfs always
    reaches the FUSE process, while stat may be answered from the kernel's attribute cache and
    look healthy for the attribute timeout."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def check_mountpoint(path: str, *, allow_non_empty: bool = False) -> str:
    """The mount point's real path, or a one-line reason why it cannot be used."""
    mountpoint = os.path.realpath(path)
    if is_mounted(mountpoint):
        if is_dead(mountpoint):
            raise XnatfsError(f"{mountpoint} holds a dead mount (its process has ended): "
                              f"clear it with 'xnatfs umount {path}', then mount again")
        raise XnatfsError(f"{mountpoint} is busy: something is mounted there already")
    if not os.path.exists(mountpoint):
        raise UsageError(f"mount point {mountpoint} does not exist (create it first)")
    if not os.path.isdir(mountpoint):
        raise UsageError(f"mount point {mountpoint} is not a directory")
    if not allow_non_empty and _has_entries(mountpoint):
        raise UsageError(f"mount point {mountpoint} is not empty: the mount would hide its "
                         "files (use an empty folder, or --allow-non-empty)")
    return mountpoint


def _has_entries(path: str) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is not None
    except OSError as exc:
        raise UsageError(f"cannot read mount point {path}: {exc.strerror}") from None


def check_fuse() -> None:
    """/dev/fuse, libfuse and (unless root) fusermount3 are there."""
    if not os.path.exists("/dev/fuse"):
        raise XnatfsError("no /dev/fuse: load the fuse module (modprobe fuse); in a container, "
                          "run it with --device /dev/fuse --cap-add SYS_ADMIN")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise XnatfsError("no permission to open /dev/fuse")
    if os.geteuid() != 0 and not fusermount():
        raise XnatfsError("fusermount3 not found: install fuse3 (e.g. apt install fuse3)")
    try:
        import xnatfs.mount.fs  # noqa: F401 - loads libfuse
    except (OSError, AttributeError) as exc:
        raise XnatfsError(f"libfuse not usable ({exc}): install fuse3 "
                          "(e.g. apt install fuse3)") from None


def fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def fuse_options(values: list[str]) -> dict[str, Any]:
    """``-o a=b,c`` → {"a": "b", "c": True}; allow_other only where fuse.conf permits it."""
    options: dict[str, Any] = {}
    for value in values:
        for item in filter(None, value.split(",")):
            key, eq, val = item.partition("=")
            options[key] = val if eq else True
    if "allow_other" in options and os.geteuid() != 0 and not _user_allow_other():
        raise UsageError("-o allow_other needs 'user_allow_other' in /etc/fuse.conf")
    return options


def _user_allow_other() -> bool:
    try:
        with open("/etc/fuse.conf") as conf:
            return any(line.split("#")[0].strip() == "user_allow_other" for line in conf)
    except OSError:
        return False
