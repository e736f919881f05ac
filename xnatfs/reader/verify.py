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
from collections.abc import Callable

from xnatfs.errors import DigestMismatch, IntegrityError

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
    up: MD5 (~0.9 GB/s here) then sets the pace instead of memory growing without bound."""

    def __init__(self, expected: str, count: int) -> None:
        self.expected = expected
        self.count = count
        self.verifier = Verifier(None, expected)
        self.next = 0
        self.pending: dict[int, bytes] = {}
        self.busy = False
        self.ranged = False  # some bytes came from ranged answers
        self.verdict: bool | None = None  # set once the whole file is hashed
        self.cond = threading.Condition()

    def feed(self, index: int, data: bytes, fill: Callable[[int], bytes | None]) -> bool | None:
        """Add a chunk; the verdict if this completed the file, else None. ``fill`` gets a
        chunk from the caches when a gap is not being filled by the network (False: give up)."""
        with self.cond:
            if index < self.next or index in self.pending or self.verdict is not None:
                return None
            while len(self.pending) >= MAX_PENDING and self.busy:
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
                self.verifier.update(piece)
                with self.cond:
                    self.next += 1
                    self.cond.notify_all()
                    if self.next == self.count:
                        self.verdict = self.verifier.matches()
                        return self.verdict
        finally:
            with self.cond:
                self.busy = False
                self.cond.notify_all()

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


class GiveUp(Exception):
    """The file was not read in order: its MD5 cannot be checked (sizes still are)."""
