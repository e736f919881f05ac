"""Reading a zip as it streams in: local file headers one after another, never the whole zip.

XNAT streams ``?format=zip`` chunked, without a Content-Length, so neither ``zipfile`` (which
starts from the central directory at the end) nor a seek is possible. Its entries are STORED;
Java's ``ZipOutputStream`` puts their sizes and CRC in the local header, other writers
(Python's ``zipfile`` on a non-seekable stream, as the emulator) leave them out and append a
data descriptor. Finding the end of such an entry by scanning for the descriptor's signature
is ambiguous (file bytes may hold it); here the caller says how long the entry is (the
listing's size, which the size in the descriptor then confirms), so nothing is guessed.
``stream-unzip`` on PyPI scans instead, and brings a crypto dependency we do not need.

Entry names are untrusted: this module only reports them; mapping them to output paths is
the caller's business (through the listing, never by joining them onto a folder).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

from xnatfs.errors import IntegrityError, XnatfsError

LOCAL = 0x04034B50
CENTRAL = 0x02014B50
END = 0x06054B50
DESCRIPTOR = 0x08074B50
_HEADER = struct.Struct("<IHHHHHIIIHH")
_STORED = 0
_HAS_DESCRIPTOR = 0x08
_ZIP64 = 0x0001
PIECE = 1 << 20

ZIP_MIN_FILES = 8
"""Fewer wanted files than this go one by one: their catalog cost is small, and a zip's
entries cannot be ranged, resumed or fetched in parallel."""
ZIP_MIN_SHARE = 0.5
"""A zip sends the whole resource: below half of it wanted, most of its bytes are waste."""


ZIP_TRIES = 3
"""Zips of one resource, at most, before what is left of it comes file by file."""

NEAR = 0.005
"""Seconds: a server that has answered an exchange this fast is near, and one stream is not
held back by the round trip; there the CPU is the limit. Materialize then takes a resource as
one zip, not parts (six zips at once of a 6,000-file scan on loopback took 3.6 s and 1.8x the
CPU of one, 2.7 s), and the mount's folder read-ahead zips any folder worth it. The WAN
profile's round trip is 20 ms."""
FAR_FILES = 1000
"""Files a folder needs before the mount's read-ahead zips it on a server that is not near.
One zip is one connection, held to a fraction of a long link, while the folder read-ahead's
GETs in parallel fill it; the catalog parse every GET costs the server (about 10 us an
entry) outweighs that only for big catalogs. ``cp -r`` of a session of 100-file scans over
the WAN profile took 4.0x the link limit with a zip per scan (the zip never got ahead of
the reader's own GETs, one at a time), 1.0x with GETs."""


def near(round_trip: float) -> bool:
    """Whether a server whose quickest exchange took ``round_trip`` seconds is near."""
    return round_trip < NEAR


def ahead_worth(files: int, round_trip: float) -> bool:
    """Whether the mount's read-ahead may zip a folder of ``files`` (``FAR_FILES``), beside
    ``zip_worth``."""
    return near(round_trip) or files >= FAR_FILES


def zip_worth(wanted: int, listed: int) -> bool:
    """The rule, from the listing alone: at least ``ZIP_MIN_FILES`` files to fetch and at
    least ``ZIP_MIN_SHARE`` of the resource's listed files."""
    return wanted >= ZIP_MIN_FILES and wanted >= ZIP_MIN_SHARE * listed


class EntryNames:
    """Which listed file an entry name stands for: what follows the resource's ``/files/``.
    The prefix before it is the same for every entry (``<session>/scans/<ID>-<type>/
    resources/<label>/files/``, by XNAT's ``structure``); it is learnt from the first entry,
    as the longest tail that names a listed file, or none at all where the name itself is
    listed (a zip of a file pattern names entries by their path in the resource). Names are
    untrusted: they only ever select a listed file."""

    def __init__(self, listed: Collection[str]) -> None:
        self.listed = listed
        self._prefix: str | None = None

    def rel(self, name: str) -> str | None:
        if self._prefix is not None:
            rel = name[len(self._prefix):] if name.startswith(self._prefix) else None
        elif name in self.listed:
            rel, self._prefix = name, ""
        else:
            rel, at = None, name.find("/files/")
            while at >= 0:
                if name[at + 7:] in self.listed:
                    rel, self._prefix = name[at + 7:], name[:at + 7]
                    break
                at = name.find("/files/", at + 1)
        return rel if rel is not None and rel in self.listed else None


class ZipFormatError(XnatfsError):
    """The stream is not a zip we can follow (not a zip, a method we do not read, a header
    that does not fit): nothing after this point can be found."""


class EntryCorrupt(IntegrityError):
    """One entry's bytes fail their CRC or sizes; the stream itself goes on."""

    transient = False


@dataclass(frozen=True, slots=True)
class Entry:
    """A local file header. ``size`` and ``crc`` are None when a data descriptor follows."""

    name: str
    size: int | None
    crc: int | None
    descriptor: bool
    zip64: bool


RECEIVE = 1 << 20
"""Bytes asked of the body per receive: a zip of small files is mostly headers of a few
bytes, each of which cost a receive of its own before (syscalls, and with several zips at
once a hand-off of the interpreter lock each: a million futex calls for 6,000 files)."""


class Buffered:
    """``read(n)``, exactly ``n`` bytes (fewer only at the end), over ``read1(most)``, which
    gives whatever one receive brings."""

    def __init__(self, read1: Callable[[int], bytes]) -> None:
        self._read1 = read1
        self._buf = bytearray()
        self._at = 0

    def read(self, n: int) -> bytes:
        buf = self._buf
        while len(buf) - self._at < n:
            more = self._read1(max(RECEIVE, n - (len(buf) - self._at)))
            if not more:
                break
            if self._at:
                del buf[:self._at]
                self._at = 0
            buf += more
        end = min(self._at + n, len(buf))
        data = bytes(memoryview(buf)[self._at:end])  # one copy; the view ends here
        self._at = end
        return data


class ZipStream:
    """Entries of a zip read from ``read(n)`` (exactly ``n`` bytes, fewer only at the end).
    For each ``Entry`` from ``next_entry``, the caller reads its bytes with ``data`` (all of
    them, even to throw away: that is how the next header is reached) and then ``finish``
    checks them."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.entries = 0
        self._entry: Entry | None = None
        self._crc = 0
        self._got = 0

    def _exact(self, n: int) -> bytes:
        data = self._read(n)
        if len(data) != n:
            raise IntegrityError(f"zip stream ended early ({len(data)} of {n} bytes)")
        return data

    def next_entry(self) -> Entry | None:
        """The next entry's header; None at the central directory (every entry has come)."""
        assert self._entry is None, "finish the entry first"
        head = self._read(4)
        if len(head) < 4:
            if not head and self.entries:
                raise IntegrityError("zip stream ended before its central directory")
            raise ZipFormatError("not a zip: the body is empty" if not head
                                 else "not a zip: the body is too short")
        (sig,) = struct.unpack("<I", head)
        if sig in (CENTRAL, END) and self.entries:
            return None
        if sig != LOCAL:
            raise ZipFormatError("not a zip (no local file header where one should be)")
        (_, _, flags, method, _, _, crc, csize, usize, nlen, xlen) = \
            _HEADER.unpack(head + self._exact(_HEADER.size - 4))
        raw = self._exact(nlen)
        extra = self._exact(xlen)
        if method != _STORED:
            raise ZipFormatError(f"zip entry method {method}: only STORED entries are read")
        if flags & 0x01:
            raise ZipFormatError("encrypted zip entry")
        name = raw.decode("utf-8" if flags & 0x800 else "cp437", "surrogateescape")
        zip64 = False
        for field_id, body in _extra_fields(extra):
            if field_id == _ZIP64:
                zip64 = True
                if usize == 0xFFFFFFFF and len(body) >= 8:
                    usize = struct.unpack_from("<Q", body)[0]
                    if csize == 0xFFFFFFFF and len(body) >= 16:
                        csize = struct.unpack_from("<Q", body, 8)[0]
        descriptor = bool(flags & _HAS_DESCRIPTOR)
        if not descriptor and csize != usize:
            raise ZipFormatError(f"STORED zip entry {name!r} with two sizes")
        known = None if descriptor and usize == 0 else usize
        self._entry = Entry(name, known, None if known is None else crc, descriptor, zip64)
        self._crc, self._got = 0, 0
        self.entries += 1
        return self._entry

    def data(self, size: int) -> Iterator[bytes]:
        """The current entry's ``size`` bytes in pieces (``size``: the header's, else the
        size the caller expects; a wrong one is caught by ``finish`` or the next header)."""
        assert self._entry is not None
        left = size
        while left > 0:
            piece = self._exact(min(PIECE, left))
            self._crc = zlib.crc32(piece, self._crc)
            self._got += len(piece)
            left -= len(piece)
            yield piece

    def finish(self) -> None:
        """After ``data``: check the CRC and sizes (reading the data descriptor, if any)."""
        entry, self._entry = self._entry, None
        assert entry is not None
        crc, size = entry.crc, entry.size
        if entry.descriptor:
            crc, size = self._descriptor(entry)
        if size != self._got:
            raise ZipFormatError(f"zip entry {entry.name!r} is {size} bytes, not {self._got}")
        if crc != self._crc:
            raise EntryCorrupt(f"zip entry {entry.name!r} fails its CRC-32")

    def _descriptor(self, entry: Entry) -> tuple[int, int]:
        """CRC and size from the data descriptor: signature optional, 4- or 8-byte sizes."""
        first = self._exact(4)
        if struct.unpack("<I", first)[0] == DESCRIPTOR:
            first = self._exact(4)
        (crc,) = struct.unpack("<I", first)
        if entry.zip64:
            csize, usize = struct.unpack("<QQ", self._exact(16))
        else:
            csize, usize = struct.unpack("<II", self._exact(8))
        if csize != usize:
            raise ZipFormatError(f"STORED zip entry {entry.name!r} with two sizes")
        return crc, usize


def _extra_fields(extra: bytes) -> Iterator[tuple[int, bytes]]:
    at = 0
    while at + 4 <= len(extra):
        field_id, length = struct.unpack_from("<HH", extra, at)
        yield field_id, extra[at + 4:at + 4 + length]
        at += 4 + length
