"""The one in-order check of a file's bytes, for the mount and materialize alike.

``Verifier`` hashes bytes handed to it in file order and checks their count and MD5 against
the listing's. Materialize feeds it as it appends to a part file; the fetcher through
``InOrder``, which puts back in order the chunks that parallel requests deliver out of it.
Keeping one piece of code for the check means one definition of "verified" across the mount,
materialize and the fsspec filesystem.
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections.abc import Callable

from xnatfs.errors import DigestMismatch, IntegrityError
from xnatfs.reader.store import Checked

MAX_PENDING = 32  # chunks held ahead of the in-order MD5 (read-ahead spans finish out of order)


class Verifier:
    """Count and MD5 of bytes given in order, against ``size`` and ``digest`` (either may be
    None: not known, not checked)."""

    def __init__(self, size: int | None, digest: str | None) -> None:
        self.size = size
        self.digest = digest
        self.count = 0
        self._md5 = hashlib.md5()

    def update(self, data: bytes | memoryview) -> None:
        self._md5.update(data)  # hashlib drops the GIL: other threads go on meanwhile
        self.count += len(data)

    def hexdigest(self) -> str:
        return self._md5.hexdigest()

    def matches(self) -> bool:
        """Whether the bytes so far have the listing's MD5 (True when it lists none)."""
        return not self.digest or self._md5.hexdigest() == self.digest

    def check(self) -> None:
        """IntegrityError for a wrong count, DigestMismatch for a wrong MD5."""
        if self.size is not None and self.count != self.size:
            raise IntegrityError(f"got {self.count} bytes, expected {self.size}")
        if not self.matches():
            raise DigestMismatch(f"MD5 mismatch: got {self.hexdigest()}, the server's listing "
                                 f"says {self.digest}")


class InOrder:
    """The running MD5 of one file. Chunks arrive in any order from several transfers; one
    thread at a time hashes those that continue the sequence (hashlib drops the GIL), while
    the others leave theirs and go on fetching. Chunks far ahead wait for the hash to catch
    up: MD5 (~0.9 GB/s here) then sets the pace instead of memory growing without bound.

    The hash vouches for the copy of each chunk it took. A chunk fetched again (pushed out of
    memory and of a full or small disk cache before its reader came) is another copy, which a
    lying server or proxy may have changed: each chunk hashed keeps an XXH3 tag (0.05 ms per
    4 MiB, 8 bytes), and a second copy must match the first, held or hashed (``Contradiction``
    otherwise)."""

    def __init__(self, expected: str, count: int) -> None:
        self.expected = expected
        self.count = count
        self.verifier = Verifier(None, expected)
        self.next = 0
        self.pending: dict[int, Checked] = {}
        self.tags = array("Q", bytes(8 * count))  # XXH3 of each chunk hashed (below next)
        self.hashing: Checked | None = None  # the chunk ``next``, while a thread hashes it
        self.busy = False
        self.ranged = False  # some bytes came from ranged answers
        self.verdict: bool | None = None  # set once the whole file is hashed
        self.cond = threading.Condition()

    def feed(self, index: int, data: Checked,
             fill: Callable[[int], Checked | None]) -> bool | None:
        """Add a chunk; the verdict if this completed the file, else None. ``fill`` gets a
        chunk from the caches when a gap is not being filled by the network (False: give up).
        Contradiction if this is a second copy of a chunk, and not the first one."""
        with self.cond:
            while True:
                if self._contradicts(index, data):
                    raise Contradiction(index)
                if self._took(index) or (index == self.next and self.hashing is not None):
                    return None
                if len(self.pending) < MAX_PENDING or not self.busy:
                    break
                if not self.cond.wait(timeout=30):
                    return None
            self.pending[index] = data
            if self.busy:
                return None
            self.busy = True
        try:
            while True:
                with self.cond:
                    piece = self.pending.pop(self.next, None)
                    if piece is None and len(self.pending) >= MAX_PENDING:
                        piece = fill(self.next)
                        if piece is None:
                            raise GiveUp
                    if piece is None:
                        return None
                    self.hashing = piece
                self.verifier.update(piece.data)
                with self.cond:
                    self.tags[self.next] = piece.tag
                    self.hashing = None
                    self.next += 1
                    self.cond.notify_all()
                    if self.next == self.count:
                        self.verdict = self.verifier.matches()
                        return self.verdict
        finally:
            with self.cond:
                self.busy = False
                self.hashing = None
                self.cond.notify_all()

    def took(self, index: int) -> bool:
        """Whether the hash holds or has hashed a copy of chunk ``index``, or is complete."""
        with self.cond:
            return self._took(index)

    def _took(self, index: int) -> bool:
        return index < self.next or index in self.pending or self.verdict is not None

    def _contradicts(self, index: int, data: Checked) -> bool:
        """Whether ``data`` is not the copy of chunk ``index`` held or hashed (under ``cond``)."""
        if index < self.next:
            return data.tag != self.tags[index]
        held = self.hashing if index == self.next else None
        held = self.pending.get(index) if held is None else held
        return held is not None and held.tag != data.tag

    def catch_up(self, index: int, timeout: float) -> None:
        """Wait while a thread is hashing and chunk ``index`` is not hashed yet: the pace a
        reader keeps behind the hash (``Fetcher.pace``). Never for a hash that is not running:
        a gap it waits on may be one nobody is fetching."""
        with self.cond:
            self.cond.wait_for(lambda: self.next > index or not self.busy, timeout=timeout)

    def settle(self) -> bool | None:
        """Wait until no thread is hashing; the verdict if the file is complete."""
        with self.cond:
            self.cond.wait_for(lambda: not self.busy, timeout=30)
            return self.verdict


class Contradiction(Exception):
    """The server sent two different bodies for one chunk of a file (``InOrder``)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"two different bodies for chunk {index}")
        self.index = index


class GiveUp(Exception):
    """The file was not read in order: its MD5 cannot be checked (sizes still are)."""
