"""``python -m xnatfs materialize`` as a separate process: killed with SIGKILL and rerun, driven
through a pseudo-terminal like the XNAT Downloader, and against a full or read-only disk."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.oracle import Oracle, is_record, output_files
from xnat_emulator import Emulator, EmulatorConfig, SyntheticSpec, synthetic_archive
from xnatfs.materialize.manifest import BATCH
from xnatfs.materialize.output import PART_SUFFIX
from xnatfs.reader.chunkcache import CHUNK_SIZE

SPEC = SyntheticSpec(projects=2, subjects=1, sessions=2, scans=2, dicoms=8, dicom_size=64 << 10,
                     niftis=1, nifti_size=2 * CHUNK_SIZE + 12345, assessors=0, seed=11)
USERS = {"alice": "secret"}


@pytest.fixture(scope="module")
def server():
    archive = synthetic_archive(SPEC)
    with Emulator(archive, EmulatorConfig(), users=USERS) as emu:
        yield emu, archive


@pytest.fixture
def emu(server):
    emu, _ = server
    emu.config = EmulatorConfig()
    emu.log.clear()
    yield emu
    emu.config = EmulatorConfig()


def env(**extra: str) -> dict[str, str]:
    """The environment of a child: no credentials unless given, no netrc, no cache."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("XNAT")}
    return {**base, "NETRC": "/nonexistent", "XDG_CACHE_HOME": "/nonexistent", **extra}


CREDS = {"XNAT_USER": "alice", "XNAT_PASS": "secret"}
COMMAND = [sys.executable, "-m", "xnatfs", "materialize"]


def expected(emu: Emulator, path: str) -> dict[str, tuple[str, str]]:
    """Tree path -> (request path of its file, MD5), for the files below ``path``."""
    o = Oracle.of(emu, path)
    return {p: (quote(uri, safe="/"), o.files[p].md5) for p, uri in o.uris().items()}


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def assert_complete(out: Path, want: dict[str, tuple[str, str]]) -> None:
    have = output_files(out)
    assert set(have) == set(want)
    for path, (_, digest) in want.items():
        assert md5_of(have[path]) == digest, path


def test_kill_9_then_rerun_continues_and_skips_verified_files(emu, tmp_path):
    want = expected(emu, "PROJ01")
    out = tmp_path / "out"
    emu.config.bandwidth = 6e6  # about 3 s for the project: slow enough to be killed
    child = subprocess.Popen([*COMMAND, emu.url, "PROJ01", "-o", str(out), "-j", "4"],
                             env=env(**CREDS), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    finals: set[str] = set()
    parts: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and child.poll() is None:
        finals, parts = set(), {}
        for p in out.rglob("*") if out.exists() else ():
            if p.name.endswith(PART_SUFFIX):
                try:  # renamed into place between the listing and now: a final next round
                    size = p.stat().st_size
                except FileNotFoundError:
                    continue
                parts[str(p.relative_to(out).parent / p.name[1:-len(PART_SUFFIX)])] = size
            elif p.is_file() and not is_record(p, out):
                finals.add(str(p.relative_to(out)))
        if finals and any(size >= CHUNK_SIZE for size in parts.values()):
            break
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert finals and any(size >= CHUNK_SIZE for size in parts.values())
    for path in finals:  # whatever was renamed into place is complete and right
        assert md5_of(out / path) == want[path][1]

    emu.config.bandwidth = None
    emu.log.clear()
    done = subprocess.run([*COMMAND, emu.url, "PROJ01", "-o", str(out), "--json"],
                          env=env(**CREDS), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # renamed but not yet recorded: hashed and adopted
    assert summary["present"] + summary["verified"] >= len(finals)
    assert summary["verified"] <= BATCH
    assert_complete(out, want)
    requested = [r for r in emu.log.records() if r.kind == "file"]
    for path in finals:
        assert not [r for r in requested if r.path == want[path][0]], path
    for path, size in parts.items():
        resume_at = size // CHUNK_SIZE * CHUNK_SIZE
        ranges = [r.range for r in requested if r.path == want[path][0]]
        if resume_at:  # continued with Range from its last whole chunk, never from 0
            assert ranges and all(r and int(r[6:].split("-")[0]) >= resume_at for r in ranges)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_reports_exactly_what_was_done_and_a_rerun_completes(
        emu, server, tmp_path, sig):
    """The summary counts every file on disk when the process ends, also files that finish
    while it is being printed; SIGTERM (a SLURM time limit) ends the same way."""
    want = expected(emu, "PROJ02")
    out = tmp_path / "out"
    emu.config.bandwidth = 6e6
    child = subprocess.Popen([*COMMAND, emu.url, "PROJ02", "-o", str(out), "--json"],
                             env=env(**CREDS), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not [p for p in out.rglob("*.dcm")]:
        time.sleep(0.02)
    child.send_signal(sig)
    doc, err = child.communicate(timeout=30)
    assert child.returncode == (130 if sig == signal.SIGINT else 143)
    lines = err.strip().splitlines()
    what = "interrupted" if sig == signal.SIGINT else "terminated"
    assert lines[-1] == f"xnatfs: {what}; run the same command again to resume"
    assert "not finished" in lines[-2]
    finals = [p for p in output_files(out).values() if not p.name.endswith(PART_SUFFIX)]
    assert json.loads(doc)["downloaded"] == len(finals) < len(want)
    manifest = (out / ".xnatfs" / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == len(finals)
    emu.config.bandwidth = None
    assert subprocess.run([*COMMAND, emu.url, "PROJ02", "-o", str(out)], env=env(**CREDS),
                          capture_output=True, timeout=60).returncode == 0
    assert_complete(out, want)


class Terminal:
    """A child process on a pseudo-terminal, driven like a user at a keyboard."""

    def __init__(self, argv: list[str], environ: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: its controlling terminal is the pty
            os.execve(argv[0], argv, environ)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        self.seen = ""

    def expect(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"waited for {text!r}, got {self.seen[-500:]!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                assert chunk, f"ended before {text!r}: {self.seen[-500:]!r}"
                self.seen += chunk.decode(errors="replace")
        before, _, self.seen = self.seen.partition(text)
        return before

    def send(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\n")

    def finish(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                self.seen += chunk.decode(errors="replace")
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("the child did not finish")


def test_xnat_downloader_habits_password_prompt_and_numbered_menu(emu, server, tmp_path):
    out = tmp_path / "out"
    term = Terminal([*COMMAND, "-w", emu.url + "/", "-u", "alice", "-o", str(out)], env())
    term.expect("Password for alice@")
    term.send("secret")
    menu = term.expect("Choose the project: ")
    assert "1) PROJ01" in menu and "2) PROJ02" in menu
    term.send("3")
    assert "there is no project 3" in term.expect("Choose the project: ")
    term.send("2")
    assert term.finish() == 0
    assert "materialize" in term.seen  # the progress bar, on a terminal
    assert_complete(out, expected(emu, "PROJ02"))


def test_no_path_and_no_terminal_is_a_clear_error(emu, tmp_path):
    done = subprocess.run([*COMMAND, "-w", emu.url, "-o", str(tmp_path)], env=env(**CREDS),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no terminal for the project menu" in done.stderr
    assert not emu.log.records()


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(not _unshare_works(),
                                   reason="needs unshare -rm to mount a small tmpfs")


def in_namespace(script: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a private mount namespace (as mapped root: tmpfs mounts work)."""
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                          text=True, timeout=120, env=env(**CREDS, **variables))


@needs_unshare
def test_a_full_disk_stops_with_one_line_and_a_rerun_completes(emu, server, tmp_path):
    want = expected(emu, "PROJ01")
    (tmp_path / "out").mkdir()
    (tmp_path / "copy").mkdir()
    script = """
    mount -t tmpfs -o size=7m tmpfs "$OUT" || exit 99
    "$PY" -m xnatfs materialize "$URL" PROJ01 -o "$OUT" -j 2 2>"$TMP/err1"; echo $? >"$TMP/rc1"
    find "$OUT" -type f ! -name '.*' ! -path '*/.xnatfs/*' ! -name MD5SUMS \
        -exec md5sum {} + >"$TMP/first"
    "$PY" -c 'import time; print(time.time())' >"$TMP/mark"
    mount -o remount,size=64m "$OUT"
    "$PY" -m xnatfs materialize "$URL" PROJ01 -o "$OUT" 2>"$TMP/err2"; echo $? >"$TMP/rc2"
    cp -a "$OUT/." "$TMP/copy/"
    """
    done = in_namespace(script, OUT=str(tmp_path / "out"), PY=sys.executable, URL=emu.url,
                        TMP=str(tmp_path))
    assert done.returncode == 0, done.stderr
    err1 = (tmp_path / "err1").read_text()
    assert (tmp_path / "rc1").read_text().strip() == "1"
    last = err1.strip().splitlines()[-1]
    assert last.startswith("xnatfs: cannot write ") and "No space left on device" in last
    assert err1.count("xnatfs: ") == 1
    first = {}  # what the full disk had finished: kept, and right
    for line in (tmp_path / "first").read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        first[os.path.relpath(path, tmp_path / "out")] = digest
    assert first and all(want[p][1] == d for p, d in first.items())
    assert (tmp_path / "rc2").read_text().strip() == "0", (tmp_path / "err2").read_text()
    assert_complete(tmp_path / "copy", want)
    mark = float((tmp_path / "mark").read_text())
    again = {r.path for r in emu.log.records() if r.kind == "file" and r.time > mark}
    assert not again & {want[p][0] for p in first}


@needs_unshare
def test_a_read_only_output_folder_is_one_line(emu, tmp_path):
    (tmp_path / "out").mkdir()
    script = """
    mount -t tmpfs -o ro tmpfs "$OUT" || exit 99
    "$PY" -m xnatfs materialize "$URL" PROJ01 -o "$OUT/sub" 2>"$TMP/err1"; echo $? >"$TMP/rc1"
    "$PY" -m xnatfs materialize "$URL" PROJ01 -o "$OUT" 2>"$TMP/err2"; echo $? >"$TMP/rc2"
    """
    done = in_namespace(script, OUT=str(tmp_path / "out"), PY=sys.executable, URL=emu.url,
                        TMP=str(tmp_path))
    assert done.returncode == 0, done.stderr
    for n, message in ((1, "cannot create output folder"), (2, "is not writable")):
        err = (tmp_path / f"err{n}").read_text()
        assert (tmp_path / f"rc{n}").read_text().strip() == "2"
        assert err.count("\n") == 1 and message in err
    assert not [r for r in emu.log.records() if r.kind == "file"]
