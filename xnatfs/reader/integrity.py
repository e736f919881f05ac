"""What the fetcher knows about each file's MD5: running hashes, failures, and what follows.

The fetcher moves bytes; this module decides whether they may be believed. It keeps, per file
version:

* the running MD5 (``verify.InOrder``) of a file fetched from its first chunk onwards, fed as
  chunks arrive in any order. The chunk that completes it (normally the last) is checked
  before its reader gets it, so a whole-file read never completes with bytes that fail;
* the chunk tags of files that passed (``verify.InOrder`` keeps one per chunk hashed): a copy
  of a chunk fetched again, while its hash runs or after the file passed, must be the copy the
  hash took, or the server sent two bodies for one range and the file fails as on a mismatch;
* the taint count: how many times bytes of the file failed their MD5. ``FileHandle`` fails
  every later read of a handle that was given bytes before the count moved;
* the verdicts that follow a failure: a file whose ranged answers failed is fetched whole from
  then on (*suspect*); if those bytes pass, the server's ranged answers are what lied and every
  file is fetched whole (``whole_files``); if they fail too, the file version is *bad* and
  never served again;
* which hashes readers count on: a file open in a ``FileHandle`` keeps its hash while the
  handle is open (``hold``), so that a burst of other files starting theirs (a folder's
  read-ahead starts up to 32) cannot push it out midway; and every chunk a handle gets is
  offered to the hash (``served``), so that chunks it takes from memory or the disk cache,
  fetched before this hash began, are hashed too. Without both, a file read from its start
  could end unchecked once the chunks the hash lacked were gone from both caches (a full disk
  refuses them);
* the pace of readers: on two cores of loopback the hash is the slowest stage, and a reader far
  ahead of it only filled memory with chunks waiting to be hashed (a third of a GiB, measured)
  and sent those memory dropped back through the disk. ``pace`` keeps a reader within ``LAG``
  chunks of a running hash; over a real link the hash is ahead anyway.

It reaches the fetcher's chunks through ``Chunks``, so it is tested on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from collections.abc import Callable
from concurrent.futures import Future
from typing import NoReturn, Protocol

from cachetools import LRUCache
from xxhash import xxh3_64_intdigest

from xnatfs.errors import DigestMismatch
from xnatfs.reader.verify import MAX_PENDING, Contradiction, GiveUp, InOrder
from xnatfs.tree.model import RemoteFile

log = logging.getLogger(__name__)

MAX_DIGESTS = 8  # hashes kept for files no handle holds (each may hold chunks pending)
LAG = 4  # chunks a reader may be ahead of its file's running MD5 while it is hashing
PASSED_TAGS = 1 << 20  # chunk tags kept of files that passed (8 MiB, 4 TiB of chunks)
FileKey = tuple[str, str]


class Chunks(Protocol):
    """What the checks need of the fetcher."""

    def chunk_count(self, file: RemoteFile) -> int: ...
    def cached(self, file: RemoteFile, index: int) -> bytes | None: ...
    def have(self, file: RemoteFile, index: int) -> bool: ...
    def in_flight(self, file: RemoteFile, index: int) -> Future[bytes] | None: ...
    def evict(self, file: RemoteFile) -> None: ...
    def record(self, file: RemoteFile, tags: bytes) -> None: ...
    def recorded(self, file: RemoteFile) -> bytes | None: ...


class Checks:
    """The MD5 state of every file a fetcher serves. Thread-safe."""

    def __init__(self, chunks: Chunks, *, server: str, deadline: float) -> None:
        self.chunks = chunks
        self.server = server
        self.deadline = deadline
        self.whole_files: str | None = None  # why ranged answers are no longer trusted
        self._lock = threading.Lock()
        self._running: LRUCache[FileKey, InOrder] = LRUCache(MAX_DIGESTS)
        self._held: dict[FileKey, InOrder] = {}  # hashes of files open in a handle
        self._holders: dict[FileKey, int] = {}
        self._suspect: set[FileKey] = set()  # failed their MD5: fetched whole from now on
        self._bad: set[FileKey] = set()  # failed it whole too: never served again
        self._taint: dict[FileKey, int] = {}  # MD5 failures so far, for FileHandle
        # The chunk tags of files that passed: a copy fetched again must match (``verify``).
        self._passed: LRUCache[FileKey, array[int]] = LRUCache(PASSED_TAGS, getsizeof=len)

    # -- what the fetcher asks -----------------------------------------------------------

    def bad(self, file: RemoteFile) -> bool:
        return key(file) in self._bad

    def suspect(self, file: RemoteFile) -> bool:
        return key(file) in self._suspect

    def taint(self, file: RemoteFile) -> int:
        """How many times bytes of this file version failed its MD5: a handle that was given
        any bytes before this number moved must not give out any more."""
        return self._taint.get(key(file), 0)

    def hashed(self, file: RemoteFile) -> int | None:
        """Chunks of the file hashed so far, or None when no hash of it is running."""
        with self._lock:
            state = self._get(key(file))
        return None if state is None else state.next

    def wanted(self, file: RemoteFile, index: int) -> bool:
        """Whether a running hash of the file has yet to reach chunk ``index``."""
        with self._lock:
            state = self._get(key(file))
        return state is not None and state.next <= index and state.verdict is None

    def completes(self, file: RemoteFile, index: int) -> bool:
        """Whether chunk ``index`` may complete the file's hash: it is the last chunk, or the
        last one already waits in the hash. Such a chunk is checked before it is handed out."""
        if not file.digest:
            return False
        if index == self.chunks.chunk_count(file) - 1:
            return True
        with self._lock:
            state = self._get(key(file))
        return state is not None and state.count - 1 in state.pending

    def pace(self, file: RemoteFile, index: int) -> None:
        """Before a reader gets chunk ``index``: wait while the file's hash is running more
        than ``LAG`` chunks behind it (see the module docstring)."""
        if index <= LAG or not file.digest:
            return
        with self._lock:
            state = self._get(key(file))
        if state is not None:
            state.catch_up(index - LAG, self.deadline)

    # -- what handles tell ---------------------------------------------------------------------

    def hold(self, file: RemoteFile) -> None:
        """A handle opened the file: its hash, once one runs, stays until ``release``."""
        fkey = key(file)
        with self._lock:
            self._holders[fkey] = self._holders.get(fkey, 0) + 1
            state = self._running.pop(fkey, None)
            if state is not None:
                self._held[fkey] = state

    def release(self, file: RemoteFile) -> None:
        fkey = key(file)
        with self._lock:
            left = self._holders.get(fkey, 0) - 1
            if left > 0:
                self._holders[fkey] = left
                return
            self._holders.pop(fkey, None)
            state = self._held.pop(fkey, None)
            if state is not None:
                self._running[fkey] = state

    def served(self, file: RemoteFile, index: int, data: bytes) -> None:
        """A handle got chunk ``index``: feed it to the file's hash if the hash has not seen
        it (see the module docstring). A hash starts here only at chunk 0, and not for a file
        whose last chunk is kept: that one is kept only once the whole file has passed, so a
        re-read from the cache is not hashed again. DigestMismatch if this completes it wrong."""
        if not file.digest:
            return
        fkey = key(file)
        with self._lock:
            state = self._get(fkey)
        last = self.chunks.chunk_count(file) - 1
        if state is None:
            tags = self.passed(file)
            if tags is not None:
                self._held_to(file, index, data, tags, ranged=True)
                return
            if index != 0:
                return
        elif state.took(index):
            return
        self.feed(file, index, data, last=index == last)

    def passed(self, file: RemoteFile) -> array[int] | None:
        """The XXH3 tag of every chunk of the copy of the file whose MD5 passed, or None.
        Kept on disk beside the chunks (``Chunks.record``): which copy passed must outlive a
        remount and the eviction of the chunks, or a chunk fetched again by Range after
        either would be served unchecked (the wrong bytes of issue 19)."""
        fkey = key(file)
        with self._lock:
            tags = self._passed.get(fkey)
        if tags is not None or not file.digest:
            return tags
        blob = self.chunks.recorded(file)
        if blob is None or len(blob) != 8 * self.chunks.chunk_count(file):
            return None
        tags = array("Q")
        tags.frombytes(blob)
        if len(tags) <= PASSED_TAGS:
            with self._lock:
                self._passed[fkey] = tags
        return tags

    def proven(self, file: RemoteFile, tags: array[int]) -> None:
        """A copy of the whole file with these chunk tags matched its MD5."""
        if len(tags) <= PASSED_TAGS:
            with self._lock:
                self._passed[key(file)] = tags
        if len(tags) > 1:
            self.chunks.record(file, tags.tobytes())

    def suspect_ranges(self, file: RemoteFile) -> None:
        """Fetch the file whole from now on: its ranged answers made a copy that failed."""
        with self._lock:
            self._suspect.add(key(file))

    def disproven(self, file: RemoteFile, ranged: bool, why: str) -> NoReturn:
        """Bytes a reader was given are not the copy that passed (or no copy passes)."""
        self._failed(file, ranged, why)

    # -- hashing ---------------------------------------------------------------------------

    def feed(self, file: RemoteFile, index: int, data: bytes, *, last: bool = False,
             ranged: bool = True) -> bool:
        """Feed the file's running MD5; True once it completes right, DigestMismatch if wrong
        (the file's chunks evicted first), else False (not known yet, or never: the file was
        not read from its start). For the ``last`` chunk, first bring the MD5 to its end if
        the chunks before can be had."""
        if not file.digest:
            return False
        fkey = key(file)
        with self._lock:
            state = self._get(fkey)
        tags = self.passed(file) if state is None else None
        with self._lock:
            state = self._get(fkey) if state is None and tags is None else state
            if state is None and tags is None:
                if index >= MAX_PENDING:
                    return False  # not read from its start: only sizes are checked
                state = InOrder(file.digest, self.chunks.chunk_count(file))
                self._put(fkey, state)
        if state is None:
            if tags is not None:
                self._held_to(file, index, data, tags, ranged=ranged)
            return True
        state.ranged |= ranged

        def fill(i: int) -> bytes | None:
            return self.chunks.cached(file, i)

        try:
            verdict = state.feed(index, data, fill)
            if verdict is None and last:
                verdict = self._finish(file, state, fill)
        except GiveUp:
            log.debug("not checking MD5 of %s: not read in order", file.uri)
            verdict = None
        except Contradiction:  # either copy may be the wrong one: the hash is no good
            with self._lock:
                self._drop(fkey, state)
            self._failed(file, state.ranged, _two_bodies(file, index))
        if verdict is None and state.verdict is None and not state.busy \
                and len(state.pending) >= MAX_PENDING:
            with self._lock:
                self._drop(fkey, state)
        if verdict is None:
            return False
        with self._lock:
            self._drop(fkey, state)
            if verdict and fkey in self._suspect and self.whole_files is None:
                self.whole_files = "the server's ranged answers failed MD5 checks"
                log.warning("%s sent wrong bytes for ranges of %s that pass whole: every "
                            "file is fetched whole from now on", self.server, file.uri)
        if verdict:
            self.proven(file, state.tags)
            return True
        self._failed(file, state.ranged,
                     f"MD5 mismatch for {file.uri}: the listing says {file.digest}")

    def _held_to(self, file: RemoteFile, index: int, data: bytes, tags: array[int], *,
                 ranged: bool) -> None:
        """The file passed: this copy of a chunk must be the one that did."""
        if xxh3_64_intdigest(data) != tags[index]:
            self._failed(file, ranged, _two_bodies(file, index))

    def _failed(self, file: RemoteFile, ranged: bool, why: str) -> NoReturn:
        """Bytes of the file failed: taint it, fetch it whole from now on (or, if whole
        answers failed too, never serve it), drop its chunks, raise DigestMismatch."""
        fkey = key(file)
        with self._lock:
            self._taint[fkey] = self._taint.get(fkey, 0) + 1
            if ranged:
                self._suspect.add(fkey)
            else:
                self._bad.add(fkey)
        self.chunks.evict(file)
        log.warning("%s failed its MD5 check%s", file.uri,
                    "; fetching it whole" if ranged else ": EIO for every read of it")
        raise DigestMismatch(why)

    def _finish(self, file: RemoteFile, state: InOrder,
                fill: Callable[[int], bytes | None]) -> bool | None:
        """Hash the chunks missing before the last one: wait for those in flight, take those
        cached; None if one can be had neither way (a reader of the end only)."""
        deadline = time.monotonic() + self.deadline
        while (verdict := state.settle()) is None:
            gap = state.next
            future = self.chunks.in_flight(file, gap)
            try:
                data = future.result(max(0.0, deadline - time.monotonic())) if future \
                    else fill(gap)
            except Exception:  # that fetch failed or timed out: its reader sees why
                return state.verdict  # False if it failed by completing a wrong MD5
            if data is None:
                return None
            verdict = state.feed(gap, data, fill)
            if verdict is not None:
                return verdict
        return verdict

    # -- where hashes are kept (under the lock) ----------------------------------------------

    def _get(self, fkey: FileKey) -> InOrder | None:
        state = self._held.get(fkey)
        return self._running.get(fkey) if state is None else state

    def _put(self, fkey: FileKey, state: InOrder) -> None:
        if fkey in self._holders:
            self._held[fkey] = state
        else:
            self._running[fkey] = state

    def _drop(self, fkey: FileKey, state: InOrder) -> None:
        """Forget this hash of the file (not a newer one that replaced it)."""
        for table in (self._held, self._running):
            if table.get(fkey) is state:
                del table[fkey]


def _two_bodies(file: RemoteFile, index: int) -> str:
    return f"{file.uri}: the server sent two different bodies for chunk {index}"


def key(file: RemoteFile) -> FileKey:
    return (file.uri, file.version)
