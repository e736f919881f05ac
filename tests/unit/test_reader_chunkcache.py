"""The chunk cache: keys carry versions, limits hold at insert, damage is never served."""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from xnatfs.reader.chunkcache import ChunkCache, default_cache_dir
from xnatfs.tree.model import RemoteFile

pytestmark = pytest.mark.timeout(60)
CHUNK = 64 << 10
FILE = RemoteFile("/data/experiments/E1/scans/1/resources/9/files/a b+c.nii", 10 * CHUNK,
                  "0" * 32)


def make(directory: Path, limit: int = 64 * CHUNK, **kw: int) -> ChunkCache:
    return ChunkCache(str(directory), limit, chunk_size=CHUNK, **kw)


def data(i: int, size: int = CHUNK) -> bytes:
    return random.Random(i).randbytes(size)


def test_round_trip_and_versions(tmp_path: Path) -> None:
    cache = make(tmp_path / "c")
    assert cache.get(FILE, 0) is None
    assert cache.put(FILE, 0, data(0))
    assert cache.get(FILE, 0) == data(0)
    assert cache.contains(FILE, 0)
    changed = RemoteFile(FILE.uri, FILE.size, "f" * 32)  # same file, new content on the server
    assert cache.get(changed, 0) is None
    assert cache.get(RemoteFile(FILE.uri, FILE.size + 1, FILE.digest), 0) is None
    small = b"tiny value kept inside SQLite"
    assert cache.put(FILE, 1, small)
    assert cache.get(FILE, 1) == small


def test_survives_reopen_and_clear_leaves_nothing(tmp_path: Path) -> None:
    make(tmp_path / "c").put(FILE, 3, data(3))
    again = make(tmp_path / "c")
    assert again.get(FILE, 3) == data(3)
    small = random.Random(9).randbytes(3000)  # kept inside SQLite, not in a file of its own
    again.put(FILE, 4, small)
    assert again.stats()["entries"] == 2

    def leftovers() -> list[bytes]:
        blob = b"".join(p.read_bytes() for p in (tmp_path / "c").rglob("*") if p.is_file())
        return [probe for probe in (data(3)[1000:1032], small[1000:1032]) if probe in blob]

    assert len(leftovers()) == 2
    assert again.clear() == 2
    assert again.get(FILE, 3) is None
    assert leftovers() == []  # neither in value files nor in SQLite's pages or its log


def test_private_modes(tmp_path: Path) -> None:
    cache = make(tmp_path / "c")
    cache.put(FILE, 0, data(0))
    cache.put(FILE, 1, b"small")
    assert stat.S_IMODE(os.stat(cache.directory).st_mode) == 0o700
    files = [Path(w) / f for w, _, fs in os.walk(cache.directory) for f in fs]
    assert any(f.suffix == ".val" for f in files)
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


@pytest.mark.parametrize("damage", ["truncate", "garble", "delete"])
def test_damaged_entry_is_dropped_not_served(tmp_path: Path, damage: str) -> None:
    """A value file cut short or garbled (a SIGKILLed mount, a crash) reads as absent."""
    cache = make(tmp_path / "c")
    cache.put(FILE, 0, data(0))
    [value] = [Path(w) / f for w, _, fs in os.walk(cache.directory) for f in fs
               if f.endswith(".val")]
    if damage == "truncate":
        value.write_bytes(data(0)[: CHUNK // 2])
    elif damage == "garble":
        value.write_bytes(data(0)[:-1] + b"\x00")
    else:
        value.unlink()
    assert cache.get(FILE, 0) is None
    if damage != "delete":  # a value that fails its check is dropped at once
        assert not cache.contains(FILE, 0)
    # A missing value file may leave its index row (diskcache cannot tell it from a concurrent
    # cull); in every case the next put replaces the entry and is served.
    assert cache.put(FILE, 0, data(0)) and cache.get(FILE, 0) == data(0)


def test_entries_checked_with_crc32_by_earlier_versions_are_still_served(
        tmp_path: Path) -> None:
    """XXH3 replaced CRC32 as the entry checksum; a cache written before keeps its chunks,
    and a damaged one of those is still caught."""
    cache = make(tmp_path / "c")
    crc_tag = (CHUNK << 32) | zlib.crc32(data(0))
    cache._cache.set(cache._key(FILE, 0), data(0), tag=crc_tag)
    cache._cache.set(cache._key(FILE, 1), data(1), tag=crc_tag)  # data(1) is not what was hashed
    assert cache.get(FILE, 0) == data(0)
    assert cache.get(FILE, 1) is None and not cache.contains(FILE, 1)


def test_size_limit_holds_at_every_insert_and_evicts_least_recently_used(
        tmp_path: Path) -> None:
    limit = 16 * CHUNK
    cache = make(tmp_path / "c", limit)
    cache.put(FILE, 0, data(0))
    for i in range(1, 40):
        assert cache.get(FILE, 0) == data(0)  # kept in use: LRU keeps it
        cache.put(FILE, i, data(i))
        assert int(cache.stats()["bytes"]) <= limit
        on_disk = sum(f.stat().st_size for f in Path(cache.directory).rglob("*.val"))
        assert on_disk <= limit
    assert cache.get(FILE, 0) == data(0)
    assert cache.get(FILE, 1) is None  # stored long ago and never read again
    assert cache.get(FILE, 39) == data(39)


def test_free_disk_floor_skips_caching(tmp_path: Path) -> None:
    """With less free disk than the floor, nothing is cached (and reads still work)."""
    free = shutil.disk_usage(tmp_path).free
    cache = make(tmp_path / "c", min_free=free + (1 << 30))
    assert not cache.put(FILE, 0, data(0))
    assert cache.get(FILE, 0) is None
    roomy = make(tmp_path / "d", min_free=0)
    assert roomy.put(FILE, 0, data(0))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of its own: free space that only this test changes (the machine's disk is
    shared with other writers, so a floor just above its free space is a race)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs",
                              str(disk)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)


def test_floor_evicts_own_chunks_first(small_disk: Path) -> None:
    cache = make(small_disk / "c", min_free=0)
    for i in range(6):
        assert cache.put(FILE, i, data(i))
    cache.min_free = 1 << 20
    # The disk fills up (someone else's file) to half a chunk above the floor.
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(bytes(free - cache.min_free - CHUNK // 2))
    assert cache.put(FILE, 9, data(9))  # room made by evicting its own oldest chunks
    assert cache.get(FILE, 9) == data(9)
    assert int(cache.stats()["entries"]) < 7
    assert not cache.contains(FILE, 0)  # the least recently used went first
    assert shutil.disk_usage(small_disk).free >= cache.min_free
    # A floor it cannot reach even with every chunk gone: put says so.
    cache.min_free = shutil.disk_usage(small_disk).free + 64 * CHUNK
    assert not cache.put(FILE, 8, data(8))
    assert not cache.contains(FILE, 8)
    cache.close()


def test_default_dir_is_per_user() -> None:
    assert default_cache_dir().endswith(os.path.join("xnatfs", "chunks"))


def test_written_behind_chunks_are_served_at_once_and_stored_by_close(tmp_path: Path) -> None:
    cache = make(tmp_path / "c")
    for i in range(8):
        cache.put_behind(FILE, i, data(i))
    assert all(cache.get(FILE, i) == data(i) and cache.contains(FILE, i) for i in range(8))
    cache.close()  # stores what is still waiting
    again = make(tmp_path / "c")
    assert all(again.get(FILE, i) == data(i) for i in range(8))


def test_a_delete_is_never_undone_by_a_chunk_written_behind(tmp_path: Path) -> None:
    """The fetcher evicts every chunk of a file that failed its MD5, perhaps while they wait
    for the writer or while it stores them: none may reach the disk after its delete."""
    cache = make(tmp_path / "c", limit=1024 * CHUNK)
    rng = random.Random(3)
    for round_ in range(20):
        f = RemoteFile(f"{FILE.uri}.{round_}", FILE.size, FILE.digest)
        for i in range(10):
            cache.put_behind(f, i, data(i))
            if rng.random() < 0.3:
                cache.delete(f, rng.randrange(i + 1))
        gone = rng.sample(range(10), 4)
        for i in gone:
            cache.delete(f, i)
        for i in gone:
            assert cache.get(f, i) is None
        cache.flush()
        for i in gone:
            assert cache.get(f, i) is None and not cache.contains(f, i)
    cache.close()


def test_a_second_cache_on_one_folder_keeps_seeing_other_processes(tmp_path: Path) -> None:
    """Opening the cache once more in a process must not drop the POSIX locks SQLite holds
    on its database (closing any descriptor of the file does): a process that did so went
    on reading a stale view, blind to what a mount committed."""
    first = make(tmp_path / "c")
    second = make(tmp_path / "c")
    second.put(FILE, 0, data(0))
    assert first.stats()["entries"] == 1
    script = textwrap.dedent(f"""
        import random
        from xnatfs.reader.chunkcache import ChunkCache
        from xnatfs.tree.model import RemoteFile
        cache = ChunkCache({str(tmp_path / "c")!r}, {64 * CHUNK}, chunk_size={CHUNK})
        cache.put(RemoteFile({FILE.uri!r}, {FILE.size}, {FILE.digest!r}), 1,
                  random.Random(1).randbytes({CHUNK}))
        print("stored", flush=True)
        input()  # still open: what it wrote is in the write-ahead log only
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "stored\n"
        assert first.contains(FILE, 1) and first.get(FILE, 1) == data(1)
        assert second.get(FILE, 1) == data(1)
    finally:
        child.communicate("\n", timeout=30)


def test_chunks_written_behind_are_stored_when_the_process_ends_without_closing(
        tmp_path: Path) -> None:
    """A script that reads through fsspec and ends at once: its chunks are cached for its
    next run, though the writer thread is a daemon."""
    script = textwrap.dedent(f"""
        import random
        from xnatfs.reader.chunkcache import ChunkCache
        from xnatfs.tree.model import RemoteFile
        cache = ChunkCache({str(tmp_path / "c")!r}, {64 * CHUNK}, chunk_size={CHUNK})
        f = RemoteFile({FILE.uri!r}, {FILE.size}, {FILE.digest!r})
        for i in range(10):
            cache.put_behind(f, i, random.Random(i).randbytes({CHUNK}))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    cache = make(tmp_path / "c")
    assert [cache.get(FILE, i) for i in range(10)] == [data(i) for i in range(10)]
