"""File contents: synthetic (generated on demand, no disk) or read from a file on disk.

Synthetic bytes come from one random pool per process. Block ``k`` of a file is a slice of
the pool at an offset derived from the file's seed and ``k``, so every file and every block
differ (a misplaced chunk is detectable), nothing is stored per file, and serving is a
memoryview slice. The pool itself is seeded, so two processes agree on every byte.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

POOL_SIZE = 8 << 20
BLOCK = 1 << 20
_MASK = (1 << 64) - 1
# Striped locks so concurrent first listings hash a large file once, not once per thread.
_MD5_LOCKS = [threading.Lock() for _ in range(64)]


@cache
def pool() -> memoryview:
    """The per-process random pool (same bytes in every process)."""
    return memoryview(random.Random(0x584E4154).randbytes(POOL_SIZE))


def mix64(x: int) -> int:
    """splitmix64: a fast, well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class Content:
    """The bytes of one file: size, mtime, ranged reads and a memoized MD5."""

    size: int
    mtime: float
    path: Path | None = None
    """Set when the bytes live in a file on disk, so they can be sent with sendfile."""
    _md5: str | None = None

    def chunks(self, offset: int, length: int) -> Iterator[memoryview | bytes]:
        """The bytes ``[offset, offset+length)`` clipped to the size, in pieces of <= BLOCK."""
        raise NotImplementedError

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        length = self.size - offset if length is None else length
        return b"".join(self.chunks(offset, length))

    def md5(self) -> str:
        """Hex MD5, computed on first use and kept."""
        if self._md5 is None:
            with _MD5_LOCKS[id(self) % len(_MD5_LOCKS)]:
                if self._md5 is None:
                    digest = hashlib.md5()
                    for piece in self.chunks(0, self.size):
                        digest.update(piece)
                    self._md5 = digest.hexdigest()
        return self._md5


class SyntheticContent(Content):
    """Deterministic pseudo-random bytes, optionally starting with a fixed header."""

    def __init__(self, seed: int, size: int, mtime: float, header: bytes = b"") -> None:
        self.seed = seed
        self.size = size
        self.mtime = mtime
        self.header = header[:size]

    def _block(self, k: int) -> memoryview:
        start = mix64(self.seed ^ mix64(k)) % (POOL_SIZE - BLOCK)
        return pool()[start : start + BLOCK]

    def chunks(self, offset: int, length: int) -> Iterator[memoryview | bytes]:
        end = min(self.size, offset + length)
        if offset < len(self.header) and offset < end:
            yield self.header[offset : min(end, len(self.header))]
            offset = len(self.header)
        while offset < end:
            k, within = divmod(offset, BLOCK)
            piece = min(BLOCK - within, end - offset)
            yield self._block(k)[within : within + piece]
            offset += piece


class DiskContent(Content):
    """A file on disk; size and mtime are taken once, when the archive is loaded."""

    def __init__(self, path: Path) -> None:
        st = path.stat()
        self.path = path
        self.size = st.st_size
        self.mtime = st.st_mtime

    def chunks(self, offset: int, length: int) -> Iterator[memoryview | bytes]:
        assert self.path is not None
        end = min(self.size, offset + length)
        with open(self.path, "rb", buffering=0) as fh:
            fh.seek(offset)
            while offset < end:
                piece = fh.read(min(BLOCK, end - offset))
                if not piece:
                    return
                yield piece
                offset += len(piece)


class MadeContent(Content):
    """Bytes a function makes on first use (the size too: a listing is a first use), then
    keeps: for small files whose every byte is meaningful, such as a DICOM series or a
    compressed NIfTI volume, which a pool of random bytes cannot stand in for."""

    def __init__(self, make: Callable[[], bytes], mtime: float) -> None:
        self.make = make
        self.mtime = mtime
        self._data: bytes | None = None
        self._lock = threading.Lock()

    @property
    def data(self) -> bytes:
        if self._data is None:
            with self._lock:
                if self._data is None:
                    self._data = self.make()
        return self._data

    @property  # type: ignore[override]
    def size(self) -> int:
        return len(self.data)

    def chunks(self, offset: int, length: int) -> Iterator[memoryview | bytes]:
        view = memoryview(self.data)
        end = min(len(view), offset + length)
        for start in range(offset, end, BLOCK):
            yield view[start : min(end, start + BLOCK)]
