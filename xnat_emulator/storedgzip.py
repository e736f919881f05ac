"""Valid gzip files of any size, served by range at memory speed, built from the random pool.

Random bytes do not compress, so a real ``.nii.gz`` of noise is, byte for byte, the noise
itself framed by DEFLATE "stored" blocks. That framing is done once per process over the
whole pool (a 5-byte block header before every 65535 bytes), and a file is a series of gzip
members (RFC 1952 allows any number, and gzip, zlib and Python read them all):

* a first member holding the uncompressed header (e.g. NIfTI's 352 bytes). Its gzip header
  carries a comment of 0..27 bytes: the slack that makes the file exactly the size asked;
* full members, each 15 pool segments (~1 MiB) picked by the file's seed: a zero-copy slice
  of the framed pool between a fixed 10-byte header and a 13-byte trailer (an empty final
  block, the CRC-32, the length). The CRC of each of the 112 possible slices is computed
  once per process, when first needed;
* a last, shorter member for the rest.

So serving a range is slicing, as for any synthetic file, and ``gzip -t`` passes.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from functools import cache

from xnat_emulator.content import POOL_SIZE, Content, mix64, pool

SEGMENT = 0xFFFF
"""Bytes per stored block: the most DEFLATE allows."""
FRAMED = SEGMENT + 5
SEGMENTS = POOL_SIZE // SEGMENT
MEMBER_SEGMENTS = 15
"""Pool segments per full member: the member's body stays under the pool's 1 MiB blocks."""
STARTS = SEGMENTS - MEMBER_SEGMENTS - 1
"""Where a member may start in the pool: room for 15 segments and a partial one after."""
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
"""Magic, deflate, no flags, no mtime (reproducible), unknown OS."""
FINAL_BLOCK = b"\x01\x00\x00\xff\xff"
"""An empty stored block with BFINAL set: members end with it, so their bodies need not."""
MEMBER_OVERHEAD = len(GZIP_HEADER) + len(FINAL_BLOCK) + 8
FULL_MEMBER = MEMBER_OVERHEAD + MEMBER_SEGMENTS * FRAMED
FULL_DATA = MEMBER_SEGMENTS * SEGMENT
_crc_lock = threading.Lock()
_crcs: dict[int, int] = {}


@cache
def framed_pool() -> memoryview:
    """The pool as consecutive non-final stored blocks of SEGMENT bytes each."""
    data = pool()
    out = bytearray()
    for k in range(SEGMENTS):
        out += b"\x00" + struct.pack("<HH", SEGMENT, SEGMENT ^ 0xFFFF)
        out += data[k * SEGMENT : (k + 1) * SEGMENT]
    return memoryview(bytes(out))


def member_crc(start: int) -> int:
    """CRC-32 of the full member whose data starts at pool segment ``start`` (memoized)."""
    crc = _crcs.get(start)
    if crc is None:
        with _crc_lock:
            crc = _crcs.get(start)
            if crc is None:
                crc = _crcs[start] = zlib.crc32(
                    pool()[start * SEGMENT : (start + MEMBER_SEGMENTS) * SEGMENT])
    return crc


def _trailer(crc: int, size: int) -> bytes:
    return FINAL_BLOCK + struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


def _stored(data: bytes | memoryview, final: bool = False) -> bytes:
    return bytes([final]) + struct.pack("<HH", len(data), len(data) ^ 0xFFFF) + bytes(data)


class StoredGzipContent(Content):
    """A gzip file of exactly ``size`` bytes: ``head`` bytes, then pool bytes, uncompressed.

    ``make_head(n)`` returns the ``head_size`` uncompressed bytes that start the file, given
    the ``n`` uncompressed bytes that follow them (a NIfTI header sizes its image by them).
    """

    def __init__(self, seed: int, size: int, mtime: float, make_head: Callable[[int], bytes],
                 head_size: int) -> None:
        self.seed = seed
        self.size = size
        self.mtime = mtime
        head_member = MEMBER_OVERHEAD + (5 + head_size if head_size else 0)
        if size < head_member:
            head_size, head_member = 0, MEMBER_OVERHEAD
        rest = max(0, size - head_member)
        self.full, left = divmod(rest, FULL_MEMBER)
        self.tail_segments, self.tail_partial, slack = 0, 0, left
        self.has_tail = left >= MEMBER_OVERHEAD
        if self.has_tail:
            self.tail_segments, room = divmod(left - MEMBER_OVERHEAD, FRAMED)
            if room > 5:
                self.tail_partial, slack = room - 5, 0
            else:
                slack = room
        following = self.full * FULL_DATA + self.tail_segments * SEGMENT + self.tail_partial
        head = make_head(following)[:head_size] if head_size else b""
        self.head_unit = self._head_member(head, slack)
        if self.full or self.has_tail:
            self.head_unit += GZIP_HEADER
        self.head_unit = self.head_unit[:size]  # too small for any gzip: the size still wins
        self._tail: list[bytes | memoryview] | None = None

    @staticmethod
    def _head_member(head: bytes, slack: int) -> bytes:
        if slack:  # a comment of slack - 1 spaces and its NUL
            header = GZIP_HEADER[:3] + b"\x10" + GZIP_HEADER[4:] + b" " * (slack - 1) + b"\0"
        else:
            header = GZIP_HEADER
        body = _stored(head) if head else b""
        return header + body + _trailer(zlib.crc32(head), len(head))

    def _start(self, member: int) -> int:
        return mix64(self.seed ^ mix64(member)) % STARTS

    def _full_unit(self, member: int) -> list[bytes | memoryview]:
        """Member ``member``'s body and trailer, then the next member's gzip header."""
        j = self._start(member)
        trailer = _trailer(member_crc(j), FULL_DATA)
        if member + 1 < self.full or self.has_tail:
            trailer += GZIP_HEADER
        return [framed_pool()[j * FRAMED : (j + MEMBER_SEGMENTS) * FRAMED], trailer]

    def _tail_unit(self) -> list[bytes | memoryview]:
        if self._tail is None:
            j = self._start(self.full)
            first = j * SEGMENT
            data_end = first + self.tail_segments * SEGMENT + self.tail_partial
            parts: list[bytes | memoryview] = [
                framed_pool()[j * FRAMED : (j + self.tail_segments) * FRAMED]]
            if self.tail_partial:
                partial = pool()[data_end - self.tail_partial : data_end]
                parts.append(struct.pack("<BHH", 0, len(partial), len(partial) ^ 0xFFFF))
                parts.append(partial)
            parts.append(_trailer(zlib.crc32(pool()[first:data_end]), data_end - first))
            self._tail = parts
        return self._tail

    def chunks(self, offset: int, length: int) -> Iterator[memoryview | bytes]:
        end = min(self.size, offset + length)
        head = len(self.head_unit)
        while offset < end:
            if offset < head:
                unit_start, parts = 0, [self.head_unit]
            elif offset < head + self.full * FULL_MEMBER:
                member = (offset - head) // FULL_MEMBER
                unit_start, parts = head + member * FULL_MEMBER, self._full_unit(member)
            else:
                unit_start, parts = head + self.full * FULL_MEMBER, self._tail_unit()
            position, before = unit_start, offset
            for part in parts:
                stop = position + len(part)
                if stop > offset:
                    piece = min(stop, end) - offset
                    yield part[offset - position : offset - position + piece]
                    offset += piece
                    if offset >= end:
                        return
                position = stop
            if offset == before:
                raise AssertionError(f"gzip layout leaves byte {offset} of {self.size} uncovered")
