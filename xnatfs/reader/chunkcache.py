"""The on-disk chunk cache: fixed-size pieces of remote files, shared by every mount.

Built on ``diskcache`` (SQLite index + one file per chunk) with these choices, each on purpose:

* **LRU, not diskcache's default LRS.** A mount re-reads what users keep working on; evicting by
  store time would throw out the files in use. LRU makes every ``get`` a write transaction, and
  diskcache reads the value inside it; concurrent readers then queue on SQLite's lock, whose
  busy handler sleeps for milliseconds. So calls into diskcache take a Python lock instead
  (a fast hand-over), and a value is fetched as an open file and read after the lock is gone.
* **Keys carry the file's version** (``RemoteFile.version``: listing size and digest), so a file
  that changes on the server gets new keys and the old chunks simply age out: never served stale.
* **The size limit holds at insert time.** diskcache culls after each insert; giving it a limit
  one chunk below ours means the cache never exceeds ours, even for a moment. A free-disk floor
  comes on top: when the disk runs low, our own oldest chunks go first, and if that is not enough
  the chunk is simply not cached (the read still succeeds).
* **Every entry is checked when read.** Its length and a 32-bit checksum are kept beside it
  (the diskcache tag), so a chunk cut short or garbled (a SIGKILLed mount, a crash, a full
  disk) is dropped and refetched, never served. The checksum is xxHash's XXH3 (80 GB/s here);
  zlib's CRC32 (6 GB/s) was a tenth of a cold read's CPU. Entries written with CRC32 by
  earlier versions carry no ``_XXH3`` bit and are still checked with it.
* **Chunks go around the page cache** (O_DIRECT, where the file system allows it). A cold read
  already fills the page cache once, with the file the reader sees; caching the chunk files as
  well doubled the kernel's work, for data re-read at disk speed anyway after a remount
  (measured here: cold reads 1.5x faster, re-reads after a remount no slower).
* **Written behind** (``put_behind``, what the mount uses): one writer thread takes every
  chunk waiting and stores them in one SQLite transaction. Readers find waiting chunks as if
  stored. Each small file stored in its own transaction, from whichever fetch thread got it,
  cost the mount 0.6 ms of CPU per file in ``cp -r`` of 64 KiB files (59 context switches
  per file; the lock and the GIL handed between threads at every SQLite call), half of all.
  ``close()``, and the end of the process, store what still waits.
* **Private**: the directory is 0700, files 0600 (the data may be identifiable patient data).
* **Records beside the chunks** (``put_record``): which copy of a file passed its MD5 (the
  XXH3 tag of each chunk, 8 bytes a chunk). They live in a store of their own, never culled
  with the chunks: a record evicted with the chunks let a remount take a shifted 206 body for
  a chunk of a file that had passed (the wrong bytes of issue 19).
* **Small chunks live inside SQLite** (below 256 KiB, and below a whole chunk): a file of its
  own for each cost its creation, and the writer thread spent a third of the mount's CPU of
  ``cp -r`` of 64 KiB files creating them (py-spy); inside the database they are written in
  the batch's one transaction. Whole chunks keep their files, read around the page cache.
* It survives remounts and is safe to share between processes (diskcache is process-safe).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import mmap
import os
import shutil
import sqlite3
import threading
import weakref
import zlib
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any

import diskcache
from diskcache.core import MODE_BINARY, UNKNOWN
from platformdirs import user_cache_dir

from xnatfs.dirs import private_dir
from xnatfs.reader.store import Checked
from xnatfs.tree.model import RemoteFile

log = logging.getLogger(__name__)

CHUNK_SIZE = 4 << 20
DIRECT_MIN = 1 << 20  # values this large are written around the page cache
SMALL_IN_DB = 256 << 10  # values smaller live inside SQLite, not in files of their own
DEFAULT_SIZE_LIMIT = 10 << 30
BEHIND_MAX = 32 << 20  # bytes waiting for the writer thread at most
RECORDS_LIMIT = 256 << 20  # records of passed copies: 8 bytes a chunk, 128 TiB of files
MIN_FREE_FRACTION = 0.05  # keep 5 % of the cache's file system free, as mountpoint-s3 does
_CACHE_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)


def default_cache_dir() -> str:
    """The per-user cache folder, e.g. ``~/.cache/xnatfs/chunks``."""
    return os.path.join(user_cache_dir("xnatfs", appauthor=False), "chunks")


@dataclass(frozen=True)
class _Written:
    """A value file already written (outside the lock); diskcache only records it."""

    filename: str
    size: int


class _PrivateDisk(diskcache.Disk):
    """diskcache's Disk that takes values already written to private (0600) files."""

    direct = True

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, str | None, Any]:
        if isinstance(value, _Written):
            return value.size, MODE_BINARY, value.filename, None
        return super().store(value, read, key=key)

    def filename(self, key: Any = UNKNOWN, value: Any = UNKNOWN) -> tuple[str, str]:
        """One level of 256 folders, not diskcache's 65,536: with many small files nearly
        every insert would otherwise make a folder (a quarter of the cost of an insert)."""
        name = os.urandom(16).hex()
        filename = os.path.join(name[:2], name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def write(self, data: bytes) -> _Written:
        """Write a value file in one call (diskcache's own ``store`` writes binary data line
        by line through a BytesIO, at half the speed). Large values bypass the page cache
        (O_DIRECT, through a reused aligned buffer), where the file system allows it."""
        filename, full_path = self.filename()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        direct = self.direct and len(data) >= DIRECT_MIN
        try:
            fd = os.open(full_path, flags | (os.O_DIRECT if direct else 0), 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(full_path), mode=0o700, exist_ok=True)
            fd = os.open(full_path, flags | (os.O_DIRECT if direct else 0), 0o600)
        except OSError:  # O_DIRECT refused (tmpfs, some network file systems)
            self.direct, direct = False, False
            fd = os.open(full_path, flags, 0o600)
        try:
            if direct:
                padded = -(-len(data) // _PAGE) * _PAGE
                with _aligned(padded) as buffer:
                    buffer[: len(data)] = data
                    os.write(fd, memoryview(buffer)[:padded])
                if padded != len(data):
                    os.ftruncate(fd, len(data))
            else:
                with open(fd, "wb", closefd=False) as out:
                    out.write(data)
        finally:
            os.close(fd)
        return _Written(filename, len(data))


_PAGE = mmap.PAGESIZE
_spare: list[mmap.mmap] = []  # page-aligned buffers for O_DIRECT, reused
_spare_lock = threading.Lock()


@contextmanager
def _aligned(size: int) -> Iterator[mmap.mmap]:
    """A page-aligned buffer of at least ``size`` bytes, from a few kept for reuse."""
    with _spare_lock:
        buffer = next((b for b in _spare if len(b) >= size), None)
        if buffer is not None:
            _spare.remove(buffer)
    if buffer is None:
        buffer = mmap.mmap(-1, size)
    try:
        yield buffer
    finally:
        with _spare_lock:
            if len(_spare) < 4:
                _spare.append(buffer)
            else:
                buffer.close()


class ChunkCache:
    """Chunks of remote files on local disk, keyed by (uri, version, index). Thread-safe."""

    def __init__(
        self,
        directory: str | None = None,
        size_limit: int = DEFAULT_SIZE_LIMIT,
        *,
        chunk_size: int = CHUNK_SIZE,
        min_free: int | None = None,
    ) -> None:
        self.directory = os.path.abspath(directory or default_cache_dir())
        self.size_limit = size_limit
        self.chunk_size = chunk_size
        private_dir(self.directory)
        if min_free is None:
            min_free = int(shutil.disk_usage(self.directory).total * MIN_FREE_FRACTION)
        self.min_free = min_free
        # Below this, the cache has no room for even one chunk next to SQLite's own pages.
        self._limit = size_limit - chunk_size
        self._lock = threading.Lock()  # every call into diskcache: see the module docstring
        self._cache = self._open()
        # Write-behind: chunks waiting for the writer, and the batch it is storing now; both
        # are served by get(), and change only under _behind.
        self._waiting: dict[str, Checked] = {}
        self._batch: dict[str, Checked] = {}
        self._waiting_bytes = 0
        self._behind = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closing = False
        self._records: diskcache.Cache | None = None  # opened on first use

    def _open(self) -> diskcache.Cache:
        db = os.path.join(self.directory, diskcache.core.DBNAME)
        # An empty file is a valid SQLite database; creating it 0600 first makes SQLite create
        # its -wal and -shm files 0600 too (they copy the database file's mode).
        _create_private(db)
        # cull_limit 2: an insert adds one chunk, so evicting two at most keeps the cache full
        # (diskcache's default of ten throws out more than needed).
        settings = {"size_limit": max(self._limit, 0), "eviction_policy": "least-recently-used",
                    "cull_limit": 2,
                    "disk_min_file_size": min(SMALL_IN_DB, self.chunk_size)}
        try:
            return diskcache.Cache(self.directory, disk=_PrivateDisk, **settings)
        except sqlite3.DatabaseError as exc:
            log.warning("chunk cache %s is damaged (%s); starting it afresh", self.directory, exc)
            self._wipe()
            _create_private(db)
            return diskcache.Cache(self.directory, disk=_PrivateDisk, **settings)

    def _wipe(self) -> None:
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)

    @staticmethod
    def _key(file: RemoteFile, index: int) -> str:
        return f"{file.version}\0{index}\0{file.uri}"

    # -- chunks --------------------------------------------------------------------------

    def get(self, file: RemoteFile, index: int) -> bytes | None:
        """The chunk, or None when it is absent or fails its length/checksum check (then
        dropped)."""
        return self._get(self._key(file, index))

    # -- the chunk store protocol (``store.ChunkStore``): chunks with their XXH3 ------------

    def load(self, file: RemoteFile, index: int) -> Checked | None:
        """``get``, with the XXH3 its check computed."""
        return self._load(self._key(file, index))

    def keep(self, file: RemoteFile, index: int, chunk: Checked) -> None:
        """``put_behind``, with the XXH3 already known: the entry's check needs no new one."""
        self._behind_put(self._key(file, index), chunk)

    def drop(self, file: RemoteFile, index: int) -> None:
        self.delete(file, index)

    def get_blob(self, key: str) -> bytes | None:
        """A small value stored with ``put_blob`` (the tree's last listings), checked alike."""
        return self._get("blob\0" + key)

    def put_blob(self, key: str, data: bytes) -> bool:
        return self._put("blob\0" + key, data)

    def put_record(self, key: str, data: bytes) -> None:
        """Keep a small record that outlives the chunks (see the module docstring)."""
        try:
            with self._lock:
                self._record_store().set(key, data, tag=_tag(Checked.of(data)))
        except _CACHE_ERRORS as exc:
            log.warning("chunk cache record failed: %s", exc)

    def get_record(self, key: str) -> bytes | None:
        try:
            with self._lock:
                data, tag = self._record_store().get(key, tag=True)
        except _CACHE_ERRORS as exc:
            log.warning("chunk cache record read failed: %s", exc)
            return None
        if data is None or tag != _tag(Checked.of(data)):
            return None
        return bytes(data)

    def _record_store(self) -> diskcache.Cache:
        """Under ``_lock``."""
        if self._records is None:
            folder = os.path.join(self.directory, "records")
            private_dir(folder)
            _create_private(os.path.join(folder, diskcache.core.DBNAME))
            self._records = diskcache.Cache(folder, size_limit=RECORDS_LIMIT,
                                            eviction_policy="least-recently-used")
        return self._records

    def _get(self, key: str) -> bytes | None:
        chunk = self._load(key)
        return None if chunk is None else chunk.data

    def _load(self, key: str) -> Checked | None:
        if self._waiting or self._batch:
            with self._behind:
                waiting = self._waiting.get(key)
                if waiting is None:
                    waiting = self._batch.get(key)
            if waiting is not None:
                return waiting
        try:
            with self._lock:
                value, tag = self._cache.get(key, read=True, tag=True)
            if value is None:
                return None
            if isinstance(value, bytes):  # small values live inside SQLite
                data = value
            else:
                with value:
                    data = value.read()
        except _CACHE_ERRORS as exc:
            log.warning("chunk cache read failed: %s", exc)
            return None
        chunk = Checked.of(data)
        if tag != _tag(chunk, xxh3=bool(tag is not None and tag & _XXH3)):
            log.warning("dropping a damaged cache entry (%s)", key.replace("\0", " "))
            self._delete(key)
            return None
        return chunk

    def contains(self, file: RemoteFile, index: int) -> bool:
        """Whether the chunk is stored (unchecked: ``get`` still verifies it). A plain read of
        the index: SQLite's write-ahead log lets it run beside a write, so it takes no turn in
        the lock (read-ahead asks this for every chunk it plans, while chunks are stored)."""
        key = self._key(file, index)
        if key in self._waiting or key in self._batch:
            return True
        try:
            return key in self._cache
        except _CACHE_ERRORS:
            return False

    def put(self, file: RemoteFile, index: int, data: bytes) -> bool:
        """Store a chunk; False when it is not cached (no room above the free-disk floor, no
        room under the limit at all, or a disk error). Failing to cache never fails a read."""
        return self._put(self._key(file, index), data)

    def put_behind(self, file: RemoteFile, index: int, data: bytes) -> None:
        """Store a chunk soon, on the writer thread (see the module docstring); ``get`` and
        ``contains`` see it at once. Waits while ``BEHIND_MAX`` bytes are waiting already:
        the disk then sets the pace, and memory stays bounded."""
        self._behind_put(self._key(file, index), Checked.of(data))

    def _behind_put(self, key: str, data: Checked) -> None:
        with self._behind:
            self._behind.wait_for(lambda: self._waiting_bytes < BEHIND_MAX or self._closing)
            if self._closing:
                return
            old = self._waiting.pop(key, None)
            self._waiting_bytes += len(data.data) - (len(old.data) if old is not None else 0)
            self._waiting[key] = data
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_behind, daemon=True,
                                                name="xnatfs-cache-writer")
                self._writer.start()
                _writing.add(self)
            self._behind.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every chunk handed to ``put_behind`` is stored (or failed to be)."""
        with self._behind:
            self._behind.wait_for(lambda: not self._waiting and not self._batch, timeout)

    def _write_behind(self) -> None:
        while True:
            with self._behind:
                self._behind.wait_for(lambda: self._waiting or self._closing)
                if not self._waiting:
                    return
                self._batch, self._waiting = self._waiting, {}
                self._waiting_bytes = 0
                self._behind.notify_all()
            try:
                self._put_many(list(self._batch.items()))
            except Exception:  # never leave flush() and delete() waiting on a dead writer
                log.exception("chunk cache writer")
            finally:
                with self._behind:
                    self._batch = {}
                    self._behind.notify_all()

    def _put(self, key: str, data: bytes) -> bool:
        return self._put_many([(key, Checked.of(data))])

    def _put_many(self, items: list[tuple[str, Checked]]) -> bool:
        """Store chunks in one transaction; False if any is not cached (see ``put``)."""
        need = sum(len(chunk.data) for _, chunk in items)
        if any(len(chunk.data) > self._limit for _, chunk in items) \
                or not self._make_room(need):
            return False
        disk: _PrivateDisk = self._cache.disk
        values: list[tuple[str, bytes | _Written, int]] = []
        try:
            for key, chunk in items:  # the slow part, outside the lock
                data = chunk.data
                value = disk.write(data) if len(data) >= disk.min_file_size else data
                values.append((key, value, _tag(chunk)))
            with self._lock:
                with self._cache.transact():
                    for key, value, tag in values:
                        self._cache.set(key, value, tag=tag)
                # diskcache culls at most ten entries per insert; many tiny ones may not do.
                if self._cache.volume() > self._limit:
                    self._cache.cull()
        except _CACHE_ERRORS as exc:
            log.warning("chunk cache write failed: %s", exc)
            for _, value, _ in values:
                if isinstance(value, _Written):
                    disk.remove(value.filename)
            return False
        return True

    def delete(self, file: RemoteFile, index: int) -> None:
        self._delete(self._key(file, index))

    def _delete(self, key: str) -> None:
        with self._behind:
            waiting = self._waiting.pop(key, None)
            if waiting is not None:
                self._waiting_bytes -= len(waiting.data)
            # a batch being stored may hold the key: delete after it
            self._behind.wait_for(lambda: key not in self._batch)
        try:
            with self._lock:
                self._cache.delete(key)
        except _CACHE_ERRORS as exc:
            log.warning("chunk cache delete failed: %s", exc)

    def _make_room(self, need: int) -> bool:
        """Keep ``min_free`` bytes free on the disk, evicting our own oldest chunks if needed."""
        free = shutil.disk_usage(self.directory).free
        if free - need >= self.min_free:
            return True
        with self._lock:
            try:
                target = self._cache.volume() - (self.min_free + need - free)
                if target <= 0:
                    return False
                self._cache.reset("size_limit", target)
                self._cache.cull()
                self._cache.reset("size_limit", max(self._limit, 0))
            except _CACHE_ERRORS as exc:
                log.warning("chunk cache eviction failed: %s", exc)
                return False
        return shutil.disk_usage(self.directory).free - need >= self.min_free

    # -- housekeeping --------------------------------------------------------------------

    def stats(self) -> dict[str, int | str]:
        """Where the cache is, how full, and its limits."""
        with self._lock:
            entries, volume = len(self._cache), self._cache.volume()
        return {
            "directory": self.directory,
            "entries": entries,
            "bytes": volume,
            "size_limit": self.size_limit,
            "min_free": self.min_free,
            "disk_free": shutil.disk_usage(self.directory).free,
        }

    def clear(self) -> int:
        """Drop every chunk; returns how many there were. Deleted rows would leave small
        values' bytes in SQLite's free pages and write-ahead log, so the database is rewritten
        and the log emptied: what was cleared is gone from every file of the folder."""
        with self._lock:
            removed = int(self._cache.clear(retry=True))
            self._record_store().clear(retry=True)
            db = os.path.join(self.directory, diskcache.core.DBNAME)
            with closing(sqlite3.connect(db, timeout=60, isolation_level=None)) as con:
                con.execute("VACUUM")
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed

    def close(self) -> None:
        """Store what is waiting, then close."""
        with self._behind:
            self._closing = True
            self._behind.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join()
        self._cache.close()
        if self._records is not None:
            self._records.close()


def _create_private(path: str) -> None:
    """Create an empty 0600 file unless one exists. Never open an existing database file: the
    close of any descriptor drops every POSIX lock this process holds on it, SQLite's own
    included, and another cache open on the same folder in this process then stopped seeing
    what other processes committed (a reader and a mount sharing a cache, in one test)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


# Caches with a writer thread. The thread is a daemon (a hung disk must not hold the process
# forever), so at exit each is given a moment to store what waits: a script that reads through
# fsspec and ends at once finds its chunks cached on its next run.
_writing: weakref.WeakSet[ChunkCache] = weakref.WeakSet()
EXIT_FLUSH = 10.0  # seconds at most per cache


@atexit.register
def _flush_at_exit() -> None:
    for cache in list(_writing):
        cache.flush(EXIT_FLUSH)


_XXH3 = 1 << 62  # the tag's checksum is XXH3's low 32 bits, not CRC32 (lengths stay < 2**30)


def _tag(chunk: Checked, *, xxh3: bool = True) -> int:
    """Length and checksum in one integer, kept in diskcache's tag column beside the value."""
    if xxh3:
        return _XXH3 | (len(chunk.data) << 32) | (chunk.tag & 0xFFFFFFFF)
    return (len(chunk.data) << 32) | zlib.crc32(chunk.data)
