"""What the fetcher knows about each file's MD5: running hashes, failures, and what follows.

The fetcher moves bytes; this module decides whether they may be believed. What it knows of
each file version is kept on the version's ``Item`` (``item``):

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

from xnatfs.errors import DigestMismatch
from xnatfs.reader.item import Item, Items
from xnatfs.reader.store import Checked
from xnatfs.reader.verify import MAX_PENDING, Contradiction, GiveUp, InOrder
from xnatfs.tree.model import RemoteFile

log = logging.getLogger(__name__)

LAG = 4  # chunks a reader may be ahead of its file's running MD5 while it is hashing


class Chunks(Protocol):
    """What the checks need of the fetcher."""

    def chunk_count(self, file: RemoteFile) -> int: ...
    def load(self, file: RemoteFile, index: int) -> Checked | None: ...
    def have(self, file: RemoteFile, index: int) -> bool: ...
    def in_flight(self, file: RemoteFile, index: int) -> Future[Checked] | None: ...
    def evict(self, file: RemoteFile, *, before: Callable[[], None] | None = None) -> None: ...
    def record(self, file: RemoteFile, tags: bytes) -> None: ...
    def recorded(self, file: RemoteFile) -> bytes | None: ...


class Checks:
    """The MD5 decisions for every file a fetcher serves; the state they rest on is each file
    version's ``Item``. Thread-safe."""

    def __init__(self, chunks: Chunks, *, server: str, deadline: float,
                 items: Items | None = None) -> None:
        self.chunks = chunks
        self.server = server
        self.deadline = deadline
        self.items = items if items is not None else Items(chunks.chunk_count)
        self.whole_files: str | None = None  # why ranged answers are no longer trusted
        self._lock = threading.Lock()  # whole_files

    # -- what the fetcher asks -----------------------------------------------------------

    def bad(self, file: RemoteFile) -> bool:
        return self.items(file).bad

    def suspect(self, file: RemoteFile) -> bool:
        return self.items(file).suspect

    def taint(self, file: RemoteFile) -> int:
        """How many times bytes of this file version failed its MD5: a handle that was given
        any bytes before this number moved must not give out any more."""
        return self.items(file).taint

    def hashed(self, file: RemoteFile) -> int | None:
        """Chunks of the file hashed so far, or None when no hash of it is running."""
        state = self.items(file).hash
        return None if state is None else state.next

    def wanted(self, file: RemoteFile, index: int) -> bool:
        """Whether a running hash of the file has yet to reach chunk ``index``."""
        state = self.items(file).hash
        return state is not None and state.next <= index and state.verdict is None

    def completes(self, file: RemoteFile, index: int) -> bool:
        """Whether chunk ``index`` may complete the file's hash: it is the last chunk, or the
        last one already waits in the hash. Such a chunk is checked before it is handed out."""
        if not file.digest:
            return False
        item = self.items(file)
        if index == item.count - 1:
            return True
        state = item.hash
        return state is not None and state.count - 1 in state.pending

    def pace(self, file: RemoteFile, index: int) -> None:
        """Before a reader gets chunk ``index``: wait while the file's hash is running more
        than ``LAG`` chunks behind it (see the module docstring)."""
        if index <= LAG or not file.digest:
            return
        state = self.items(file).hash
        if state is not None:
            state.catch_up(index - LAG, self.deadline)

    # -- what handles tell ---------------------------------------------------------------------

    def hold(self, file: RemoteFile) -> None:
        """A handle opened the file: its hash, once one runs, stays until ``release``."""
        item = self.items(file)
        with item.lock:
            item.holders += 1
        self.items.hashing(item, False)

    def release(self, file: RemoteFile) -> None:
        item = self.items(file)
        with item.lock:
            item.holders -= 1
            unheld = item.holders == 0 and item.hash is not None
        if unheld:
            self.items.hashing(item, True)

    def served(self, file: RemoteFile, index: int, data: Checked) -> None:
        """A handle got chunk ``index``: feed it to the file's hash if the hash has not seen
        it (see the module docstring). A hash starts here only at chunk 0, and not for a file
        whose last chunk is kept: that one is kept only once the whole file has passed, so a
        re-read from the cache is not hashed again. DigestMismatch if this completes it wrong."""
        if not file.digest:
            return
        item = self.items(file)
        state = item.hash
        last = item.count - 1
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
        item = self.items(file)
        tags = item.passed
        if tags is not None or not file.digest or item.count == 1 or item.looked_up:
            return tags  # a file of one chunk has no record: its one copy is checked whole
        blob = self.chunks.recorded(file)
        if blob is not None and len(blob) == 8 * item.count:
            tags = array("Q")
            tags.frombytes(blob)
            item.passed = tags
        item.looked_up = True  # once an item, after ``passed``: a record read per small
        return tags  # file was a quarter of the CPU of cp -r

    def proven(self, file: RemoteFile, tags: array[int]) -> None:
        """A copy of the whole file with these chunk tags matched its MD5."""
        self.items(file).passed = tags
        if len(tags) > 1:
            self.chunks.record(file, tags.tobytes())

    def suspect_ranges(self, file: RemoteFile) -> None:
        """Fetch the file whole from now on: its ranged answers made a copy that failed."""
        item = self.items(file)
        item.suspect = True
        self.items.mark(item)

    def disproven(self, file: RemoteFile, ranged: bool, why: str) -> NoReturn:
        """Bytes a reader was given are not the copy that passed (or no copy passes)."""
        self._failed(file, ranged, why)

    # -- hashing ---------------------------------------------------------------------------

    def feed(self, file: RemoteFile, index: int, data: Checked | bytes, *, last: bool = False,
             ranged: bool = True) -> bool:
        """Feed the file's running MD5; True once it completes right, DigestMismatch if wrong
        (the file's chunks evicted first), else False (not known yet, or never: the file was
        not read from its start). For the ``last`` chunk, first bring the MD5 to its end if
        the chunks before can be had."""
        if not file.digest:
            return False
        if not isinstance(data, Checked):
            data = Checked.of(data)
        item = self.items(file)
        state = item.hash
        tags = self.passed(file) if state is None else None
        if state is None and tags is None:
            if index >= MAX_PENDING:
                return False  # not read from its start: only sizes are checked
            state = self._start(item)
        if state is None:
            assert tags is not None
            self._held_to(file, index, data, tags, ranged=ranged)
            return True
        state.ranged |= ranged

        def fill(i: int) -> Checked | None:
            return self.chunks.load(file, i)

        try:
            verdict = state.feed(index, data, fill)
            if verdict is None and last:
                verdict = self._finish(file, state, fill)
        except GiveUp:
            log.debug("not checking MD5 of %s: not read in order", file.uri)
            verdict = None
        except Contradiction:  # either copy may be the wrong one: the hash is no good
            self._drop(item, state)
            self._failed(file, state.ranged, _two_bodies(file, index))
        if verdict is None and state.verdict is None and not state.busy \
                and len(state.pending) >= MAX_PENDING:
            self._drop(item, state)
        if verdict is None:
            return False
        self._drop(item, state)
        with self._lock:
            if verdict and item.suspect and self.whole_files is None:
                self.whole_files = "the server's ranged answers failed MD5 checks"
                log.warning("%s sent wrong bytes for ranges of %s that pass whole: every "
                            "file is fetched whole from now on", self.server, file.uri)
        if verdict:
            self.proven(file, state.tags)
            return True
        self._failed(file, state.ranged,
                     f"MD5 mismatch for {file.uri}: the listing says {file.digest}")

    def _held_to(self, file: RemoteFile, index: int, data: Checked, tags: array[int], *,
                 ranged: bool) -> None:
        """The file passed: this copy of a chunk must be the one that did."""
        if data.tag != tags[index]:
            self._failed(file, ranged, _two_bodies(file, index))

    def _failed(self, file: RemoteFile, ranged: bool, why: str) -> NoReturn:
        """Bytes of the file failed: taint it, fetch it whole from now on (or, if whole
        answers failed too, never serve it), drop its chunks, raise DigestMismatch."""
        item = self.items(file)

        def failed() -> None:  # under the item's lock, as its chunks leave memory
            item.taint += 1
            if ranged:
                item.suspect = True
            else:
                item.bad = True

        self.chunks.evict(file, before=failed)
        self.items.mark(item)
        log.warning("%s failed its MD5 check%s", file.uri,
                    "; fetching it whole" if ranged else ": EIO for every read of it")
        raise DigestMismatch(why)

    def _finish(self, file: RemoteFile, state: InOrder,
                fill: Callable[[int], Checked | None]) -> bool | None:
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
                if state.verdict is False:  # it completed the hash wrong, and has said so:
                    raise DigestMismatch(  # the failure is not counted a second time
                        f"MD5 mismatch for {file.uri}: the listing says {file.digest}") from None
                return state.verdict
            if data is None:
                return None
            verdict = state.feed(gap, data, fill)
            if verdict is not None:
                return verdict
        return verdict

    # -- where hashes are kept ---------------------------------------------------------------

    def _start(self, item: Item) -> InOrder:
        """The file's running hash: the one another thread started meanwhile, or a new one."""
        with item.lock:
            state = item.hash
            if state is None:
                state = item.hash = InOrder(item.file.digest or "", item.count)
            unheld = item.holders == 0
        if unheld:
            self.items.hashing(item, True)
        return state

    def _drop(self, item: Item, state: InOrder) -> None:
        """Forget this hash of the file (not a newer one that replaced it)."""
        with item.lock:
            if item.hash is not state:
                return
            item.hash = None
        self.items.hashing(item, False)


def _two_bodies(file: RemoteFile, index: int) -> str:
    return f"{file.uri}: the server sent two different bodies for chunk {index}"


