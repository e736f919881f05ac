"""Where chunks are kept, behind one small protocol for memory and disk alike, and the chunk as
it travels: its bytes with their XXH3 (mountpoint-s3's ``ChecksummedBytes``).

A chunk's tag is computed once, where its bytes first appear: as it comes off the network, or
as the disk cache reads it back (the cache checks every entry it reads with the same hash, so
the tag is a by-product of that check). From there it goes with the bytes: to the running
MD5, which records it as the copy it hashed; to the disk cache, whose entry check it becomes;
to the handle, which compares what it served with the copy that passed. A re-read of a chunk
costs one XXH3 (0.09 ms a 4 MiB chunk here), never an MD5; before tags travelled, each chunk
was hashed three or four times on its way.
"""

from __future__ import annotations

import threading
from typing import NamedTuple, Protocol

from cachetools import LRUCache
from xxhash import xxh3_64_intdigest

from xnatfs.tree.model import RemoteFile

Key = tuple[str, str, int]


class Checked(NamedTuple):
    """A chunk's bytes and their XXH3-64: whoever holds one need not hash it again."""

    data: bytes
    tag: int

    @classmethod
    def of(cls, data: bytes) -> Checked:
        return cls(data, xxh3_64_intdigest(data))


class ChunkStore(Protocol):
    """What the fetcher needs of a place that keeps chunks (``MemoryChunks``, ``ChunkCache``)."""

    def load(self, file: RemoteFile, index: int) -> Checked | None: ...
    def keep(self, file: RemoteFile, index: int, chunk: Checked) -> None: ...
    def contains(self, file: RemoteFile, index: int) -> bool: ...
    def drop(self, file: RemoteFile, index: int) -> None: ...


class MemoryChunks:
    """Chunks of every file in one LRU, bounded in bytes. Thread-safe; its lock is the last
    taken (after an ``Item.lock``) and never held while calling out."""

    def __init__(self, size: int) -> None:
        self.lock = threading.Lock()
        self._chunks: LRUCache[Key, Checked] = LRUCache(size, getsizeof=_size_of)

    def load(self, file: RemoteFile, index: int) -> Checked | None:
        with self.lock:
            return self._chunks.get(key(file, index))

    def keep(self, file: RemoteFile, index: int, chunk: Checked) -> None:
        with self.lock:
            self._chunks[key(file, index)] = chunk

    def contains(self, file: RemoteFile, index: int) -> bool:
        """Whether the chunk is kept; the caller may hold ``lock`` already (``Fetcher._claim``
        looks at both a file's claims and memory in one step)."""
        return key(file, index) in self._chunks

    def drop(self, file: RemoteFile, index: int) -> None:
        with self.lock:
            self._chunks.pop(key(file, index), None)


def _size_of(chunk: Checked) -> int:
    return len(chunk.data)


def key(file: RemoteFile, index: int) -> Key:
    return (file.uri, file.version, index)
