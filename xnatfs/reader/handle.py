"""One open file: FUSE-sized reads served from whole chunks, read-ahead advised first.

Chunks a sequential reader has moved past leave the fetcher's memory: the reader has them, the
kernel's page cache keeps them, the disk cache too, and memory stays for what is about to be
read. (Not at close: other readers of a small file opened at the same moment may still want it
before it reaches the disk.)

A handle holds the file version's ``Item`` while it is open, and remembers its MD5 taint count
from before it gave out its first bytes; once that count moves, some bytes it gave out may have
been wrong, so every later read of this handle fails (EIO): the program reading learns of it
before it reaches the end.
So does a read during which the count moves: the chunks it gathered may be the ones that
failed (one read over a whole small file gathers them all before the last one is checked).

A handle of a file of several chunks holds the file's MD5 while it is open and offers it every
chunk it gets (``integrity``: ``hold``, ``served``), so a file read from its start is checked
whole whatever the caches kept.

Whatever the order of its reads, a handle that has served every chunk of a file has served a
copy whose MD5 passed, or it fails: it keeps the XXH3 tag of each chunk it gave out, and
before it gives out the last one it has not (the end for a forward reader, the start for a
backward one) it compares them all with the tags of a copy that passed (``Fetcher.verify``:
the one recorded, or one hashed there and then). A chunk given out twice must be the same
copy both times.
"""

from __future__ import annotations

from xnatfs.errors import DigestMismatch
from xnatfs.reader.fetcher import Fetcher
from xnatfs.reader.policy import FIRST_WINDOW, TOLERANCE
from xnatfs.reader.readahead import Readahead
from xnatfs.reader.store import Checked
from xnatfs.tree.model import RemoteFile


class FileHandle:
    """Reads of one file at any offset and size; files of one chunk need no read-ahead."""

    def __init__(self, fetcher: Fetcher, file: RemoteFile) -> None:
        if file.size is None:
            raise ValueError(f"size of {file.uri} unknown")
        self.fetcher = fetcher
        self.file = file
        # Held for the handle's life: its Item keeps the version it was first served (the
        # Last-Modified every later request must match) and its MD5 state.
        self.item = fetcher.item(file)
        self.size = file.size
        self.readahead = Readahead(fetcher, file) if fetcher.chunk_count(file) > 1 else None
        if self.readahead is not None:
            fetcher.hold(file)
            fetcher.reader_at(self.item, self, 0)  # a stream without a disk waits for it
        self._taint = self.item.taint
        self._gave = False
        self._served: set[int] = set()  # chunks served and still in the fetcher's memory
        # The chunk the last read ended in: the kernel reads a 4 MiB chunk as 32 reads of
        # 128 KiB, and the 31 after the first need nothing of the fetcher (nor may they find
        # that its memory, full of read-ahead, dropped the chunk meanwhile). Only while the
        # reads are inside it: a handle pins no chunk its reader has moved past.
        self._kept: tuple[int, Checked] | None = None
        self._tags: dict[int, int] = {}  # XXH3 of each chunk given out (files with an MD5)

    def read(self, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size), fewer at the end of the file, b"" past it."""
        data, start, end = self.read_span(offset, size)
        return data if (start, end) == (0, len(data)) else data[start:end]

    def read_span(self, offset: int, size: int) -> tuple[bytes, int, int]:
        """``read`` as ``(data, start, end)``: the bytes are ``data[start:end]``, left for the
        caller to copy once (a read within one chunk comes without a copy of its own)."""
        end = min(offset + size, self.size)
        if not self._gave:  # nothing given out yet: a failure before now concerns no byte of ours
            self._taint = self.item.taint
        elif self.item.taint != self._taint:
            raise DigestMismatch(f"{self.file.uri}: bytes read earlier through this handle "
                                 "failed the file's MD5 check; open it again")
        if offset >= end:
            return b"", 0, 0
        if self.readahead is not None:
            self.readahead.advise(offset, end)
        chunk_size = self.fetcher.chunk_size
        first, last = offset // chunk_size, (end - 1) // chunk_size
        if self._served and self.readahead is not None and self.readahead.window:
            for done in [i for i in self._served if i < first - TOLERANCE]:
                if self.fetcher.forget(self.file, done):
                    self._served.discard(done)
        kept = self._kept
        within = kept is not None and first == last == kept[0]
        if self.readahead is not None and not within:
            self.fetcher.reader_at(self.item, self, first)
            self.fetcher.pace(self.file, last)
        parts = []
        for index in range(first, last + 1):
            if kept is not None and index == kept[0]:
                chunk = kept[1]  # given out before: served, tagged and paced then
            else:
                chunk = self.fetcher.get(self.file, index)
                if self.readahead is not None and index not in self._served:
                    self.fetcher.served(self.file, index, chunk)
                self._served.add(index)
                if self.readahead is not None and self.file.digest:
                    self._tag(index, chunk.tag)
            data = chunk.data
            base = index * chunk_size
            parts.append((data, max(offset - base, 0), min(end - base, len(data))))
        if self.item.taint != self._taint:  # while this read gathered its chunks
            raise DigestMismatch(f"{self.file.uri}: bytes gathered for this read failed the "
                                 "file's MD5 check")
        self._gave = True
        # Kept only while the reads are inside it: one that ends at its end has moved on.
        self._kept = (last, chunk) if end < min((last + 1) * chunk_size, self.size) else None
        if len(parts) == 1:
            return parts[0]
        joined = b"".join(memoryview(data)[lo:hi] for data, lo, hi in parts)
        return joined, 0, len(joined)

    def _tag(self, index: int, tag: int) -> None:
        """Keep the tag of a chunk given out; before the last one not given out yet, check
        the whole set against a copy that passed (see the module docstring)."""
        known = self._tags.get(index)
        if known is not None:  # given out before: the same copy, and the set was checked
            if known != tag:
                raise DigestMismatch(f"{self.file.uri}: two different copies of chunk {index} "
                                     "came through this handle")
            return
        self._tags[index] = tag
        if len(self._tags) < self.fetcher.chunk_count(self.file):
            return
        passed = self.fetcher.verify(self.file)
        wrong = [i for i, t in self._tags.items() if passed[i] != t]
        if wrong:
            self.fetcher.checks.disproven(
                self.file, True, f"{self.file.uri}: chunk {wrong[0]} given out through this "
                                 "handle is not the copy that passed the file's MD5")

    def will_read(self, start: int, end: int) -> None:
        """The caller is about to read [start, end) in order (fsspec's ``cat_file`` and
        ``get``): fetch the chunks after the first, up to a first read-ahead window, now. A
        run of reads opens the window only at its second read, after the first chunk came
        alone at one connection's speed: 7 % of a 256 MiB ``cat_file`` over the WAN profile."""
        if self.readahead is None or end <= start:
            return
        chunk_size = self.fetcher.chunk_size
        first, last = start // chunk_size, (min(end, self.size) - 1) // chunk_size
        for index in range(first + 1, min(last, first + FIRST_WINDOW) + 1):
            self.fetcher.prefetch(self.file, index, index, from_disk=True)  # as read-ahead

    def close(self) -> None:
        if self.readahead is not None:
            self.readahead.close()
            self.fetcher.release(self.file)
            self.fetcher.reader_gone(self.item, self)


class MemoryHandle:
    """A handle on a file made in memory (``RemoteFile.data``), with FileHandle's reads: the
    front ends treat both alike, and nothing about such a file reaches the fetcher."""

    def __init__(self, file: RemoteFile) -> None:
        assert file.data is not None
        self.file = file
        self.data = file.data
        self.size = len(file.data)

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]

    def read_span(self, offset: int, size: int) -> tuple[bytes, int, int]:
        end = min(offset + size, self.size)
        return (self.data, offset, end) if offset < end else (b"", 0, 0)

    def will_read(self, start: int, end: int) -> None:
        pass

    def close(self) -> None:
        pass
