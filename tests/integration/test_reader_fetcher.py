"""The fetcher against a live emulator: exact bytes or an error, and as few requests as can be."""

from __future__ import annotations

import errno
import hashlib
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from xnat_emulator import Archive, Emulator, File, SyntheticSpec, synthetic_archive
from xnatfs.errors import IntegrityError, XnatfsError
from xnatfs.reader.chunkcache import ChunkCache
from xnatfs.reader.fetcher import Fetcher
from xnatfs.reader.handle import FileHandle
from xnatfs.tree.model import RemoteFile
from xnatfs.xnat.client import XnatClient
from xnatfs.xnat.credentials import Credentials

pytestmark = pytest.mark.timeout(60)
CHUNK = 256 << 10
BIG = 9 * CHUNK + 12345  # ten chunks, the last one short
QUICK = (0.01, 0.01, 0.01)  # pauses between tries


@pytest.fixture(scope="module")
def archive() -> Archive:
    return synthetic_archive(SyntheticSpec(projects=1, subjects=1, sessions=1, scans=1,
                                           dicoms=2, dicom_size=5000, nifti_size=BIG))


@pytest.fixture
def emu(make_emulator: Callable[..., Emulator], archive: Archive) -> Emulator:
    return make_emulator(archive)


@pytest.fixture
def client(emu: Emulator) -> Iterator[XnatClient]:
    with XnatClient(emu.url, Credentials("alice", "secret")) as c:
        c.login()
        yield c


@pytest.fixture
def fetcher(client: XnatClient, tmp_path: Path) -> Iterator[Fetcher]:
    f = Fetcher(client, ChunkCache(str(tmp_path / "cache"), 64 << 20, chunk_size=CHUNK), CHUNK,
                pauses=QUICK)
    yield f
    f.close()


def big(archive: Archive) -> File:
    return next(f for f in archive.files() if f.size == BIG)


def small(archive: Archive) -> File:
    return next(f for f in archive.files() if f.size == 5000)


def remote(f: File) -> RemoteFile:
    return RemoteFile(f.uri, f.size, f.md5)


def expected(f: File, index: int) -> bytes:
    return f.read(index * CHUNK, CHUNK)


def file_gets(emu: Emulator) -> list[str | None]:
    return [r.range for r in emu.log.select(kind="file")]


def test_every_chunk_is_exact(emu: Emulator, fetcher: Fetcher, archive: Archive) -> None:
    f = big(archive)
    assert fetcher.chunk_count(remote(f)) == 10
    got = [fetcher.chunk(remote(f), i) for i in range(10)]
    assert [len(g) for g in got] == [CHUNK] * 9 + [12345]
    assert b"".join(got) == f.read()
    assert file_gets(emu) == [f"bytes={i * CHUNK}-{min((i + 1) * CHUNK, BIG) - 1}"
                              for i in range(10)]
    assert [fetcher.chunk(remote(f), i) for i in range(10)] == got
    assert len(file_gets(emu)) == 10  # the second pass came from the caches
    with pytest.raises(ValueError):
        fetcher.chunk(remote(f), 10)


def test_small_file_is_fetched_whole_without_range(
        emu: Emulator, fetcher: Fetcher, archive: Archive) -> None:
    f = small(archive)
    assert fetcher.chunk(remote(f), 0) == f.read()
    assert file_gets(emu) == [None]


def test_concurrent_readers_of_a_chunk_share_one_request(
        emu: Emulator, fetcher: Fetcher, archive: Archive) -> None:
    emu.config.latency = 0.3
    f = big(archive)
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: fetcher.chunk(remote(f), 4), range(12)))
    assert results == [expected(f, 4)] * 12
    assert len(file_gets(emu)) == 1


def test_cached_never_touches_the_network_and_store_false_keeps_out(
        emu: Emulator, fetcher: Fetcher, archive: Archive) -> None:
    f = big(archive)
    assert fetcher.cached(remote(f), 1) is None
    assert fetcher.chunk(remote(f), 1, store=False) == expected(f, 1)
    assert fetcher.cached(remote(f), 1) is None
    fetcher.chunk(remote(f), 2)
    assert fetcher.cached(remote(f), 2) == expected(f, 2)
    assert len(file_gets(emu)) == 2


def test_a_changed_file_is_not_served_from_the_cache(
        emu: Emulator, fetcher: Fetcher, archive: Archive) -> None:
    f = big(archive)
    fetcher.chunk(remote(f), 0)
    newer = replace(remote(f), digest=hashlib.md5(b"new content").hexdigest())
    assert fetcher.cached(newer, 0) is None
    fetcher.chunk(newer, 0)
    assert len(file_gets(emu)) == 2


def test_prefetch_takes_one_request_per_run(
        emu: Emulator, fetcher: Fetcher, archive: Archive) -> None:
    f = big(archive)
    fetcher.chunk(remote(f), 3)
    fetcher.prefetch(remote(f), 1, 6).result(timeout=10)
    assert file_gets(emu)[1:] == [f"bytes={1 * CHUNK}-{3 * CHUNK - 1}",
                                  f"bytes={4 * CHUNK}-{7 * CHUNK - 1}"]
    assert [fetcher.chunk(remote(f), i) for i in range(1, 7)] == \
        [expected(f, i) for i in range(1, 7)]
    assert len(file_gets(emu)) == 3


def test_server_ignoring_range_streams_the_file_once(
        emu: Emulator, fetcher: Fetcher, archive: Archive) -> None:
    emu.config.range_enabled = False
    f = big(archive)
    assert fetcher.chunk(remote(f), 7) == expected(f, 7)
    assert [fetcher.chunk(remote(f), i) for i in range(10)] == \
        [expected(f, i) for i in range(10)]
    assert len(file_gets(emu)) == 1  # every chunk came from that one 200


def test_server_ignoring_range_with_concurrent_readers(
        emu: Emulator, fetcher: Fetcher, archive: Archive) -> None:
    emu.config.range_enabled = False
    emu.config.latency = 0.1
    f = big(archive)
    with ThreadPoolExecutor(10) as pool:
        got = list(pool.map(lambda i: fetcher.chunk(remote(f), i), reversed(range(10))))
    assert got == [expected(f, i) for i in reversed(range(10))]
    assert len(file_gets(emu)) == 1  # the first answer came before the others asked


def test_a_download_continued_mid_file_from_a_rangeless_server_goes_straight_on(
        make_emulator: Callable[..., Emulator]) -> None:
    """materialize continuing a part file at chunk 12: the whole-file stream hands the chunks
    behind 12 to nobody. Held for readers (no disk cache keeps them), they made the stream wait
    a deadline for each one past HELD_AHEAD, and the readers of 13 on timed out."""
    size = 20 * CHUNK + 99
    archive = synthetic_archive(SyntheticSpec(
        projects=1, subjects=1, sessions=1, scans=1, dicoms=0, nifti_size=size, assessors=0,
        session_resources=0, subject_resources=0, project_resources=0))
    f = next(f for f in archive.files() if f.size == size)
    emu = make_emulator(archive, range_enabled=False)
    with XnatClient(emu.url, Credentials("alice", "secret")) as client:
        client.login()
        fetcher = Fetcher(client, None, CHUNK, deadline=1.0, pauses=QUICK)
        try:
            part = RemoteFile(f.uri, size, None)
            got = [fetcher.chunk(part, i, store=False, check=False) for i in range(12, 21)]
        finally:
            fetcher.close()
    assert b"".join(got) == f.read()[12 * CHUNK:]
    assert len(file_gets(emu)) == 1


def test_md5_mismatch_evicts_retries_then_fails(
        emu: Emulator, fetcher: Fetcher, archive: Archive) -> None:
    f = big(archive)
    wrong = replace(remote(f), digest="0" * 32)
    for i in range(9):
        assert fetcher.chunk(wrong, i) == expected(f, i)  # unverifiable until the end
    with pytest.raises(IntegrityError, match="MD5") as failure:
        fetcher.chunk(wrong, 9)
    assert failure.value.errno == errno.EIO
    assert all(fetcher.cached(wrong, i) is None for i in range(10))
    assert fetcher.taint(wrong) == 1  # handles that were given bytes of it fail from now on
    # The next reader gets it whole, without Range (ranged answers may be what lied); it
    # fails its MD5 whole too, so that version of the file is bad: EIO for every read.
    assert fetcher.chunk(wrong, 0) == expected(f, 0)
    assert file_gets(emu)[10:][0] is None
    with pytest.raises(IntegrityError, match="MD5"):
        for i in range(1, 10):
            fetcher.chunk(wrong, i)
    with pytest.raises(IntegrityError, match="MD5"):
        fetcher.chunk(wrong, 0)
    assert fetcher.chunk(remote(f), 9) == expected(f, 9)  # the right digest still works


def test_unchecked_chunks_leave_the_md5_to_their_caller_and_never_reach_checked_ones(
        emu: Emulator, fetcher: Fetcher, archive: Archive) -> None:
    """check=False (materialize hashes what it writes): no MD5 failure, no taint, and the
    bytes are held apart from those of callers that expect them checked."""
    f = big(archive)
    wrong = replace(remote(f), digest="0" * 32)
    got = [fetcher.chunk(wrong, i, store=False, check=False) for i in range(10)]
    assert got == [expected(f, i) for i in range(10)] and fetcher.taint(wrong) == 0
    assert fetcher.cached(wrong, 9) is None
    with pytest.raises(IntegrityError, match="MD5"):
        for i in range(10):
            fetcher.chunk(wrong, i)


def test_md5_is_checked_when_chunks_arrive_out_of_order(
        fetcher: Fetcher, archive: Archive) -> None:
    wrong = replace(remote(big(archive)), digest="f" * 32)
    fetcher.prefetch(wrong, 5, 9).result(timeout=10)
    with pytest.raises(IntegrityError):
        for i in range(5):
            fetcher.chunk(wrong, i)
        fetcher.chunk(wrong, 9)


def test_last_chunk_waits_for_the_md5_of_chunks_still_in_flight(
        emu: Emulator, fetcher: Fetcher, archive: Archive) -> None:
    """cat of a small multi-chunk file: the kernel asks for every chunk at once, and the last
    one may arrive first; it must still not be served before the whole file is checked."""
    emu.config.conn_bandwidth = 4e6  # the span takes ~0.6 s, the short last chunk ~3 ms
    f = big(archive)
    wrong = replace(remote(f), digest="0" * 32)
    span = fetcher.prefetch(wrong, 0, 8)
    deadline = time.monotonic() + 10
    while not emu.log.select(kind="file") and time.monotonic() < deadline:
        time.sleep(0.005)  # until the span is in flight
    with pytest.raises(IntegrityError, match="MD5"):
        fetcher.chunk(wrong, 9)
    span.result(timeout=10)
    fetcher.prefetch(remote(f), 0, 8)
    assert fetcher.chunk(remote(f), 9) == expected(f, 9)  # the right digest passes


@pytest.mark.parametrize("fault", ["error_rate", "truncate_rate", "reset_rate"])
def test_faults_give_exact_bytes_or_eio(
        emu: Emulator, client: XnatClient, archive: Archive, fault: str) -> None:
    setattr(emu.config, fault, 0.4)
    f = big(archive)
    outcomes = []
    for attempt in range(3):
        fetcher = Fetcher(client, None, CHUNK, retries=attempt, pauses=QUICK)
        for i in range(10):
            try:
                assert fetcher.chunk(remote(f), i) == expected(f, i)
                outcomes.append("ok")
            except XnatfsError as exc:
                assert exc.errno == errno.EIO
                outcomes.append("eio")
        fetcher.close()
    assert "ok" in outcomes
    assert emu.log.count(fault=fault.removesuffix("_rate")) > 0


def test_dead_server_fails_fast_then_recovers(
        emu: Emulator, client: XnatClient, archive: Archive) -> None:
    fetcher = Fetcher(client, None, CHUNK, retries=1, pauses=QUICK)
    f = big(archive)
    emu.stop()
    started = time.monotonic()
    with pytest.raises(XnatfsError) as failure:
        fetcher.chunk(remote(f), 0)
    assert failure.value.errno == errno.EIO
    assert time.monotonic() - started < 20
    with pytest.raises(XnatfsError, match="unreachable"):  # fails at once, no retries
        fetcher.chunk(remote(f), 1)
    emu.start()
    time.sleep(1.1)  # one probe a second
    assert fetcher.chunk(remote(f), 0) == expected(f, 0)
    fetcher.close()


def test_unknown_size_is_refused(fetcher: Fetcher, archive: Archive) -> None:
    with pytest.raises(ValueError, match="size"):
        fetcher.chunk(replace(remote(big(archive)), size=None), 0)


ORDERS = {
    "forward": lambda n: list(range(n)),
    "backward": lambda n: list(range(n))[::-1],
    "tail-first": lambda n: [n - 1, *range(n - 1)],
    "random": lambda n: random.Random(19).sample(range(n), n),
}


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_a_remount_over_a_small_cache_never_serves_bytes_of_a_lying_server(
        emu: Emulator, client: XnatClient, archive: Archive, tmp_path: Path, order: str) -> None:
    """Issue 19: after a first whole read, a cache smaller than the file and a new process
    (a remount), a server whose 206 bodies are shifted gave wrong bytes to readers from the
    end: which copy passed the MD5 lived only in memory. Every read is right or EIO, and a
    handle that has read the whole file was given the copy that passed."""
    f = big(archive)
    remote = RemoteFile(f.uri, f.size, f.md5)
    cache = str(tmp_path / "small")
    first = Fetcher(client, ChunkCache(cache, 4 * CHUNK, chunk_size=CHUNK), CHUNK, memory=CHUNK)
    handle = FileHandle(first, remote)
    assert handle.read(0, f.size) == f.read()
    handle.close()
    first.close()
    first.cache.close()
    emu.config.shift_rate = 1.0
    again = Fetcher(client, ChunkCache(cache, 4 * CHUNK, chunk_size=CHUNK), CHUNK, memory=CHUNK)
    outcomes = []
    for attempt in range(2):
        handle = FileHandle(again, remote)
        try:
            for index in ORDERS[order](again.chunk_count(remote)):
                start, end = again.chunk_bounds(remote, index)
                assert handle.read(start, end - start) == f.read(start, end - start), \
                    (attempt, index)
            outcomes.append("ok")
        except XnatfsError as exc:
            assert exc.errno == errno.EIO
            outcomes.append("EIO")
        finally:
            handle.close()
    assert any(r.fault == "shift" for r in emu.log)
    # Once the lie is known, the file comes whole and right.
    assert outcomes[-1] == "ok", outcomes
    again.close()
    again.cache.close()
