"""Credentials and privacy (SECURITY.md): secrets never in argv, logs, messages, the cache or
--json output; the cache is private; the mount is private unless ``-o allow_other``; TLS is
verified unless ``--insecure``; ``cache clear`` really removes cached bytes.

Everything runs for real: the ``xnatfs`` command line in child processes, a FUSE mount, the
emulator on loopback, and a TLS proxy with a certificate made by ``openssl`` at test time.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest

from tests.support.mount import (
    QUICK_PAUSES,
    QUICK_RETRIES,
    needs_fuse,
    tree_of,
    unmount,
    wait_served,
)
from tests.support.security import PASSWORD, USER, Secrets, cmdlines, tls_proxy
from xnat_emulator import Emulator, EmulatorConfig, SyntheticSpec, synthetic_archive
from xnatfs.mount.host import is_mounted
from xnatfs.reader.chunkcache import SMALL_IN_DB, ChunkCache
from xnatfs.tree.model import RemoteFile

SPEC = SyntheticSpec(projects=1, subjects=1, sessions=2, scans=2, dicoms=2, dicom_size=3000,
                     niftis=1, nifti_size=300_000, assessors=0, seed=11)
pytestmark = pytest.mark.timeout(120)


def xnatfs(*args: str, timeout: float = 60, quick: bool = False,
           **env: str) -> subprocess.CompletedProcess[str]:
    """The command line in a child process, credentials only in its environment. ``quick``:
    with ``QUICK_PAUSES`` between the tries of a request and 0.2 s before materialize's retry
    round (as the fault rig's): the same tries and log lines, sooner."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("XNAT_")}
    run = [QUICK_RETRIES, ",".join(map(str, QUICK_PAUSES)), "-", "0.2"] if quick \
        else ["-m", "xnatfs"]
    return subprocess.run([sys.executable, *run, *args], capture_output=True,
                          text=True, env={**clean, **env}, timeout=timeout, check=False)


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(synthetic_archive(SPEC), EmulatorConfig(), users={USER: PASSWORD}) as server:
        yield server


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A folder other local users can traverse (pytest's tmp_path is 0700: it would hide a
    mount from them whatever the mount allowed)."""
    path = Path(tempfile.mkdtemp(prefix="xnatfs-sec-"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        if child.is_dir():
            unmount(str(child))
    shutil.rmtree(path, ignore_errors=True)


def test_secrets_stay_out_of_logs_messages_json_and_files(emu: Emulator, tmp_path: Path):
    secrets = Secrets(emu)
    env = {"XNAT_PASS": PASSWORD}
    out, cache = tmp_path / "out", tmp_path / "cache"
    emu.config.fault_kinds = frozenset({"file"})  # retries and their log lines, logins spared
    emu.config.error_rate = emu.config.truncate_rate = 0.2
    # Quick pauses: the retries write the same log lines, sooner.
    runs = {
        "ls -vv": xnatfs("-vv", "ls", emu.url, "-R", "-l", "-u", USER, quick=True, **env),
        "materialize -vv --json": xnatfs("-vv", "materialize", emu.url, "PROJ01", "-o", str(out),
                                         "--json", "--cache-dir", str(cache), "-u", USER,
                                         quick=True, **env),
        "wrong password": xnatfs("-vv", "ls", emu.url, "-u", USER, quick=True,
                                 XNAT_PASS=PASSWORD + "x"),
        "server gone": xnatfs("-vv", "ls", "http://127.0.0.1:9", "-u", USER, quick=True, **env),
        "bad path": xnatfs("-vv", "ls", emu.url, "NOPE/x", "-u", USER, quick=True, **env),
    }
    assert runs["ls -vv"].returncode == 0 and "DEBUG" in runs["ls -vv"].stderr
    assert runs["materialize -vv --json"].returncode == 0, runs["materialize -vv --json"].stderr
    assert '"downloaded"' in runs["materialize -vv --json"].stdout
    assert [r.returncode for r in list(runs.values())[2:]] == [3, 1, 4]
    assert emu.log.count(fault="error") + emu.log.count(fault="truncate") > 0
    assert len(secrets.values) >= 4  # password, Basic header and JSESSIONIDs were issued
    for what, done in runs.items():
        secrets.assert_absent(done.stdout + done.stderr, what)
        assert "Traceback" not in done.stderr, what
    assert secrets.assert_absent_below(out) > 0
    secrets.assert_absent_below(cache)


def test_a_jsession_passed_in_the_environment_is_never_shown(emu: Emulator, tmp_path: Path):
    import requests

    jsession = requests.post(f"{emu.url}/data/JSESSION", auth=(USER, PASSWORD), timeout=10).text
    secrets = Secrets(emu, jsession)
    ok = xnatfs("-vv", "ls", emu.url, "-R", XNAT_JSESSION=jsession)
    emu.expire_sessions()
    gone = xnatfs("-vv", "ls", emu.url, XNAT_JSESSION=jsession)
    assert ok.returncode == 0 and "PROJ01" in ok.stdout
    assert gone.returncode == 3 and "JSESSIONID" in gone.stderr  # named, never shown
    for done in (ok, gone):
        secrets.assert_absent(done.stdout + done.stderr, "ls output")


def _as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           *cmd], capture_output=True, text=True, check=False, timeout=30)


@needs_fuse
@pytest.mark.fuse
def test_a_running_mount_keeps_secrets_and_data_private(emu: Emulator, public_dir: Path):
    secrets = Secrets(emu)
    point, cache, log = public_dir / "mnt", public_dir / "cache", public_dir / "mount.log"
    point.mkdir()
    point.chmod(0o755)
    emu.config.fault_kinds = frozenset({"file"})
    emu.config.error_rate = 0.2
    env = {k: v for k, v in os.environ.items() if not k.startswith("XNAT_")}
    cmd = [sys.executable, "-m", "xnatfs", "-vv", "mount", emu.url, str(point), "-u", USER,
           "--cache-dir", str(cache), "-f"]
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, env={**env, "XNAT_PASS": PASSWORD}, stdout=sink,
                                stderr=sink)
    try:
        deadline = time.monotonic() + 20
        while not is_mounted(str(point)):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        files = [p for p, kind in tree_of(point).items() if kind == "file"]
        for rel in files:
            (point / rel).read_bytes()
        assert emu.log.count(fault="error") > 0
        secrets.assert_absent(cmdlines(), "argv of running processes")
        # Private: another local user can neither list nor read it (root could always).
        denied = _as_nobody("ls", str(point))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        assert _as_nobody("cat", str(point / files[0])).returncode != 0
        assert secrets.assert_absent_below(cache) > 0  # the cache holds no secret
        assert _as_nobody("ls", str(cache)).returncode != 0
    finally:
        unmount(str(point))
        proc.wait(timeout=15)
    text = log.read_bytes()
    assert b"DEBUG" in text and b"Traceback" not in text
    secrets.assert_absent(text, "the mount's -vv log")


@needs_fuse
@pytest.mark.fuse
def test_allow_other_opens_the_mount_to_other_users(emu: Emulator, public_dir: Path):
    """The control for the privacy check above: the same probe succeeds once allowed."""
    point = public_dir / "shared"
    point.mkdir()
    started = xnatfs("mount", emu.url, str(point), "-u", USER, "--cache-dir",
                     str(public_dir / "c"), "-o", "allow_other", XNAT_PASS=PASSWORD)
    assert started.returncode == 0, started.stderr
    try:
        listed = _as_nobody("ls", str(point))
        assert listed.returncode == 0 and "PROJ01" in listed.stdout
    finally:
        unmount(str(point))


def test_cache_folders_are_0700_and_files_0600(tmp_path: Path):
    cache = ChunkCache(str(tmp_path / "cache"), 64 << 20, chunk_size=1 << 20, min_free=0)
    try:
        size = SMALL_IN_DB + 1000  # values of files of their own, not inside SQLite
        for n in range(40):  # enough values for several value folders
            assert cache.put(RemoteFile(f"/data/f{n}", size, None), 0, os.urandom(size))
    finally:
        cache.close()
    paths = [tmp_path / "cache", *(tmp_path / "cache").rglob("*")]
    assert sum(p.is_dir() for p in paths) > 2
    assert sum(p.suffix == ".val" for p in paths) == 40
    wrong = {str(p): oct(stat.S_IMODE(p.lstat().st_mode)) for p in paths
             if stat.S_IMODE(p.lstat().st_mode) != (0o700 if p.is_dir() else 0o600)}
    assert wrong == {}


# -- TLS ------------------------------------------------------------------------------------


def test_tls_is_verified_unless_insecure_and_then_it_warns(emu: Emulator, certificate,
                                                           tmp_path: Path):
    port, stop = tls_proxy((emu.host, emu.port), *certificate)
    url = f"https://127.0.0.1:{port}"
    try:
        refused = xnatfs("ls", url, "-u", USER, XNAT_PASS=PASSWORD)
        # A CA bundle in the environment (common on clusters) must not undo --insecure.
        bundle = {"XNAT_PASS": PASSWORD, "REQUESTS_CA_BUNDLE": certifi.where()}
        insecure = xnatfs("ls", url, "-u", USER, "--insecure", **bundle)
        fetched = xnatfs("materialize", url, "PROJ01/S001", "-o", str(tmp_path), "--insecure",
                         "-u", USER, **bundle)
    finally:
        stop()
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "TLS certificate" in refused.stderr
    assert "--insecure" in refused.stderr and "Traceback" not in refused.stderr
    assert insecure.returncode == 0 and insecure.stdout.split() == ["PROJ01/"]
    assert "warning: TLS certificate" in insecure.stderr
    assert fetched.returncode == 0, fetched.stderr
    assert "warning: TLS certificate" in fetched.stderr
    assert any(tmp_path.rglob("*.dcm"))


@needs_fuse
@pytest.mark.fuse
def test_cache_clear_really_removes_cached_bytes(emu: Emulator, tmp_path: Path):
    """Every byte read through a mount sits in its cache; after ``cache clear`` no file below
    the cache folder holds any piece of any of them (SQLite pages and journals included)."""
    point, cache = tmp_path / "mnt", tmp_path / "cache"
    point.mkdir()
    started = xnatfs("mount", emu.url, str(point), "-u", USER, "--cache-dir", str(cache),
                     XNAT_PASS=PASSWORD)
    assert started.returncode == 0, started.stderr
    try:
        for rel, kind in tree_of(point).items():
            if kind == "file":
                (point / rel).read_bytes()
    finally:
        unmount(str(point))
        wait_served(str(point))  # the daemon stores what its cache writer holds as it exits
    files = list(emu.archive.files())
    probes = {f.uri: f.read(f.size // 2, 32) for f in files}  # 32 bytes from each file's middle

    def leftovers() -> list[str]:
        blob = b"".join(p.read_bytes() for p in cache.rglob("*") if p.is_file())
        return sorted(uri for uri, probe in probes.items() if probe in blob)

    assert len(leftovers()) == len(files)  # the probes do find cached data
    cleared = xnatfs("cache", "clear", "--cache-dir", str(cache))
    assert cleared.returncode == 0 and cleared.stdout.startswith("removed")
    assert leftovers() == []
