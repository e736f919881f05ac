"""Real FUSE mounts for the tests: ``xnatfs mount -f`` in a child process against an emulator,
always unmounted at teardown (the ``mount`` fixture in ``tests.support.fixtures``).

A ``Mount`` with ``pauses`` runs with those pauses between the tries of one request, and one
with ``probe`` tries a server that is away that often (``tests/support/quick_retries.py``),
instead of the product's; the ``mount`` fixture gives every mount ``QUICK_PAUSES`` unless a
test asks for the product's own (``pauses=None``), as a test that bounds how long a call may
take should.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.oracle import PASSWORD, Oracle
from xnatfs.mount.host import is_mounted

FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount")
QUICK_PAUSES = (0.01, 0.03, 0.09)  # a tenth of the product's: the same tries, less sleep
QUICK_RETRIES = str(Path(__file__).with_name("quick_retries.py"))
needs_fuse = pytest.mark.skipif(
    not (os.path.exists("/dev/fuse") and FUSERMOUNT), reason="needs /dev/fuse and fusermount3")


def xnatfs(*args: str, password: str = "secret", env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the ``xnatfs`` command line to completion."""
    return subprocess.run([sys.executable, "-m", "xnatfs", *args], capture_output=True,
                          text=True, env={**(env or os.environ), "XNAT_PASS": password},
                          timeout=timeout, check=False)


def one_line(text: str) -> str:
    """The one ``xnatfs: ...`` line a refused command must print (no traceback)."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("xnatfs: ") and "Traceback" not in text
    return lines[0]


def unmount(path: str) -> None:
    """Unmount, lazily if it stays busy; never raises."""
    for flags in (["-u"], ["-uz"]):
        if not is_mounted(path):
            return
        subprocess.run([FUSERMOUNT or "fusermount3", *flags, path], capture_output=True,
                       check=False)
        for _ in range(50):
            if not is_mounted(path):
                return
            time.sleep(0.05)


def wait_served(path: str, timeout: float = 30.0) -> None:
    """Wait until no process serves ``path`` any more. A daemon's mount ends before its
    process does: it stores what its cache writer still holds on the way out, after
    ``fusermount -u`` has returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not served(path):
            return
        time.sleep(0.02)
    raise AssertionError(f"a process still serves {path} after {timeout:g} s")


def served(path: str) -> bool:
    """Whether an ``xnatfs mount`` process for ``path`` is alive now."""
    needle = os.fsencode(path)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if b"mount" in args and needle in args and state != b"Z":
            return True
    return False


@dataclass
class Mount:
    """One ``xnatfs mount -f`` process and its mount point."""

    url: str
    path: str
    cache_dir: str
    args: tuple[str, ...] = ()
    user: str = "alice"
    pauses: tuple[float, ...] | None = None
    """Seconds between the tries of one request; None: the product's own."""
    probe: float | None = None
    """Seconds between the tree's tries of a server that is away; None: the product's own."""
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=lambda: Path(tempfile.mktemp(suffix=".log")))

    def start(self) -> Mount:
        env = {**os.environ, "XNAT_PASS": PASSWORD[self.user]}
        run = ["-m", "xnatfs"] if self.pauses is None and self.probe is None else [
            QUICK_RETRIES, "-" if self.pauses is None else ",".join(map(str, self.pauses)),
            "-" if self.probe is None else str(self.probe), "-"]
        cmd = [sys.executable, *run, "-v", "mount", self.url, self.path,
               "-u", self.user, "--cache-dir", self.cache_dir, "-f", *self.args]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(cmd, env=env, stderr=log, stdout=log)
        deadline = time.monotonic() + 20
        while not is_mounted(self.path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mount did not start:\n{self.log.read_text()}")
            time.sleep(0.02)
        os.stat(self.path)  # returns once the file system answers
        return self

    def stop(self) -> int | None:
        unmount(self.path)
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGKILL)
            return self.process.wait()

    def __truediv__(self, rel: str) -> Path:
        return Path(self.path) / rel


def tree_of(root: str | Path) -> dict[str, str]:
    """Every path below ``root`` (relative), as 'dir' or 'file'."""
    out: dict[str, str] = {}
    for where, dirs, files in os.walk(root):
        rel = os.path.relpath(where, root)
        for name in dirs:
            out[os.path.normpath(os.path.join(rel, name))] = "dir"
        for name in files:
            out[os.path.normpath(os.path.join(rel, name))] = "file"
    return out


def files_under(root: str | Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """The files below ``root`` whose names do not end in ``skip``, listed while a live cache
    may remove them and their emptied folders (its writer runs behind the reads): a folder gone
    between listing and visit is skipped, where ``Path.rglob`` raises."""
    return [Path(where) / name for where, _, names in os.walk(root) for name in names
            if not name.endswith(skip)]


def bytes_under(root: str | Path, skip: tuple[str, ...] = ()) -> int:
    """Bytes of ``files_under(root, skip)``; a file evicted since the listing takes no room."""
    total = 0
    for path in files_under(root, skip):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue
    return total


def read_outcomes(m: Mount, oracle: Oracle) -> dict[str, str]:
    """Read every file of ``oracle`` through the mount once: 'ok', 'WRONG BYTES' or the name of
    the errno the read failed with."""
    outcome = {}
    for path in oracle.files:
        try:
            outcome[path] = "ok" if (m / path).read_bytes() == oracle.read(path) else "WRONG BYTES"
        except OSError as exc:
            outcome[path] = errno.errorcode[exc.errno]
    return outcome
