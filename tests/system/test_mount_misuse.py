"""What a new user gets wrong with ``xnatfs mount``, and what the mount must say: a relative
cache folder, a mistyped project, a folder that has files, a mount whose process was killed,
where a background mount's log goes, and the demo's stop command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import security
from tests.support.mount import Mount, needs_fuse, one_line, tree_of, unmount
from tests.support.oracle import PASSWORD
from xnat_emulator import Emulator, EmulatorConfig, SyntheticSpec, synthetic_archive
from xnatfs.mount.host import is_mounted

Run = Callable[..., subprocess.CompletedProcess[str]]
pytestmark = [pytest.mark.timeout(90), needs_fuse]


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    """``run(*args, cwd=None)``: the xnatfs command line with its state folder (logs) in
    tmp_path; every mount point it names under tmp_path is unmounted at teardown."""
    env = {**os.environ, "XNAT_PASS": PASSWORD["alice"], "XDG_STATE_HOME": str(tmp_path / "st")}

    def xnatfs(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "xnatfs", *args], capture_output=True,
                              text=True, env=env, cwd=cwd, timeout=60, check=False)

    yield xnatfs
    for point in tmp_path.iterdir():
        unmount(str(point))


def test_relative_cache_dir_and_default_log_file(emulator: Emulator, run: Run,
                                                 tmp_path: Path) -> None:
    """The cache lands in the caller's folder, not in / where the daemon works; the log is in
    the user's state folder, named in the startup message, and holds the EIO and its reason."""
    (tmp_path / "mnt").mkdir()
    done = run("mount", emulator.url, "mnt", "-u", "alice", "--cache-dir", "cache",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    log = Path(re.search(r"\(log: (.+)\)$", done.stdout.strip())[1])  # type: ignore[index]
    assert log.is_relative_to(tmp_path / "st" / "xnatfs")
    files = sorted(p for p, kind in tree_of(tmp_path / "mnt").items() if kind == "file")
    assert (tmp_path / "mnt" / files[0]).read_bytes()
    assert (tmp_path / "cache").is_dir()
    assert not os.path.exists("/cache")
    emulator.stop()
    with pytest.raises(OSError):
        (tmp_path / "mnt" / files[-1]).read_bytes()
    assert run("umount", str(tmp_path / "mnt")).returncode == 0
    text = log.read_text()
    assert "WARNING" in text and "cannot reach" in text


def test_log_file_option(emulator: Emulator, run: Run, tmp_path: Path) -> None:
    """--log-file replaces the default, and re-logins are worth a line there."""
    (tmp_path / "mnt").mkdir()
    done = run("mount", emulator.url, "mnt", "-u", "alice", "--cache-dir", "c",
               "--log-file", "my.log", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"(log: {tmp_path / 'my.log'})" in done.stdout
    emulator.expire_sessions()
    assert os.listdir(tmp_path / "mnt" / "PROJ01")
    assert run("umount", str(tmp_path / "mnt")).returncode == 0
    text = (tmp_path / "my.log").read_text()
    assert "logged in again" in text and "unmounted" in text
    assert not (tmp_path / "st").exists()


def test_mistyped_project_is_refused(emulator: Emulator, run: Run,
                                     tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    done = run("mount", emulator.url, str(tmp_path / "mnt"), "-u", "alice", "--project",
               "PROJ01", "--project", "proj2")
    assert done.returncode == 4
    line = one_line(done.stderr)
    assert "no project proj2" in line and "PROJ01, PROJ02" in line and "PROJ02?" in line
    assert not is_mounted(str(tmp_path / "mnt"))
    assert not (tmp_path / "st").exists()  # a refused mount leaves no log behind


def test_non_empty_mount_point(emulator: Emulator, run: Run,
                               tmp_path: Path) -> None:
    point = tmp_path / "mnt"
    point.mkdir()
    (point / "notes.txt").write_text("mine")
    done = run("mount", emulator.url, str(point), "-u", "alice")
    assert done.returncode == 2
    assert "not empty" in one_line(done.stderr) and "--allow-non-empty" in done.stderr
    assert not is_mounted(str(point))
    done = run("mount", emulator.url, str(point), "-u", "alice", "--allow-non-empty",
               "--cache-dir", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(point)) == ["PROJ01", "PROJ02"]
    assert run("umount", str(point)).returncode == 0
    assert (point / "notes.txt").read_text() == "mine"


def test_dead_mount_is_explained_and_cleared(emulator: Emulator, mount: Callable[..., Mount],
                                             run: Run) -> None:
    m = mount(emulator)
    assert os.listdir(m.path)
    assert m.process is not None
    m.process.send_signal(signal.SIGKILL)
    m.process.wait()
    assert is_mounted(m.path)
    again = run("mount", emulator.url, m.path, "-u", "alice")
    assert again.returncode == 1
    assert f"xnatfs umount {m.path}" in one_line(again.stderr)
    cleared = run("umount", m.path)
    assert cleared.returncode == 0, cleared.stderr
    assert not is_mounted(m.path)


def test_demo_stop_command_works_without_xnatfs_on_path(run: Run,
                                                        tmp_path: Path) -> None:
    done = run("demo", "demo", "--cache-dir", "c", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stop = done.stdout.split("When done:")[1].splitlines()[0].strip()
    shell = subprocess.run(stop, shell=True, cwd=tmp_path, capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin"}, check=False)
    assert shell.returncode == 0, (stop, shell.stderr)
    assert not is_mounted(str(tmp_path / "demo"))


def test_a_background_mount_log_keeps_secrets_and_is_private(tmp_path: Path) -> None:
    """-vv, a re-login and failed reads: the log names what failed, never a secret, and only
    its user can read it."""
    archive = synthetic_archive(SyntheticSpec(projects=1, subjects=1, sessions=1, scans=1,
                                              dicoms=2, dicom_size=512, niftis=0))
    with Emulator(archive, EmulatorConfig(), users={security.USER: security.PASSWORD}) as emu:
        secrets = security.Secrets(emu)
        (tmp_path / "mnt").mkdir()
        env = {**os.environ, "XNAT_PASS": security.PASSWORD, "XDG_STATE_HOME": str(tmp_path / "st")}
        done = subprocess.run([sys.executable, "-m", "xnatfs", "-vv", "mount", emu.url, "mnt",
                               "-u", security.USER, "--cache-dir", "c"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        emu.expire_sessions()
        files = [p for p, kind in tree_of(tmp_path / "mnt").items() if kind == "file"]
    try:  # the server is gone
        with pytest.raises(OSError):
            (tmp_path / "mnt" / files[0]).read_bytes()
    finally:
        unmount(str(tmp_path / "mnt"))
    logs = [p for p in (tmp_path / "st").rglob("*") if p.is_file()]
    assert len(logs) == 1 and "logged in again" in logs[0].read_text()
    assert "DEBUG" in logs[0].read_text() and "cannot reach" in logs[0].read_text()
    assert secrets.assert_absent_below(tmp_path / "st") == 1
    assert oct(logs[0].stat().st_mode & 0o777) == oct(0o600)
    assert oct(logs[0].parent.stat().st_mode & 0o777) == oct(0o700)
