"""Real FUSE mounts against the emulator: what ordinary tools see, byte for byte, and what
they cost in requests. Timings are never asserted; request counts are."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.mount import Mount, bytes_under, needs_fuse, tree_of
from tests.support.oracle import Oracle
from xnat_emulator import Archive, Emulator, File, SyntheticSpec, synthetic_archive

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.timeout(90)]
MiB = 1 << 20
BIG = 9 * MiB + 12345  # three 4 MiB chunks, the last one short


@pytest.fixture(scope="module")
def big_archive() -> Archive:
    return synthetic_archive(SyntheticSpec(projects=1, subjects=1, sessions=1, scans=2,
                                           dicoms=2, nifti_size=BIG, assessors=0))


def big_file(m: Mount, o: Oracle) -> tuple[Path, File]:
    path = next(p for p in o.files if o.files[p].size == BIG)
    return m / path, o.files[path]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def files(emu: Emulator) -> int:
    return emu.log.count(kind="file")


def test_tree_and_hostile_names(hostile_emulator: Emulator, mount: Callable[..., Mount],
                                oracle: Callable[..., Oracle]) -> None:
    m, o = mount(hostile_emulator), oracle(hostile_emulator)
    shown = tree_of(m.path)
    assert {p for p, kind in shown.items() if kind == "file"} == set(o.files)
    names = [part for p in shown for part in p.split("/")]
    assert not {".", ".."} & set(names)
    assert all(len(n.encode()) <= 255 for n in names)
    for wanted in ("Subj With Space", "a+b (1).txt", "naïve 日本.dcm", "plus+sign", "_..",
                   "a_b"):
        assert wanted in names, wanted
    for path in o.files:
        content = o.files[path]
        if content.missing:
            with pytest.raises(FileNotFoundError):
                (m / path).read_bytes()
        else:
            assert (m / path).read_bytes() == content.read(), path
            assert os.stat(m / path).st_size == content.size


def test_ls_find_du_stat_never_download(emulator: Emulator, mount: Callable[..., Mount],
                                        oracle: Callable[..., Oracle]) -> None:
    m, o = mount(emulator), oracle(emulator)
    emulator.log.clear()
    for cmd in (["ls", "-lR", m.path], ["find", m.path], ["du", "-s", m.path]):
        subprocess.run(cmd, check=True, capture_output=True)
    for path in o.files:
        st = os.stat(m / path)
        assert st.st_size == o.files[path].size and st.st_mode & 0o777 == 0o444
    assert emulator.log.count(method="GET", kind="file") == 0
    assert emulator.log.count(method="HEAD") == 0


@pytest.mark.parametrize("sessions", [1, 2])
def test_ls_lR_costs_requests_per_session_not_per_file(
        make_emulator: Callable[..., Emulator], mount: Callable[..., Mount],
        sessions: int) -> None:
    counts = []
    for dicoms in (2, 40):
        spec = SyntheticSpec(projects=1, subjects=2, sessions=sessions, scans=3, dicoms=dicoms,
                             niftis=1, assessors=0)
        emu = make_emulator(synthetic_archive(spec))
        m = mount(emu)
        emu.log.clear()
        out = subprocess.run(["ls", "-lR", m.path], check=True, capture_output=True, text=True)
        assert out.stdout.count(".dcm") == 2 * sessions * 3 * dicoms
        counts.append(emu.log.count())
        assert files(emu) == 0
    assert counts[0] == counts[1]  # twenty times the files, not one request more
    # projects; a project's subjects, experiments and files; each subject's files; each
    # session's scans and files
    assert counts[0] == 1 + 3 + 2 + 2 * (2 * sessions)


def test_cp_r_of_a_session_is_byte_identical(
        emulator: Emulator, mount: Callable[..., Mount], oracle: Callable[..., Oracle],
        tmp_path: Path) -> None:
    m, o = mount(emulator), oracle(emulator)
    session = "/".join(next(p for p in o.files if "/scans/" in p).split("/")[:3])
    subprocess.run(["cp", "-r", str(m / session), str(tmp_path / "copy")], check=True)
    copied = {p: "file" for p, kind in tree_of(tmp_path / "copy").items() if kind == "file"}
    wanted = [p for p in o.files if p.startswith(session + "/")]
    assert sorted(copied) == sorted(p[len(session) + 1:] for p in wanted)
    for path in wanted:
        assert (tmp_path / "copy" / path[len(session) + 1:]).read_bytes() == \
            o.files[path].read()


def test_random_offset_reads(make_emulator: Callable[..., Emulator], big_archive: Archive,
                             mount: Callable[..., Mount], oracle: Callable[..., Oracle]) -> None:
    emu = make_emulator(big_archive)
    path, content = big_file(mount(emu), oracle(emu))
    fd = os.open(path, os.O_RDONLY)

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(offset=st.integers(0, BIG + 100), length=st.integers(0, 5 * MiB))
    def check(offset: int, length: int) -> None:
        assert os.pread(fd, length, offset) == content.read(offset, length)

    try:
        check()
    finally:
        os.close(fd)


def test_server_ignoring_range(make_emulator: Callable[..., Emulator], big_archive: Archive,
                               mount: Callable[..., Mount], oracle: Callable[..., Oracle]) -> None:
    emu = make_emulator(big_archive, range_enabled=False)
    path, content = big_file(mount(emu), oracle(emu))
    emu.log.clear()
    assert md5(path) == content.md5
    assert files(emu) == 1  # streamed once: read-ahead waits for the first answer's verdict
    assert all(r.status == 200 for r in emu.log.select(kind="file"))


@pytest.mark.parametrize("faults", [{"error_rate": 0.4}, {"truncate_rate": 0.3},
                                    {"reset_rate": 0.3, "error_rate": 0.1}])
def test_faults_give_exact_bytes_or_eio(
        make_emulator: Callable[..., Emulator], big_archive: Archive,
        mount: Callable[..., Mount], oracle: Callable[..., Oracle],
        faults: dict[str, float]) -> None:
    emu = make_emulator(big_archive)
    m, o = mount(emu, "--timeout", "5"), oracle(emu)
    tree_of(m.path)  # listings first, without faults
    for knob, rate in faults.items():
        setattr(emu.config, knob, rate)
    outcomes = []
    for path in o.files:
        try:
            assert (m / path).read_bytes() == o.files[path].read(), path
            outcomes.append("ok")
        except OSError as exc:
            assert exc.errno == errno.EIO, exc
            outcomes.append("eio")
    assert "ok" in outcomes
    assert any(r.fault for r in emu.log)  # faults were injected


def test_killed_server_gives_eio_in_bounded_time_then_recovers(
        make_emulator: Callable[..., Emulator], big_archive: Archive,
        mount: Callable[..., Mount], oracle: Callable[..., Oracle]) -> None:
    emu = make_emulator(big_archive)
    # The product's own pauses between tries: no reader may wait out their whole schedule.
    m, o = mount(emu, "--timeout", "3", pauses=None), oracle(emu)
    path, content = big_file(m, o)
    os.stat(path)
    emu.stop()
    started = time.monotonic()
    with pytest.raises(OSError) as failure:
        path.read_bytes()
    assert failure.value.errno == errno.EIO
    assert tree_of(m.path)  # listings are still served from memory
    for other in o.files:  # every reader fails at once now, no one waits out the retries
        with pytest.raises(OSError) as failure:
            (m / other).read_bytes()
        assert failure.value.errno == errno.EIO
    assert time.monotonic() - started < 30
    emu.start()
    time.sleep(1.1)  # one probe a second
    assert md5(path) == content.md5


def test_concurrent_readers_of_one_chunk_share_one_fetch(
        make_emulator: Callable[..., Emulator], big_archive: Archive,
        mount: Callable[..., Mount], oracle: Callable[..., Oracle]) -> None:
    emu = make_emulator(big_archive)
    path, content = big_file(mount(emu), oracle(emu))
    os.stat(path)  # the listings down to the file, before the latency: it is for the chunk
    emu.config.latency = 0.5
    emu.log.clear()
    results: dict[int, bytes] = {}

    def read(i: int) -> None:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no kernel readahead
        results[i] = os.pread(fd, 4096, i * 256 * 1024)
        os.close(fd)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: content.read(i * 256 * 1024, 4096) for i in range(8)}
    assert files(emu) == 1


def test_eviction_keeps_the_cache_under_its_limit(
        make_emulator: Callable[..., Emulator], mount: Callable[..., Mount],
        oracle: Callable[..., Oracle], tmp_path: Path) -> None:
    spec = SyntheticSpec(projects=1, subjects=2, sessions=2, scans=3, dicoms=4,
                         nifti_size=3 * MiB // 2, assessors=0)
    emu = make_emulator(synthetic_archive(spec))
    limit = 6 * MiB
    m, o = mount(emu, "--cache-size", "6M", cache_dir=str(tmp_path / "c")), oracle(emu)
    read = 0
    for path in o.files:
        assert (m / path).read_bytes() == o.files[path].read()
        read += o.files[path].size
        assert bytes_under(tmp_path / "c", skip=("-wal", "-shm")) <= limit
    assert read > 2 * limit


def test_remount_is_served_from_cache_with_the_server_stopped(
        emulator: Emulator, mount: Callable[..., Mount], oracle: Callable[..., Oracle],
        tmp_path: Path) -> None:
    o = oracle(emulator)
    cache = str(tmp_path / "shared-cache")
    first = mount(emulator, cache_dir=cache)
    session = "/".join(next(iter(o.files)).split("/")[:3])
    wanted = [p for p in o.files if p.startswith(session + "/")]
    for path in wanted:
        (first / path).read_bytes()
    assert first.stop() == 0
    second = mount(emulator, cache_dir=cache)
    tree_of(second.path)  # listings come from the server ...
    emulator.stop()  # ... but no byte does
    for path in wanted:
        assert (second / path).read_bytes() == o.files[path].read()


def test_read_only(emulator: Emulator, mount: Callable[..., Mount],
                   oracle: Callable[..., Oracle]) -> None:
    m, o = mount(emulator), oracle(emulator)
    path = m / next(iter(o.files))
    folder = path.parent
    attempts: list[Callable[[], object]] = [
        lambda: os.open(path, os.O_RDWR),
        lambda: os.open(folder / "new.txt", os.O_WRONLY | os.O_CREAT),
        lambda: (folder / "dir").mkdir(),
        lambda: path.unlink(),
        lambda: folder.rmdir(),
        lambda: path.rename(folder / "moved"),
        lambda: path.chmod(0o666),
        lambda: os.truncate(path, 0),
        lambda: os.utime(path, (0, 0)),
        lambda: os.symlink("x", folder / "link"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as failure:
            attempt()
        assert failure.value.errno == errno.EROFS
    assert os.statvfs(m.path).f_namemax == 255


def test_fstat_of_open_files_and_folders(emulator: Emulator, mount: Callable[..., Mount],
                                         oracle: Callable[..., Oracle]) -> None:
    m, o = mount(emulator), oracle(emulator)
    rel = next(iter(o.files))
    for path, is_dir in ((m / rel, False), ((m / rel).parent, True)):
        fd = os.open(path, os.O_RDONLY)
        try:
            assert os.fstat(fd) == os.stat(path)
            assert stat.S_ISDIR(os.fstat(fd).st_mode) == is_dir
        finally:
            os.close(fd)
    assert os.stat(m / rel).st_size == o.files[rel].size
