"""Never wrong bytes, never a dead mount: a lying or flaky server, case by case.

Each test is one way real XNATs, proxies and load balancers misbehave, driven by the emulator's
knobs: a login page with 200 for a dropped session (on listings, file GETs and HEADs alike),
listings without Size or digest, 206 bodies one byte off under correct headers, resets and 5xx
bursts (at most three in a row for one request, as a retry would meet them), a server that
hangs, one that ignores Range. The promise is about what a reader receives: the right bytes, or
an error for that read; and one failed request never takes the rest of the mount with it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.mount import QUICK_PAUSES, Mount, needs_fuse, read_outcomes
from tests.support.oracle import Oracle
from tests.system import test_faults
from tests.system.test_faults import Fault, assert_materialized, logins, materialize, victim
from xnat_emulator import Emulator, EmulatorConfig, SyntheticSpec, synthetic_archive
from xnatfs.cli import main
from xnatfs.errors import AuthError
from xnatfs.reader.chunkcache import CHUNK_SIZE, ChunkCache
from xnatfs.tree.model import Tree
from xnatfs.xnat import retry
from xnatfs.xnat.client import XnatClient
from xnatfs.xnat.credentials import Credentials

rig, archive = test_faults.rig, test_faults.archive  # fixtures
pytestmark = pytest.mark.timeout(180)
USERS = {"alice": "secret"}


# -- 1. a login page is never data -------------------------------------------------------------

BLANK_LOGIN = Fault({"html_login_on_expiry": True, "blank_file_rows": True})


def test_client_takes_a_login_page_on_a_file_get_for_a_lost_session(rig) -> None:
    emu, url, oracle, _ = rig(BLANK_LOGIN)
    path = victim(oracle)
    uri = oracle.uris()[path]
    with XnatClient(url, Credentials("alice", "secret")) as client:
        client.login()
        emu.expire_sessions()
        assert client.file_size(uri) == len(oracle.read(path))
        emu.expire_sessions()
        with client.open_file(uri) as body:
            assert b"".join(body.chunks()) == oracle.read(path)
    assert logins(emu) == 3


@needs_fuse
@pytest.mark.fuse
def test_mount_never_serves_a_login_page_as_a_file(rig, mount: Callable[..., Mount]) -> None:
    emu, url, oracle, _ = rig(BLANK_LOGIN)
    m = mount(SimpleNamespace(url=url), "--timeout", "5")
    paths = sorted(oracle.files)
    os.listdir(m / paths[0].rsplit("/", 1)[0])
    emu.expire_sessions()  # every GET and HEAD now gets the login page, with 200
    for path in paths:
        assert (m / path).stat().st_size == len(oracle.read(path)), path
    emu.expire_sessions()
    assert read_outcomes(m, oracle) == dict.fromkeys(oracle.files, "ok")


def test_materialize_never_saves_a_login_page(rig, capsys, tmp_path: Path) -> None:
    emu, url, oracle, _ = rig(BLANK_LOGIN)
    threading.Timer(0.3, emu.expire_sessions).start()
    emu.config.latency = 0.02
    code, summary, err = materialize(capsys, url, tmp_path)
    assert "Traceback" not in err
    assert_materialized(tmp_path, oracle, code, summary, set())


# -- 2. a read handed bytes that fail the MD5 ends in EIO ----------------------------------------

EVERY_RANGE_WRONG = Fault({"shift_rate": 1.0})


@needs_fuse
@pytest.mark.fuse
def test_every_206_wrong_gives_right_bytes_or_eio_never_wrong_bytes(
        rig, mount: Callable[..., Mount]) -> None:
    emu, url, oracle, _ = rig(EVERY_RANGE_WRONG)
    m = mount(SimpleNamespace(url=url), "--timeout", "5")
    big = victim(oracle, True)
    outcomes = []
    for _ in range(3):
        try:
            outcomes.append("ok" if (m / big).read_bytes() == oracle.read(big) else "WRONG")
        except OSError as exc:
            outcomes.append(errno.errorcode[exc.errno])
    assert "WRONG" not in outcomes
    assert set(outcomes) <= {"ok", "EIO"}
    assert any(r.fault == "shift" for r in emu.log)
    # Once the lie is known, the whole-file fallback brings the right bytes.
    assert outcomes[-1] == "ok"
    assert set(read_outcomes(m, oracle).values()) == {"ok"}


def test_materialize_with_every_206_wrong_writes_only_right_files(rig, capsys, tmp_path: Path):
    _emu, url, oracle, _ = rig(EVERY_RANGE_WRONG)
    code, summary, err = materialize(capsys, url, tmp_path)
    assert "Traceback" not in err
    assert_materialized(tmp_path, oracle, code, summary, None)


# -- 3. one failed request is not a dead server --------------------------------------------------

COMBINED = {"error_rate": 0.3, "reset_rate": 0.1, "truncate_rate": 0.05, "fault_streak": 3}


@needs_fuse
@pytest.mark.fuse
def test_resets_and_5xx_never_fail_a_read_on_the_first_pass(rig, mount: Callable[..., Mount]):
    emu, url, oracle, _ = rig(Fault(COMBINED))
    m = mount(SimpleNamespace(url=url), "--timeout", "5")
    assert read_outcomes(m, oracle) == dict.fromkeys(oracle.files, "ok")
    assert sum(r.fault is not None for r in emu.log) > 5


# -- 4. login pages in a row are not a refused login ---------------------------------------------


def test_two_login_pages_in_a_row_do_not_lock_the_client_out(rig) -> None:
    emu, url, _oracle, _ = rig(Fault({"login_page_rate": 1.0, "fault_streak": 2}))
    with XnatClient(url, Credentials("alice", "secret")) as client:
        client.login()
        rows = client.listing("/data/projects")
        assert rows
        emu.config.login_page_rate = 0.0
        try:
            assert client.listing("/data/projects") == rows
        except AuthError as exc:  # pragma: no cover - the bug this guards against
            pytest.fail(f"a login that succeeded left the client refused: {exc}")


# -- 5. a hung server costs each call at most the timeout ----------------------------------------


@needs_fuse
@pytest.mark.fuse
def test_hung_server_gives_eio_within_the_timeout_and_the_mount_recovers(
        rig, mount: Callable[..., Mount]) -> None:
    emu, url, oracle, _ = rig(Fault())
    timeout, ttl = 1, 0.5
    # The product's own pauses between tries: the bound below is on its retry schedule.
    m = mount(SimpleNamespace(url=url), "--timeout", str(timeout), "--ttl", str(ttl),
              pauses=None)
    paths = sorted(oracle.files)
    first = m / paths[0]
    assert first.read_bytes() == oracle.read(paths[0])
    handle = open(m / paths[-1], "rb")  # noqa: SIM115 - held across the outage
    time.sleep(ttl + 0.1)  # the listings' TTL: the next lookups must ask the server
    emu.freeze()
    opened: list[int] = []

    def read_one() -> None:
        opened.append(os.open(m / paths[1], os.O_RDONLY))
        os.read(opened[-1], 4096)

    try:
        # Each FUSE call (the lookups of an open, a read, a readdir) waits at most --timeout
        # plus a second; allow three times that on a busy machine: never the minutes of a
        # retry cascade.
        for probe in (read_one, lambda: os.listdir(m / "")):
            started = time.monotonic()
            try:
                probe()
            except OSError as exc:
                assert exc.errno == errno.EIO
            calls = 2 if probe is read_one and opened else 1
            assert time.monotonic() - started < calls * 3 * (timeout + 1)
        started = time.monotonic()
        os.fstat(handle.fileno())  # an open file's attributes never wait on the server
        assert time.monotonic() - started < 1
    finally:
        emu.thaw()
    assert handle.read() == oracle.read(paths[-1])
    handle.close()
    for fd in opened:
        os.close(fd)
    assert (m / paths[1]).read_bytes() == oracle.read(paths[1])


def test_materialize_stops_by_its_own_bound_when_the_server_hangs(rig, capsys, tmp_path: Path):
    emu, url, _oracle, _ = rig(Fault())
    emu.freeze()
    started = time.monotonic()
    try:
        code = main(["materialize", url, "/", "-o", str(tmp_path), "--timeout", "1"])
    finally:
        emu.thaw()
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err and "sent nothing for" in err
    assert time.monotonic() - started < 60


# -- 6. a server that ignores Range streams each file once -------------------------------------


def test_rangeless_server_streams_a_file_once_for_eight_readers(make_emulator) -> None:
    from xnatfs.reader.fetcher import Fetcher
    from xnatfs.reader.handle import FileHandle

    size = 16 * CHUNK_SIZE + 123
    one_file = synthetic_archive(SyntheticSpec(
        projects=1, subjects=1, sessions=1, scans=1, dicoms=0, niftis=1, nifti_size=size,
        assessors=0, session_resources=0, subject_resources=0, project_resources=0, seed=5))
    emu: Emulator = make_emulator(one_file, USERS, range_enabled=False)
    expected = next(f for f in one_file.files() if f.size == size).read()
    with XnatClient(emu.url, Credentials("alice", "secret")) as client:
        client.login()
        node = next(n for _, n in Tree(client).walk("/") if n.file and n.file.size == size)
        fetcher = Fetcher(client, None)
        emu.log.clear()
        results: list[bytes] = [b""] * 8

        def read(i: int) -> None:
            handle = FileHandle(fetcher, node.file)
            parts, offset = [], 0
            while offset < size:
                parts.append(handle.read(offset, 1 << 20))
                offset += len(parts[-1])
            handle.close()
            results[i] = b"".join(parts)

        threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        fetcher.close()
    assert all(r == expected for r in results)
    gets = emu.log.select(kind="file")
    sent = sum(r.bytes_sent for r in gets)
    # One stream for all: the first answer showed Range ignored before others asked.
    assert (len(gets), sent) == (1, size), [(r.range, r.bytes_sent) for r in gets]


# -- 7. a symbolic link in DIR never counts as a file there ---------------------------------------


def test_materialize_refuses_a_symlink_in_the_output_folder(rig, capsys, tmp_path: Path) -> None:
    _emu, url, oracle, _ = rig(Fault())
    outside = tmp_path / "outside"
    code, summary, _ = materialize(capsys, url, outside)
    assert code == 0
    project = next(iter(oracle.files)).split("/")[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / project).symlink_to(outside / project)
    code, summary, err = materialize(capsys, url, out)
    assert code != 0
    assert summary["present"] == 0 if "present" in summary else True
    assert "symbolic link" in err and "Traceback" not in err
    assert not any(p.is_file() and not p.is_symlink() for p in out.rglob("*")
                   if not str(p).startswith(str(out / project)))


# -- 8. the cache's folders are private from the first one we create -----------------------------


def test_cache_folders_are_created_private(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    cache = ChunkCache()
    cache.close()
    for folder in (tmp_path / ".cache", tmp_path / ".cache" / "xnatfs",
                   tmp_path / ".cache" / "xnatfs" / "chunks"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


# -- the whole hostile dataset under every fault at once -----------------------------------------


@needs_fuse
@pytest.mark.fuse
def test_hostile_dataset_reads_right_under_combined_faults(
        make_emulator, hostile_archive, mount: Callable[..., Mount], oracle, tmp_path, capsys,
        monkeypatch) -> None:
    emu: Emulator = make_emulator(hostile_archive)
    want: Oracle = oracle(emu)
    emu.config = EmulatorConfig(seed=11, error_rate=0.2, reset_rate=0.1, truncate_rate=0.1,
                                stall_rate=0.05, stall_seconds=0.25, login_page_rate=0.1,
                                shift_rate=0.2, fault_streak=3)
    missing = {p for p in want.files if want.files[p].missing}  # listed, but 404
    m = mount(emu, "--timeout", "2")
    for path in sorted(set(want.files) - missing):
        try:
            got = (m / path).read_bytes()
        except OSError as exc:
            raise AssertionError(f"{path}: {exc}\n{m.log.read_text()[-4000:]}") from None
        assert hashlib.md5(got).hexdigest() == hashlib.md5(want.read(path)).hexdigest(), path
    monkeypatch.setenv("XNAT_USER", "alice")
    monkeypatch.setenv("XNAT_PASS", "secret")
    monkeypatch.setattr(retry, "PAUSES", QUICK_PAUSES)  # as the mount's (the same tries)
    code, summary, err = materialize(capsys, emu.url, tmp_path / "out", "--timeout", "2")
    assert {f["path"] for f in summary["failures"]} == missing, err
    assert code == (1 if missing else 0)
    for path in set(want.files) - missing:
        assert (tmp_path / "out" / path).read_bytes() == want.read(path), path
