"""Read-ahead and file handles against a live emulator: the window grows while reading goes
on in order, resets on a seek, and a reader that stops early costs one chunk."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from xnat_emulator import Archive, Emulator, File, SyntheticSpec, synthetic_archive
from xnatfs.reader import zipstream
from xnatfs.reader.chunkcache import ChunkCache
from xnatfs.reader.fetcher import Fetcher
from xnatfs.reader.handle import FileHandle
from xnatfs.reader.policy import FIRST_WINDOW
from xnatfs.reader.readahead import FolderAhead, Readahead
from xnatfs.tree.model import RemoteFile, Tree
from xnatfs.xnat.client import XnatClient
from xnatfs.xnat.credentials import Credentials

pytestmark = pytest.mark.timeout(60)
CHUNK = 64 << 10
POOL = 8  # the fetcher's threads
SIZE = 40 * CHUNK - 1000


@pytest.fixture(scope="module")
def archive() -> Archive:
    return synthetic_archive(SyntheticSpec(projects=1, subjects=1, sessions=1, scans=1,
                                           dicoms=12, dicom_size=5000, nifti_size=SIZE))


@pytest.fixture
def emu(make_emulator: Callable[..., Emulator], archive: Archive) -> Emulator:
    return make_emulator(archive)


@pytest.fixture
def fetcher(emu: Emulator, tmp_path: Path) -> Iterator[Fetcher]:
    client = XnatClient(emu.url, Credentials("alice", "secret"))
    client.login()
    f = Fetcher(client, ChunkCache(str(tmp_path / "c"), 64 << 20, chunk_size=CHUNK), CHUNK,
                pool=ThreadPoolExecutor(POOL))
    yield f
    f.close()
    client.close()


@pytest.fixture
def big(archive: Archive) -> File:
    return next(f for f in archive.files() if f.size == SIZE)


def remote(f: File) -> RemoteFile:
    return RemoteFile(f.uri, f.size, f.md5)


def settle(ahead: Readahead) -> None:
    for future in list(ahead._pending):
        if not future.cancelled():
            future.result(timeout=10)


def test_window_doubles_while_sequential_and_resets_on_seek(
        fetcher: Fetcher, big: File) -> None:
    ahead = Readahead(fetcher, remote(big), first=1, max_window=8, streams=2, tolerance=1)
    windows = []
    for offset in range(0, 12 * CHUNK, CHUNK // 2):
        ahead.advise(offset, offset + CHUNK // 2)
        windows.append(ahead.window)
    assert windows[0] == 0  # a first read fetches nothing ahead
    assert windows[1] == 1
    assert max(windows) == 8 and windows == sorted(windows)
    ahead.advise(30 * CHUNK, 30 * CHUNK + 100)  # a seek
    assert ahead.window == 0
    ahead.close()


def test_kernel_reordering_within_tolerance_stays_sequential(
        fetcher: Fetcher, big: File) -> None:
    ahead = Readahead(fetcher, remote(big), max_window=8, tolerance=4)
    for offset in (0, CHUNK, 3 * CHUNK, 2 * CHUNK, 4 * CHUNK, 6 * CHUNK, 5 * CHUNK):
        ahead.advise(offset, offset + CHUNK)
    assert ahead.window >= 4
    ahead.close()


def test_a_reader_that_stops_early_costs_one_request(
        emu: Emulator, fetcher: Fetcher, big: File) -> None:
    handle = FileHandle(fetcher, remote(big))
    assert handle.read(0, 352) == big.read(0, 352)  # a NIfTI header
    handle.close()
    assert emu.log.count(kind="file") == 1


def test_sequential_read_fetches_each_chunk_once_in_its_own_request(
        emu: Emulator, fetcher: Fetcher, big: File) -> None:
    handle = FileHandle(fetcher, remote(big))
    assert handle.readahead is not None
    data = bytearray()
    while len(data) < SIZE:
        data += handle.read(len(data), CHUNK // 4)  # as 1 MiB reads of 4 MiB chunks
    settle(handle.readahead)
    assert bytes(data) == big.read()
    covered = [tuple(map(int, r.range.split("=")[1].split("-")))
               for r in emu.log.select(kind="file") if r.range]
    assert sum(b - a + 1 for a, b in covered) == SIZE  # no byte fetched twice
    # one request per chunk: as many in flight at the end of the file as in its middle
    assert len(covered) == -(-SIZE // CHUNK) and max(b - a + 1 for a, b in covered) == CHUNK
    handle.close()


def test_an_announced_read_fetches_its_first_window_at_once_a_chunk_per_request(
        emu: Emulator, fetcher: Fetcher, big: File) -> None:
    handle = FileHandle(fetcher, remote(big))
    handle.will_read(0, SIZE)  # fsspec's cat_file: the whole file, in order
    fetcher.pool.submit(lambda: None).result()
    deadline = time.monotonic() + 10
    while emu.log.count(kind="file") < FIRST_WINDOW and time.monotonic() < deadline:
        time.sleep(0.01)
    assert emu.log.count(kind="file") == FIRST_WINDOW  # chunks 1..4, before any read
    data = b"".join(handle.read(offset, CHUNK) for offset in range(0, SIZE, CHUNK))
    assert handle.readahead is not None
    settle(handle.readahead)
    assert data == big.read()
    covered = [tuple(map(int, r.range.split("=")[1].split("-")))
               for r in emu.log.select(kind="file") if r.range]
    assert sum(b - a + 1 for a, b in covered) == SIZE  # nothing twice, a chunk a request
    assert max(b - a + 1 for a, b in covered) == CHUNK
    handle.close()


def test_random_reads_are_exact_and_do_not_read_ahead(
        emu: Emulator, fetcher: Fetcher, big: File) -> None:
    handle = FileHandle(fetcher, remote(big))
    rng = random.Random(7)
    for _ in range(30):
        offset, size = rng.randrange(SIZE + 10), rng.randrange(1, 3 * CHUNK)
        assert handle.read(offset, size) == big.read(offset, size)
    assert handle.readahead is not None and handle.readahead.window <= 2
    handle.close()


def test_close_and_seek_cancel_what_has_not_started(
        emu: Emulator, fetcher: Fetcher, big: File) -> None:
    gate = threading.Event()
    busy = [fetcher.pool.submit(gate.wait) for _ in range(POOL)]
    ahead = Readahead(fetcher, remote(big), max_window=16, streams=16, tolerance=1)
    for offset in range(0, 6 * CHUNK, CHUNK):
        ahead.advise(offset, offset + CHUNK)
    queued = list(ahead._pending)
    assert queued
    ahead.advise(30 * CHUNK, 30 * CHUNK + 1)  # a seek
    assert all(f.cancelled() for f in queued)
    ahead.close()
    gate.set()
    for f in busy:
        f.result()
    assert emu.log.count(kind="file") == 0


def test_small_files_need_no_readahead(fetcher: Fetcher, archive: Archive) -> None:
    dicom = next(f for f in archive.files() if f.size < CHUNK)
    handle = FileHandle(fetcher, remote(dicom))
    assert handle.readahead is None
    assert handle.read(0, 1 << 20) == dicom.read()
    assert handle.read(dicom.size, 10) == b""


def test_files_of_a_folder_opened_in_order_are_fetched_ahead(
        emu: Emulator, fetcher: Fetcher) -> None:
    tree = Tree(fetcher.client)
    folder = next(p for p, _ in tree.walk("/") if p.endswith("0001.dcm")).rsplit("/", 1)[0]
    entries = tree.listdir(folder)
    files = [node.file for node in entries.values() if node.file is not None]
    ahead = FolderAhead(fetcher, files_ahead=4)
    ahead.opened(folder, entries, files[0])
    ahead.opened(folder, entries, files[5])  # a jump: nothing ahead yet
    ahead.opened(folder, entries, files[6])  # in order now: 7..10 come
    fetcher.pool.submit(lambda: None).result()
    deadline = time.monotonic() + 10  # a request is logged before its chunk is stored: wait
    while (sum(fetcher.cached(f, 0) is not None for f in files) < 4
           and time.monotonic() < deadline):  # for the chunks themselves
        time.sleep(0.01)
    assert [fetcher.cached(f, 0) is not None for f in files] == \
        [False] * 7 + [True] * 4 + [False]
    assert emu.log.count(kind="file") == 4


def test_a_folder_whose_files_are_cached_starts_no_zip(emu: Emulator, fetcher: Fetcher) -> None:
    tree = Tree(fetcher.client)
    folder = next(p for p, _ in tree.walk("/") if p.endswith("0001.dcm")).rsplit("/", 1)[0]
    entries = tree.listdir(folder)
    files = [node.file for node in entries.values() if node.file is not None]
    cold = FolderAhead(fetcher)
    cold.opened(folder, entries, files[0])
    cold.opened(folder, entries, files[1])
    zipper = cold._folders[folder].zip
    assert zipper is not None  # walked in order, nothing cached: a zip
    zipper.thread.join(timeout=10)  # done (12 small files) before the emulator goes
    for f in files:
        fetcher.chunk(f, 0)
    warm = FolderAhead(fetcher)  # as after a remount over the same cache
    for f in files[:4]:
        warm.opened(folder, entries, f)
    assert warm._folders[folder].zip is None


def test_a_far_server_zips_only_big_folders(emu: Emulator, fetcher: Fetcher,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    tree = Tree(fetcher.client)
    folder = next(p for p, _ in tree.walk("/") if p.endswith("0001.dcm")).rsplit("/", 1)[0]
    entries = tree.listdir(folder)
    files = [node.file for node in entries.values() if node.file is not None]
    monkeypatch.setattr(zipstream, "NEAR", 0.0)  # loopback as if over a WAN
    far = FolderAhead(fetcher, files_ahead=4)
    for f in files[:3]:
        far.opened(folder, entries, f)
    assert far._folders[folder].zip is None  # 12 files: parallel GETs fill a long link
    fetcher.pool.submit(lambda: None).result()
    monkeypatch.setattr(zipstream, "FAR_FILES", len(files))
    big = FolderAhead(fetcher)
    for f in files[:2]:
        big.opened(folder, entries, f)
    zipper = big._folders[folder].zip
    assert zipper is not None  # a catalog big enough: a zip after all
    zipper.thread.join(timeout=10)


def test_a_cold_reader_keeps_pace_with_its_md5_and_never_reads_the_disk_back(
        emu: Emulator, tmp_path: Path, big: File, monkeypatch: pytest.MonkeyPatch) -> None:
    """On two cores of loopback the MD5 is the slowest stage: a reader allowed to run ahead
    of it filled memory with chunks waiting to be hashed, and the memory's LRU sent chunks
    fetched ahead (and those the hash still needed) back through the disk cache."""
    from xnatfs.reader.integrity import LAG
    from xnatfs.reader.verify import Verifier

    update = Verifier.update

    def slow_update(self: Verifier, data: bytes | memoryview) -> None:
        time.sleep(0.005)  # a hash slower than the network, as MD5 is on loopback
        update(self, data)

    monkeypatch.setattr(Verifier, "update", slow_update)
    disk_reads = []

    class Counting(ChunkCache):
        def get(self, file: RemoteFile, index: int) -> bytes | None:
            data = super().get(file, index)
            if data is not None:
                disk_reads.append(index)
            return data

    client = XnatClient(emu.url, Credentials("alice", "secret"))
    client.login()
    f = Fetcher(client, Counting(str(tmp_path / "c"), 64 << 20, chunk_size=CHUNK), CHUNK,
                pool=ThreadPoolExecutor(POOL))
    handle = FileHandle(f, remote(big))
    lags = []
    data = bytearray()
    while len(data) < SIZE:
        data += handle.read(len(data), CHUNK // 4)
        hashed = f.checks.hashed(remote(big))
        if hashed is not None:
            lags.append(len(data) // CHUNK - hashed)
    assert bytes(data) == big.read()
    assert disk_reads == []
    assert max(lags) <= LAG + 1
    handle.close()
    f.close()
    client.close()
