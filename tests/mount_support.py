"""Real FUSE mounts for the tests: ``xnatfs mount -f`` in a child process against an emulator,
always unmounted at teardown; and the oracle that says what the mount should show.

Import the fixtures into a test module: ``from mount_support import mount, oracle  # noqa``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from xnatfs.emulator import Emulator, File
from xnatfs.mount.host import is_mounted
from xnatfs.tree.model import Node, Tree
from xnatfs.xnat.client import XnatClient
from xnatfs.xnat.credentials import Credentials

PASSWORD = {"alice": "secret", "bob": "hunter2"}
FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount")
needs_fuse = pytest.mark.skipif(
    not (os.path.exists("/dev/fuse") and FUSERMOUNT), reason="needs /dev/fuse and fusermount3")


def xnatfs(*args: str, password: str = "secret", env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the ``xnatfs`` command line to completion."""
    return subprocess.run([sys.executable, "-m", "xnatfs", *args], capture_output=True,
                          text=True, env={**(env or os.environ), "XNAT_PASS": password},
                          timeout=timeout, check=False)


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


@dataclass
class Mount:
    """One ``xnatfs mount -f`` process and its mount point."""

    url: str
    path: str
    cache_dir: str
    args: tuple[str, ...] = ()
    user: str = "alice"
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=lambda: Path(tempfile.mktemp(suffix=".log")))

    def start(self) -> Mount:
        env = {**os.environ, "XNAT_PASS": PASSWORD[self.user]}
        cmd = [sys.executable, "-m", "xnatfs", "-v", "mount", self.url, self.path,
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


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """``mount(emulator, *args, cache_dir=None)``: a live mount, unmounted at teardown."""
    started: list[Mount] = []

    def make(emulator: Emulator, *args: str, cache_dir: str | None = None,
             user: str = "alice") -> Mount:
        point = tmp_path / f"mnt{len(started)}"
        point.mkdir()
        m = Mount(emulator.url, str(point), cache_dir or str(tmp_path / "cache"), args, user)
        started.append(m)
        return m.start()

    yield make
    for m in started:
        m.stop()


@dataclass
class Oracle:
    """What the mount must show: tree paths (from the Tree) and bytes (from the archive).
    Files are matched on ``/resources/{id}/files/{path}``: resource IDs are global, while the
    start of a URI depends on the project a shared subject is seen through."""

    files: dict[str, Node]
    by_resource: dict[str, File]

    def content(self, path: str) -> File:
        file = self.files[path].file
        assert file is not None
        return self.by_resource[_from_resource(file.uri)]


@pytest.fixture
def oracle() -> Callable[[Emulator], Oracle]:
    def make(emulator: Emulator, user: str = "alice") -> Oracle:
        with XnatClient(emulator.url, Credentials(user, PASSWORD[user])) as client:
            files = dict(Tree(client).walk("/"))
        return Oracle(files, {_from_resource(f.uri): f for f in emulator.archive.files()})

    return make


def _from_resource(uri: str) -> str:
    return uri[uri.index("/resources/"):]


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
