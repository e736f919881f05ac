"""The mount's command line: daemon and foreground, clean unmounts, one-line errors, demo and
the cache command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.mount import Mount, needs_fuse, one_line, served, tree_of, unmount, xnatfs
from xnat_emulator import Emulator
from xnatfs.cli.units import parse_size
from xnatfs.mount.host import is_mounted

pytestmark = [pytest.mark.timeout(90)]


def test_parse_size() -> None:
    assert parse_size("4096") == 4096
    assert parse_size("500M") == 500 << 20
    assert parse_size("1.5G") == 3 << 29
    assert parse_size("20GiB") == 20 << 30


@needs_fuse
def test_daemon_mode_returns_when_live_and_umount_ends_it(
        emulator: Emulator, tmp_path: Path) -> None:
    point = tmp_path / "mnt"
    point.mkdir()
    try:
        done = xnatfs("mount", emulator.url, str(point), "-u", "alice", "--cache-dir",
                      str(tmp_path / "c"))
        assert done.returncode == 0, done.stderr
        assert f"mounted {emulator.url} at {point}" in done.stdout
        assert is_mounted(str(point))
        assert sorted(os.listdir(point)) == ["PROJ01", "PROJ02"]
        files = [p for p in sorted((point / "PROJ01").rglob("*")) if p.is_file()][:50]
        assert files and all(f.read_bytes() is not None for f in files)  # chunks to store
        stopped = xnatfs("umount", str(point))
        assert stopped.returncode == 0, stopped.stderr
        assert not is_mounted(str(point))
        assert not served(str(point))  # umount returned after the process, not the mount
    finally:
        unmount(str(point))


@needs_fuse
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(emulator: Emulator, mount: Callable[..., Mount],
                                 sig: signal.Signals) -> None:
    m = mount(emulator)
    assert tree_of(m.path)
    assert m.process is not None
    m.process.send_signal(sig)
    assert m.process.wait(timeout=20) == 0, m.log.read_text()
    assert not is_mounted(m.path)


@needs_fuse
def test_bad_credentials_fail_before_mounting(emulator: Emulator, tmp_path: Path) -> None:
    done = xnatfs("mount", emulator.url, str(tmp_path), "-u", "alice", password="wrong")
    assert done.returncode == 3
    assert "login refused" in one_line(done.stderr)
    assert not is_mounted(str(tmp_path))


@needs_fuse
def test_mount_point_problems_are_one_line(emulator: Emulator, mount: Callable[..., Mount],
                                           tmp_path: Path) -> None:
    missing = xnatfs("mount", emulator.url, str(tmp_path / "nope"), "-u", "alice")
    assert missing.returncode == 2 and "does not exist" in one_line(missing.stderr)
    (tmp_path / "file").write_text("x")
    not_dir = xnatfs("mount", emulator.url, str(tmp_path / "file"), "-u", "alice")
    assert not_dir.returncode == 2 and "not a directory" in one_line(not_dir.stderr)
    m = mount(emulator)
    busy = xnatfs("mount", emulator.url, m.path, "-u", "alice")
    assert busy.returncode == 1 and "busy" in one_line(busy.stderr)
    assert tree_of(m.path)  # the first mount is untouched
    nothing = xnatfs("umount", str(tmp_path))
    assert nothing.returncode == 2 and "nothing is mounted" in one_line(nothing.stderr)


@needs_fuse
def test_project_filter_and_unusable_cache_folder(emulator: Emulator, mount: Callable[..., Mount],
                                                  tmp_path: Path) -> None:
    m = mount(emulator, "--project", "PROJ02")
    assert os.listdir(m.path) == ["PROJ02"]
    (tmp_path / "file").write_text("x")
    point = tmp_path / "mnt"
    point.mkdir()
    done = xnatfs("mount", emulator.url, str(point), "-u", "alice", "-f",
                  "--cache-dir", str(tmp_path / "file" / "cache"))
    assert done.returncode == 1 and "cannot use the cache folder" in one_line(done.stderr)
    assert not is_mounted(str(point))


def test_help_works_and_mount_explains_without_libfuse(tmp_path: Path) -> None:
    env = {**os.environ, "FUSE_LIBRARY_PATH": str(tmp_path / "libfuse-missing.so")}
    helped = subprocess.run([sys.executable, "-m", "xnatfs", "--help"], env=env,
                            capture_output=True, text=True, check=False)
    assert helped.returncode == 0 and "mount" in helped.stdout
    done = xnatfs("mount", "http://127.0.0.1:9", str(tmp_path), env=env)
    assert done.returncode == 1
    assert "libfuse" in one_line(done.stderr)


@needs_fuse
def test_demo_mounts_a_synthetic_archive(tmp_path: Path) -> None:
    point = tmp_path / "demo"
    try:
        done = xnatfs("demo", str(point), "--cache-dir", str(tmp_path / "c"))
        assert done.returncode == 0, done.stderr
        assert "Try:" in done.stdout and "md5sum" in done.stdout and "cp -r" in done.stdout
        files = [p for p, kind in tree_of(point).items() if kind == "file"]
        assert any(p.endswith(".nii.gz") for p in files)
        assert (point / files[0]).read_bytes()
    finally:
        assert xnatfs("umount", str(point)).returncode == 0
        unmount(str(point))


@needs_fuse
def test_cache_stats_and_clear(emulator: Emulator, mount: Callable[..., Mount],
                               tmp_path: Path) -> None:
    cache = str(tmp_path / "c")
    m = mount(emulator, cache_dir=cache)
    for path, kind in tree_of(m.path).items():
        if kind == "file":
            (m / path).read_bytes()
    stats = xnatfs("cache", "stats", "--cache-dir", cache)
    assert stats.returncode == 0
    chunks = int(stats.stdout.split("chunks:")[1].split()[0])
    assert chunks > 0
    cleared = xnatfs("cache", "clear", "--cache-dir", cache)
    assert f"removed {chunks} chunks" in cleared.stdout
    again = xnatfs("cache", "stats", "--cache-dir", cache)
    assert "chunks:    0" in again.stdout
    assert "no cache at" in xnatfs("cache", "stats", "--cache-dir", str(tmp_path / "x")).stdout
