"""The one path from the network to bytes, shared by the mount and by materialize.

Contract (stable; other front ends code against it)
-----------------------------------------------------
``Fetcher(client, cache, chunk_size=CHUNK_SIZE, max_parallel=8)``; ``cache`` may be None.

``chunk(file, index, *, store=True, check=True) -> bytes``
    Bytes ``[index * chunk_size, min((index + 1) * chunk_size, file.size))`` of ``file``: always
    exactly that many, and, as far as the server lets us check, exactly the server's bytes.
    ``file.size`` must be known (``Tree.file_size`` resolves listings without one). Served from
    memory, then the disk cache, else with one ranged GET; a file of one chunk is fetched whole,
    without Range. Concurrent callers of one chunk share one request. When the server ignores
    Range (200 instead of 206), the file is streamed once from byte 0 and every chunk of it is
    kept in memory (and on disk, unless ``store=False``), so the next chunk is not streamed
    again; waiting callers are served from that stream. Short bodies, wrong
    Content-Range, 5xx and MD5 mismatches are retried with backoff, a bounded number of times
    within a deadline, then raised as an XnatfsError (``.errno`` is EIO). 403/404 and refused
    credentials are raised at once. Once the server cannot be reached (the client has retried
    the connection already), fetches fail at once, except one probe a second, until it answers:
    a dead server costs each reader an immediate EIO, not minutes. Cached chunks are still
    served. ``store=False`` keeps the chunk out of both caches and never reads the disk cache.
    ``check=False`` leaves the file's MD5 to the caller (materialize hashes what it writes:
    one MD5 per file, not two); such chunks are fetched and held under keys of their own, so
    a caller that expects checked bytes is never handed them.
``cached(file, index) -> bytes | None``
    The chunk if memory or the disk cache has it (checked); never touches the network.
``prefetch(file, first, last, *, from_disk=False) -> Future``
    Fetches the chunks ``first..last`` not already cached or in flight, in the background on a
    pool of ``max_parallel`` threads, one request per run of missing chunks; ``from_disk``
    brings those on disk into memory too (a reader's own read-ahead; not a folder's, whose
    chunks memory would drop before their readers came). ``cancel()`` drops
    it if it has not started; once started it completes (its chunks land in the cache).
``forget(file, index)``
    Drops the chunk from memory if it is on disk: its reader has it, and the memory is for
    chunks about to be read, not for those already served (issue 8: a memory cache no bigger
    than the read-ahead window sent half of a cold read back through the disk).
``pace(file, index)``
    Called by a reader before it takes chunk ``index``: waits while the file's running MD5
    is hashing more than ``integrity.LAG`` chunks behind it.
``hold(file)``, ``release(file)``, ``served(file, index, data)``
    What a handle tells the MD5 checks: the file is open, and which chunks it got (see
    ``integrity``); ``served`` raises DigestMismatch when it completes a wrong MD5.
``have(file, index) -> bool``
    Whether memory or the disk cache holds the chunk; never reads it.
``chunk_count(file)``, ``chunk_bounds(file, index) -> (start, end)``, ``close()``.

A chunk is queued for the disk cache before its waiters have it (``ChunkCache.put_behind``:
stored by the cache's writer thread; readers wait for the disk only when it falls 32 MiB
behind), and the cache serves it from then on, written or waiting.

MD5: every chunk passes through ``integrity.Checks`` (see there), which hashes files fetched
from their start in order, holds back the chunk that completes a hash until it is checked, and
decides what follows a mismatch (the file evicted, fetched whole, or never served again). The
end of a file read without its start is served unchecked but never kept, so a later whole-file
read meets the check.

A server that answers a Range with 200 is remembered: from then on every file is streamed once
from its start, for all of its readers, instead of once per reader and range. Until the first
ranged request has its answer, the others wait for it (``rangeprobe``), so that no window of
requests is out streaming the file from byte 0 each. Where no disk cache keeps what such a
stream brings ahead of its readers (``store=False``, materialize), the chunks are held for them
and the stream waits once ``HELD_AHEAD`` are unread, rather than run ahead into an LRU that
would drop them and start the file over from byte 0; the chunks before the first one asked for
are then left to nobody (a download continued mid-file has no reader for them). Open handles
say where they are (``reader_at``): a held chunk stays held until every one of them is past
it, so the stream goes at the pace of its slowest reader. Held only until the first taker, it
went at the fastest one's: eight readers of one file on two cores drifted apart by more than
memory holds, and the slow ones streamed the file again from byte 0, 15 GETs for one file. A
reader that does not move for ``PATIENCE`` is not waited for again until it reads.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext

from xnatfs.errors import (
    ConnectError,
    DigestMismatch,
    IntegrityError,
    ServerTimeout,
    TransferError,
    XnatfsError,
)
from xnatfs.reader.chunkcache import CHUNK_SIZE, ChunkCache
from xnatfs.reader.integrity import LAG, Checks
from xnatfs.reader.item import Item, Items
from xnatfs.reader.policy import MAX_WINDOW, TOLERANCE
from xnatfs.reader.rangeprobe import RangeProbe
from xnatfs.reader.store import Checked, MemoryChunks
from xnatfs.reader.verify import Verifier
from xnatfs.tree.model import RemoteFile
from xnatfs.xnat.client import XnatClient
from xnatfs.xnat.retry import PAUSES, Attempts
from xnatfs.xnat.transport import PIECE, Body

log = logging.getLogger(__name__)

PROBE_INTERVAL = 1.0  # seconds between requests to a server that could not be reached
# Seconds a chunk whose read failed after all its tries fails at once, unless the server has
# answered some request since. The kernel splits one read(2) into several FUSE reads, and
# retries a failed one page by page: each asked afresh, a read under --timeout 3 failed after
# 12.6 s, not 4.
FAIL_HOLD = 1.0
HELD_AHEAD = 8  # chunks a whole-file stream holds unread for readers without a disk cache
PATIENCE = 2.0  # seconds a stream waits for its slowest reader to move before going on
# Chunks kept in memory by default: a sequential reader's read-ahead window, the chunks behind
# it that late kernel reads may still ask for, and those its MD5 has yet to hash. A memory any
# smaller drops chunks fetched ahead before they are read (LRU): 60-90 % of a cold 1 GiB read
# then came back through the disk, measured with 48 MiB against a 48 MiB window.
MEMORY_CHUNKS = MAX_WINDOW + TOLERANCE + LAG


class Fetcher:
    """Chunks of remote files, from memory, the disk cache or the network. Thread-safe."""

    def __init__(
        self,
        client: XnatClient,
        cache: ChunkCache | None,
        chunk_size: int = CHUNK_SIZE,
        max_parallel: int = 32,
        *,
        pool: Executor | None = None,
        memory: int | None = None,
        retries: int = 3,
        pauses: tuple[float, ...] = PAUSES,
        deadline: float = 60.0,
    ) -> None:
        if chunk_size % PIECE and PIECE % chunk_size:
            raise ValueError(f"chunk size must divide or be a multiple of {PIECE}")
        self.client = client
        self.cache = cache
        self.chunk_size = chunk_size
        self.retries = retries
        self.pauses = pauses
        self.deadline = deadline
        memory = MEMORY_CHUNKS * chunk_size if memory is None else memory
        self.memory = MemoryChunks(memory)
        self._lock = threading.Lock()  # guards _streams, _unreachable, _next_probe
        # What the reader knows of each file version: fetches in flight, chunks held for
        # readers, failures held, its Last-Modified, its MD5 state (``item``).
        self.items = Items(self.chunk_count)
        self.checks = Checks(self, server=client.base_url, deadline=deadline, items=self.items)
        self._ignores_range = False  # the server answered a Range with the whole file
        self._range = RangeProbe()  # until that is known, one ranged request at a time
        self._streams: set[_Delivery] = set()  # whole-file bodies finishing on their own
        self._unreachable = False
        self._next_probe = 0.0
        self._answers = 0  # answers from the server so far: a failure held ends at the next
        # Requests in flight for read-ahead, across all files: enough to fill a link's
        # latency x bandwidth (20 ms x 400 Mbit/s with 4 MiB requests at 100 Mbit/s each
        # wants 16 or more), within the client's pool of connections.
        self.pool = pool or ThreadPoolExecutor(max_parallel, thread_name_prefix="xnatfs-fetch")

    # -- geometry ------------------------------------------------------------------------

    def chunk_count(self, file: RemoteFile) -> int:
        return -(-_size(file) // self.chunk_size)

    def chunk_bounds(self, file: RemoteFile, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, _size(file))

    # -- public API ----------------------------------------------------------------------

    def chunk(self, file: RemoteFile, index: int, *, store: bool = True,
              check: bool = True) -> bytes:
        """One chunk, exact and checked; see the module docstring."""
        return self.get(file, index, store=store, check=check).data

    def get(self, file: RemoteFile, index: int, *, store: bool = True,
            check: bool = True) -> Checked:
        """``chunk``, with the XXH3 of its bytes (``store.Checked``)."""
        if not check:
            file = _unchecked(file)  # its own keys: see the docstring
        if not 0 <= index < self.chunk_count(file):
            raise ValueError(f"chunk {index} out of range for {file.uri} ({file.size} bytes)")
        item = self.items(file)
        held = item.failures.get(index)
        if held is not None and held[0] > time.monotonic() and held[1] == self._answers:
            raise type(held[2])(str(held[2]))
        # The call's one budget: the HTTP layer spends it on failures before an answer,
        # this loop on bodies that broke after one (``xnatfs.xnat.retry``).
        attempts = Attempts(time.monotonic() + self.deadline, self.retries + 1,
                            pauses=self.pauses)
        while True:
            if self.checks.bad(file):
                raise DigestMismatch(f"{file.uri} does not match its MD5 {file.digest}")
            try:
                return self._chunk_once(item, index, store, attempts)
            except XnatfsError as exc:
                try:
                    if self._unreachable:
                        raise
                    attempts.again(exc, f"chunk {index} of {file.uri}")
                except XnatfsError as final:
                    if final.transient:
                        with item.lock:
                            item.failures[index] = (time.monotonic() + FAIL_HOLD,
                                                    self._answers, final)
                    raise

    def fetched_whole(self, file: RemoteFile, *, check: bool = True) -> bool:
        """Whether the file's chunks come from one whole-file stream (see ``_whole``)."""
        return self._whole(self.items(file if check else _unchecked(file)))

    def distrust(self, file: RemoteFile, *, check: bool = True) -> None:
        """A caller that checks the MD5 itself (``check=False``) found that bytes from ranged
        answers failed it: fetch the file whole from now on, as ``Checks`` does after its own
        failures, and drop the chunks those answers brought."""
        file = file if check else _unchecked(file)
        self.checks.suspect_ranges(file)
        self.evict(file, disk=check)  # unchecked chunks are never stored on disk

    def item(self, file: RemoteFile, *, check: bool = True) -> Item:
        """The file version's ``Item``: a caller that holds it keeps what the reader knows of
        the version (the Last-Modified its requests must match) for as long as it does."""
        return self.items(file if check else _unchecked(file))

    def taint(self, file: RemoteFile) -> int:
        """How many times bytes of this file version failed its MD5 (``Checks.taint``)."""
        return self.checks.taint(file)

    @property
    def whole_files(self) -> str | None:
        """Why every file is fetched whole, without Range, if it is."""
        if self._ignores_range:
            return "the server ignores Range"
        return self.checks.whole_files

    def cached(self, file: RemoteFile, index: int) -> bytes | None:
        """The chunk from memory or the disk cache, or None; never the network."""
        chunk = self.load(file, index)
        return None if chunk is None else chunk.data

    def load(self, file: RemoteFile, index: int) -> Checked | None:
        """``cached``, with the chunk's XXH3 (``store.Checked``)."""
        item = self.items(file)
        epoch = _epoch(item)
        chunk = self.memory.load(file, index) if epoch is not None else None
        if chunk is None and epoch is not None and self.cache is not None:
            chunk = self.cache.load(file, index)
        return chunk if _epoch(item) == epoch else None

    def prefetch(self, file: RemoteFile, first: int, last: int, *,
                 from_disk: bool = False) -> Future[None]:
        """Fetch chunks first..last into the caches in the background; ``from_disk``: bring
        those the disk cache has into memory as well (a reader's own read-ahead)."""
        last = min(last, self.chunk_count(file) - 1)
        parts = []
        if from_disk and last > first and self.cache is not None:
            # A chunk a thread from the disk: one thread read them at 670 MB/s, one after
            # the other, and its reader waited on each.
            parts = [self.pool.submit(self._prefetch, file, index, index, True)
                     for index in range(first + 1, last + 1) if self.cache.contains(file, index)]
        whole = self.pool.submit(self._prefetch, file, first, last, from_disk)
        return _all([*parts, whole]) if parts else whole

    def pace(self, file: RemoteFile, index: int) -> None:
        """Before a reader gets chunk ``index``: keep within reach of the file's running MD5
        (``Checks.pace``)."""
        self.checks.pace(file, index)

    def hold(self, file: RemoteFile) -> None:
        """A handle opened the file (``Checks.hold``); ``release`` when it closes."""
        self.checks.hold(file)

    def release(self, file: RemoteFile) -> None:
        self.checks.release(file)

    def served(self, file: RemoteFile, index: int, chunk: Checked) -> None:
        """A handle got the chunk: the file's hash sees it too (``Checks.served``)."""
        self.checks.served(file, index, chunk)

    def forget(self, file: RemoteFile, index: int) -> bool:
        """Drop the chunk from memory (True) unless something still wants it there; see the
        module docstring. Only where there is a disk cache: without it, another reader behind
        would have to fetch it again, from a server that may ignore Range (the whole file up
        to it). With one, the chunk was queued for the disk before its reader had it. Not
        before the file's running MD5 has it: on two cores the hash trails a cold reader, and
        a chunk dropped here went back through the disk for it (a fifth of a cold 1 GiB read,
        measured)."""
        if self.cache is None:
            return True
        if self.checks.wanted(file, index):
            return False
        self.memory.drop(file, index)
        return True

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            streams = list(self._streams)
        for delivery in streams:  # its reads fail, its waiters are told, its thread ends
            delivery.body.close()

    # -- getting one chunk ---------------------------------------------------------------

    def _chunk_once(self, item: Item, index: int, store: bool,
                    attempts: Attempts) -> Checked:
        """Memory, else whoever claims the chunk first loads it from disk or the network while
        the others wait for it (FUSE sends several reads of one chunk at once)."""
        file = item.file
        data = self.memory.load(file, index) if not item.evicting else None
        if data is not None:
            if item.held:  # a reader has it now: the stream holding it may go on
                _take_held(item, index)
            return data
        if store and self.cache is not None and self.cache.contains(file, index):
            # On disk: no request to wait a turn for (a re-read after a remount, when nothing
            # has been asked of the server yet, went one chunk at a time through the turn).
            return self._claimed_or_awaited(item, index, store, attempts, on_disk=True)
        with self._turn(item, attempts.deadline):
            return self._claimed_or_awaited(item, index, store, attempts, on_disk=False)

    def _claimed_or_awaited(self, item: Item, index: int, store: bool, attempts: Attempts,
                            *, on_disk: bool) -> Checked:
        """``on_disk``: the disk cache had the chunk a moment ago (``_chunk_once`` looked)."""
        deadline = attempts.deadline
        file = item.file
        with item.lock:
            data = item.held.get(index)
            if data is not None:
                _settle_held(item, index)
                return data
            future = item.inflight.get(index)
            if future is None:
                # A fetch may have finished since memory was looked at: it remembers the
                # chunk before it leaves ``inflight``, so look again while holding the lock.
                data = self.memory.load(file, index)
                if data is not None:
                    return data
                mine = future = item.inflight[index] = Future()
                # A whole-file stream claims the rest of the file in the same step: a
                # read-ahead that claimed chunk 1 while this call's request was on its way
                # streamed the file from byte 0 a second time.
                extra = self._claim_rest(item, index, store) \
                    if item.count > 1 and self._whole(item) and not on_disk else {}
            else:
                mine = None
        if mine is None:
            try:
                data = future.result(max(0.0, deadline - time.monotonic()))
                if item.held:
                    _take_held(item, index)
                return data
            except TimeoutError:
                raise ServerTimeout(f"chunk {index} of {file.uri} is still on its way after "
                                    f"{self.deadline:g} s") from None
        claims = {index: mine, **extra}
        if self.cache is not None and store:
            self._from_cache(item, claims, [index])
        if index in claims:
            self._fetch(item, index, index, claims, store, attempts, detach=True,
                        extra=set(extra))
        elif claims:  # ours was on disk after all: the stream is for the rest, on its own
            # thread once its first chunk is in (``detach``), where ``close`` can end it
            self._fetch(item, min(claims), min(claims), claims, store, attempts, detach=True,
                        extra=set(claims))
        return mine.result()

    def _prefetch(self, file: RemoteFile, first: int, last: int, from_disk: bool) -> None:
        attempts = Attempts(time.monotonic() + self.deadline, self.retries + 1,
                            pauses=self.pauses)
        item = self.items(file)
        with item.lock:
            floor = _floor(item)
            if floor is not None and last < floor:
                return  # stale: every open handle is past it (a stream from byte 0, else)
        wanted = [i for i in range(first, last + 1) if not self.memory.contains(file, i)]
        claims: dict[int, Future[Checked]] = {}
        if self.cache is not None and wanted:  # one look at the disk's index a chunk
            on_disk = [i for i in wanted if self.cache.contains(file, i)]
            wanted = [i for i in wanted if i not in on_disk]
            if from_disk:
                # Into memory ahead of the reader, on this pool's threads: read one at a time
                # by the reader itself, a re-read from the disk cache ran at 560 MB/s, on a
                # disk that reads 1.2 GB/s.
                claims = self._claim(item, on_disk)
                self._from_cache(item, claims, list(claims))  # what is left was damaged
        if claims or wanted:
            with self._turn(item, attempts.deadline):
                self._prefetch_turn(item, wanted, attempts, claims)

    def _prefetch_turn(self, item: Item, wanted: list[int], attempts: Attempts,
                       claims: dict[int, Future[Checked]]) -> None:
        file = item.file
        whole = self._whole(item)
        mine = self._claim(item, wanted, whole=whole)
        if self.cache is not None:
            # Between the look above and the claim, a reader may have fetched a chunk, moved
            # on and let memory drop it: it is in the cache now (queued before the reader had
            # it), so serve the claim from there rather than fetch the chunk again.
            self._from_cache(item, mine, [i for i in mine if self.cache.contains(file, i)])
        claims.update(mine)
        if whole and claims:  # one stream from byte 0 brings them all, gaps or not
            self._fetch(item, min(claims), max(claims), claims, True, attempts, detach=False)
            return
        for run in _runs(sorted(claims)):
            self._fetch(item, run[0], run[-1], {i: claims[i] for i in run}, True, attempts,
                        detach=False)

    def _whole(self, item: Item) -> bool:
        """Fetched without Range: a file of one chunk, every file once ranged answers are not to
        be used, a file whose ranged answers failed its MD5."""
        return item.count == 1 or self.whole_files is not None or item.suspect

    def _turn(self, item: Item, deadline: float) -> AbstractContextManager[None]:
        """Claims on a file fetched with Range wait while a first ranged request is out to learn
        whether the server honours it (``rangeprobe``). A file fetched whole neither waits nor
        makes others wait: its answer says nothing of Range, and it may take long."""
        return nullcontext() if self._range.known or self._whole(item) \
            else self._range.turn(deadline)

    def _from_cache(self, item: Item, claims: dict[int, Future[Checked]],
                    indices: list[int]) -> None:
        """Serve those of our ``claims`` (of ``indices``) the disk cache holds, and drop them
        from ``claims``; what is left is for the network. A cache that fails fails every
        claim: nobody is left waiting on a dead one."""
        assert self.cache is not None
        file = item.file
        epoch = _epoch(item)
        try:
            found = [(i, data) for i in indices
                     if epoch is not None and (data := self.cache.load(file, i)) is not None]
        except BaseException as exc:
            self._fail(item, claims, exc)
            raise
        for index, data in found:
            with item.lock:
                if _epoch_locked(item) != epoch:
                    return  # the file was evicted meanwhile: the rest comes from the server
                self.memory.keep(file, index, data)
                del item.inflight[index]
            claims.pop(index).set_result(data)

    def _claim(self, item: Item, indices: list[int], *,
               whole: bool = False) -> dict[int, Future[Checked]]:
        """Register as the fetcher of those chunks nobody is fetching yet (nor has just
        fetched: a fetch remembers its chunk before it leaves ``inflight``), nor holds for a
        reader (memory may have dropped it: a read-ahead that fetched it again from a
        Range-less server streamed the file from byte 0 for it)."""
        claims: dict[int, Future[Checked]] = {}
        file = item.file
        with item.lock:
            with self.memory.lock:
                for i in indices:
                    if i not in item.inflight and i not in item.held \
                            and not self.memory.contains(file, i):
                        claims[i] = item.inflight[i] = Future()
            if whole and claims:  # ``whole``: and the rest of the file a stream brings
                claims.update(self._claim_rest(item, min(claims), True))
        return claims

    def _claim_rest(self, item: Item, first: int, store: bool) -> dict[int, Future[Checked]]:
        """Under ``item.lock``: claim for a whole-file stream that brings chunk ``first`` the
        chunks it brings that nobody fetches, holds for a reader or (where it stores) has on
        disk: all of the file where a disk keeps them, else those from ``first`` on (see
        ``_Delivery``). Those in memory too: memory is an LRU that may drop them before the
        stream gets there, and a reader who then missed one streamed the file again from byte
        0; readers look in memory before they wait for a claim, so claiming them costs nobody
        a wait."""
        disk = store and self.cache is not None
        claims: dict[int, Future[Checked]] = {}
        for i in range(0 if disk else first, item.count):
            if i not in item.inflight and i not in item.held \
                    and not (disk and self.cache.contains(item.file, i)):  # type: ignore[union-attr]
                claims[i] = item.inflight[i] = Future()
        return claims

    # -- one request -----------------------------------------------------------------------

    def _fetch(
        self, item: Item, first: int, last: int, claims: dict[int, Future[Checked]],
        store: bool, attempts: Attempts, *, detach: bool, extra: set[int] | None = None,
    ) -> None:
        """One GET for chunks first..last, delivering each to its claim as it arrives. Never
        raises: failures go to the claims' futures, so every waiter sees them. With ``detach``,
        a whole-file body is left to a thread once our chunks are delivered. ``extra``: the
        claims made for a whole-file stream's sake, not asked for (``_claim_rest``)."""
        body = None
        file = item.file
        try:
            self._may_connect()
            whole = self._whole(item)
            try:
                since = item.modified
                if whole:
                    body = self.client.open_file(file.uri, attempts=attempts, since=since)
                else:
                    end = self.chunk_bounds(file, last)[1]
                    body = self.client.open_file(file.uri, first * self.chunk_size, end,
                                                 attempts=attempts, since=since)
            except ConnectError as exc:
                with self._lock:
                    if not self._unreachable:
                        log.warning("the server cannot be reached (%s): reads of what is not "
                                    "cached fail at once until it answers again", exc)
                    self._unreachable = True
                    self._next_probe = time.monotonic() + PROBE_INTERVAL
                raise
            if self._unreachable:
                self._unreachable = False
                log.warning("the server answers again")
            self._answers += 1  # the server answers: what failed before may not fail now
            if since is None and body.last_modified:
                with item.lock:  # every later request for this version must get the same
                    if item.modified is None:
                        item.modified = body.last_modified
            delivery = _Delivery(self, item, body, claims, store, extra or set())
            if detach:  # a reader's own call: its chunks keep to its deadline
                delivery.caller_last = last
            if not whole and not body.ranged and self.whole_files is None:
                # Only now, with the body's claims on the file's chunks in place: a reader
                # that sees the flag goes straight to claiming, and must find them claimed
                # (set before, a window of readers each streamed the file again).
                self._ignores_range = True
                log.warning("%s ignores Range: every file is streamed whole from now on",
                            self.client.base_url)
            if not whole:  # a whole body has claimed the file's chunks: the answer is in place
                self._range.answered()
        except BaseException as exc:
            self._fail(item, claims, exc)
            if body is not None:
                body.close()
            return
        if detach and not body.ranged and delivery.run(until=last):
            self._detached(delivery)
        else:
            delivery.run()

    def _detached(self, delivery: _Delivery) -> None:
        """Finish a whole-file body on a thread of its own, owned here: ``close`` ends it."""
        with self._lock:
            self._streams.add(delivery)

        def finish() -> None:
            try:
                delivery.run()
            finally:
                with self._lock:
                    self._streams.discard(delivery)

        threading.Thread(target=finish, name="xnatfs-stream", daemon=True).start()

    def _may_connect(self) -> None:
        """While the server is unreachable, let one request a second through to probe it."""
        if not self._unreachable:
            return
        with self._lock:
            now = time.monotonic()
            if now >= self._next_probe:
                self._next_probe = now + PROBE_INTERVAL
                return
        raise ConnectError(f"{self.client.base_url} is unreachable (trying again every second)")

    def _deliver(
        self, item: Item, index: int, chunk: Checked, claims: dict[int, Future[Checked]], *,
        memory: bool, disk: bool, ranged: bool, epoch: int | None,
    ) -> None:
        """Hand one chunk to its waiters and the caches; the MD5 sees it too."""
        file = item.file
        start, end = self.chunk_bounds(file, index)
        if len(chunk.data) != end - start:
            raise IntegrityError(f"chunk {index} of {file.uri}: {len(chunk.data)} bytes, "
                                 f"expected {end - start}")
        if _epoch(item) != epoch:
            raise TransferError(f"chunk {index} of {file.uri} came from a request sent before "
                                "the file's copy failed its MD5; asking again")
        last = index == item.count - 1
        # The chunk that completes the file's MD5 (normally the last) waits for it, so a
        # mismatch fails that read instead of surfacing after every byte is out. The last
        # bytes served unchecked (a reader of the end only) are not kept: a later whole-file
        # read must fetch them again and meet the check.
        early = self.checks.completes(file, index)
        verified = self.checks.feed(file, index, chunk, last=last, ranged=ranged) \
            if early else False
        keep = verified or not last or not file.digest
        # Queued for the disk before anyone has it: a reader that moves on and forgets it from
        # memory must find it in the cache, or a stale read-ahead would fetch it again.
        if disk and keep and self.cache is not None:
            self.cache.keep(file, index, chunk)
        future = claims.pop(index, None)
        with item.lock:
            stale = _epoch_locked(item) != epoch  # evicted while this chunk was on its way
            if memory and keep and not stale:
                self.memory.keep(file, index, chunk)
            if future is not None:
                item.inflight.pop(index, None)
        if stale:
            if disk and keep and self.cache is not None:
                self.cache.delete(file, index)  # kept after the eviction emptied the disk
            if future is not None:
                future.set_exception(TransferError(
                    f"chunk {index} of {file.uri} was on its way when the file's copy failed "
                    "its MD5; asking again"))
            return
        if future is not None:
            future.set_result(chunk)
        if not early:
            self.checks.feed(file, index, chunk, ranged=ranged)

    def _fail(self, item: Item, claims: dict[int, Future[Checked]], exc: BaseException) -> None:
        with item.lock:
            for index in claims:
                item.inflight.pop(index, None)
        for future in claims.values():
            future.set_exception(exc)
        claims.clear()

    def _hold(self, item: Item, index: int, data: Checked) -> None:
        """Keep a chunk a stream brought ahead until a reader takes it (see the module
        docstring). Held before its waiters have it, so that the first of them takes it: held
        after, a chunk all readers had already taken stayed held, and the stream waited for
        nobody. At most ``HELD_AHEAD`` a file: past that, the oldest go."""
        with item.lock:
            item.held[index] = data
            while len(item.held) > HELD_AHEAD:
                del item.held[next(iter(item.held))]
            _settle_held(item, None)  # every open handle may be past it already

    def _wait_for_readers(self, item: Item) -> None:
        """Wait while the file has ``HELD_AHEAD`` chunks held unread. The handles at the
        lowest position that have not moved for ``PATIENCE`` are not waited for (until they
        read again); readers that never come cost a wait of the deadline. Then the stream goes
        on and the oldest held go first."""
        end = time.monotonic() + self.deadline
        with item.lock:
            floor, since = _floor(item), time.monotonic()
            while len(item.held) >= HELD_AHEAD:
                now = time.monotonic()
                if now >= end:
                    return
                if _floor(item) != floor:
                    floor, since = _floor(item), now
                elif floor is not None and now - since >= PATIENCE:
                    for reader in [r for r, at in item.readers.items() if at == floor]:
                        del item.readers[reader]  # left behind: it reads again to be waited for
                    _settle_held(item, None)
                    floor, since = _floor(item), now
                    continue
                item.taken.wait(min(end - now, PATIENCE / 4))

    def reader_at(self, item: Item, reader: object, index: int) -> None:
        """An open handle of the file is about to read chunk ``index`` and wants none before it
        (see the module docstring): held chunks below every handle's position go."""
        with item.lock:
            item.readers[id(reader)] = index
            if item.held:  # a stream may be waiting for this reader to move
                _settle_held(item, None)
                item.taken.notify_all()

    def reader_gone(self, item: Item, reader: object) -> None:
        """The handle closed: a stream does not wait for it any more."""
        with item.lock:
            if item.readers.pop(id(reader), None) is not None and item.held:
                _settle_held(item, None)
                item.taken.notify_all()

    def offer(self, file: RemoteFile, data: bytes) -> bool:
        """Take a one-chunk file's bytes that came some other way (an entry of its resource's
        zip, whose size and MD5 the caller checked, and which it found not cached: ``have``)
        as if a GET had brought them: through the claim and the epoch rules of every delivery,
        to memory and the disk cache. The caller's MD5 is taken as the file's check, so the
        bytes are not hashed twice. Nothing happens to a file being fetched or of several
        chunks; False then, or if the delivery was refused."""
        item = self.items(file)
        if item.count != 1:
            return False
        epoch = _epoch(item)
        claims = self._claim(item, [0])
        if not claims:
            return False
        chunk = Checked.of(data)
        try:
            if file.digest and self.checks.passed(file) is None:
                self.checks.proven(file, array("Q", [chunk.tag]))
            # In memory as well as on disk: the file's reader comes within moments, and a
            # read served from the disk cache cost an index lookup and a load in SQLite, a
            # quarter of the mount's CPU in a cp -r of 64 KiB files.
            self._deliver(item, 0, chunk, claims, memory=True, disk=True, ranged=False,
                          epoch=epoch)
        except BaseException as exc:
            self._fail(item, claims, exc)
            return False
        return True

    # -- what the checks need (integrity.Chunks) ---------------------------------------------

    def have(self, file: RemoteFile, index: int) -> bool:
        """Whether memory or the disk cache holds the chunk (the disk's index only)."""
        if self.memory.contains(file, index) or index in self.items(file).held:
            return True  # held for a reader by a stream: memory may have dropped it
        return self.cache is not None and self.cache.contains(file, index)

    def in_flight(self, file: RemoteFile, index: int) -> Future[Checked] | None:
        item = self.items(file)
        with item.lock:
            return item.inflight.get(index)

    def record(self, file: RemoteFile, tags: bytes) -> None:
        """Keep the chunk tags of the copy of the file that passed its MD5 (``Checks.passed``)."""
        if self.cache is not None:
            self.cache.put_record(_record_key(file), tags)

    def recorded(self, file: RemoteFile) -> bytes | None:
        return None if self.cache is None else self.cache.get_record(_record_key(file))

    def verify(self, file: RemoteFile) -> array[int]:
        """The chunk tags of a copy of the whole file that matches its MD5: the one known, or
        one hashed now from the start, chunk by chunk, from the caches or the network. What a
        handle needs when it has served every chunk of a file and no running hash saw them
        all (a reader from the end, a cache smaller than the file). DigestMismatch if no copy
        passes."""
        tags = self.checks.passed(file)
        if tags is not None or not file.digest:
            return tags if tags is not None else array("Q")
        verifier = Verifier(None, file.digest)
        tags = array("Q", bytes(8 * self.chunk_count(file)))
        for index in range(self.chunk_count(file)):
            chunk = self.get(file, index)
            tags[index] = chunk.tag
            verifier.update(chunk.data)
        if not verifier.matches():
            self.checks.disproven(file, True, f"MD5 mismatch for {file.uri}: the listing says "
                                              f"{file.digest}")
        self.checks.proven(file, tags)
        return tags

    def evict(self, file: RemoteFile, *, disk: bool = True,
              before: Callable[[], None] | None = None) -> None:
        """Drop every chunk of the file from memory, from those held for readers and (unless
        not ``disk``) from the disk cache. ``before`` runs under the item's lock, in the same
        step as memory is emptied (``Checks`` moves the taint there). Until the disk is
        emptied too, nothing loaded or fetched of the file is kept or handed out: a reader
        that took chunk 0 from the disk between memory and disk being emptied was given the
        copy that had just failed (the stale copy the property tests found)."""
        item = self.items(file)
        with item.lock:
            if before is not None:
                before()
            item.evictions += 1
            item.evicting += 1
            item.held.clear()
            item.taken.notify_all()
            for index in range(item.count):
                self.memory.drop(file, index)
        try:
            if disk and self.cache is not None:
                for index in range(item.count):
                    self.cache.delete(file, index)
        finally:
            with item.lock:
                item.evicting -= 1


class _Delivery:
    """One response body cut into chunks. A 200 (the server ignored Range, or a whole-file GET)
    claims every chunk nobody else is fetching, so the file is streamed once for everybody; the
    chunks claimed that way go to memory (and to disk, for callers that store) for later readers."""

    def __init__(self, fetcher: Fetcher, item: Item, body: Body,
                 claims: dict[int, Future[Checked]], store: bool, extra: set[int]) -> None:
        file = item.file
        size = _size(file)
        if body.total is not None and body.total != size:
            raise IntegrityError(f"{file.uri} is {body.total} bytes on the server, "
                                 f"the listing says {size} (changed since listed?)")
        self.fetcher = fetcher
        self.item = item
        self.file = file
        self.body = body
        self.epoch = _epoch(item)  # what it brings is kept only if the file is not evicted
        self.claims = claims
        self.store = store
        self.disk = store and fetcher.cache is not None  # the disk keeps what comes ahead
        self.index = body.start // fetcher.chunk_size
        self.caller_last = -1  # chunks up to this one are a waiting call's, within its budget
        self.extra = extra  # claimed for others, not asked for: kept in memory for them
        if not body.ranged:
            # The chunks before the first one asked for are taken only where the disk keeps
            # them: held for readers instead, they made the stream wait a deadline each for
            # readers that never come (materialize continuing a part file from chunk 12).
            with item.lock:
                others = fetcher._claim_rest(item, min(claims) if claims else 0, store)
            self.extra |= set(others)
            claims.update(others)
        # Pieces of a whole chunk (of the whole body when shorter) come from the socket
        # straight into their own bytes: no joining, no re-buffering in urllib3.
        piece = min(fetcher.chunk_size, body.length or fetcher.chunk_size)
        self.pieces = _Pieces(body.chunks(piece))

    def run(self, until: int | None = None) -> bool:
        """Deliver chunks until ``until`` is delivered (True: more remain) or none are left."""
        fetcher, item, file = self.fetcher, self.item, self.file
        try:
            while self.claims:
                start, end = fetcher.chunk_bounds(file, self.index)
                if self.index > self.caller_last:
                    # Chunks nobody's call waits for: each gets the time one call has (a
                    # whole file streamed for later readers may take far longer in all).
                    self.body.attempts = Attempts(time.monotonic() + fetcher.deadline, 1)
                data = Checked.of(self.pieces.take(end - start))
                if self.index in self.claims:
                    extra = self.index in self.extra
                    hold = not self.body.ranged and not self.disk  # see _hold
                    if hold:
                        fetcher._hold(item, self.index, data)
                    fetcher._deliver(item, self.index, data, self.claims,
                                     memory=self.store or extra, disk=self.store,
                                     ranged=self.body.ranged, epoch=self.epoch)
                    if hold:
                        fetcher._wait_for_readers(item)
                else:
                    fetcher.checks.feed(file, self.index, data, ranged=self.body.ranged)
                self.index += 1
                if until is not None and self.index > until and self.claims:
                    return True
        except BaseException as exc:
            fetcher._fail(item, self.claims, exc)
        self.body.close()
        return False


class _Pieces:
    """Exact-length reads over a body's pieces; no copy when pieces align with chunks."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self.pieces = pieces
        self.left = b""

    def take(self, length: int) -> bytes:
        parts: list[bytes] = []
        got = 0
        while got < length:
            if self.left:
                piece, self.left = self.left, b""
            else:
                piece = next(self.pieces, b"")
                if not piece:
                    raise IntegrityError(f"body ended {length - got} bytes short of a chunk")
            if got + len(piece) > length:
                piece, self.left = piece[: length - got], piece[length - got:]
            parts.append(piece)
            got += len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _epoch(item: Item) -> int | None:
    """The item's eviction count, or None while one is under way: a chunk loaded or fetched
    is kept and handed out only if this is the same, and not None, before and after."""
    with item.lock:
        return _epoch_locked(item)


def _epoch_locked(item: Item) -> int | None:
    return None if item.evicting else item.evictions


def _all(parts: list[Future[None]]) -> Future[None]:
    """A future done when all of ``parts`` are (with the first failure, if any)."""
    done: Future[None] = Future()
    left = [len(parts)]
    lock = threading.Lock()

    def finished(part: Future[None]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last and done.set_running_or_notify_cancel():
            failed = next((p.exception() for p in parts
                           if not p.cancelled() and p.exception() is not None), None)
            if failed is not None:
                done.set_exception(failed)
            else:
                done.set_result(None)

    for part in parts:
        part.add_done_callback(finished)
    return done


def _take_held(item: Item, index: int) -> None:
    """A reader has the chunk: a stream that held it for readers may go on."""
    with item.lock:
        _settle_held(item, index)


def _settle_held(item: Item, taken: int | None) -> None:
    """Under ``item.lock``: drop the held chunks nobody will take from there any more; those
    below every open handle's position, or, with no handle open (materialize reads through
    none), the one just ``taken``."""
    floor = _floor(item)
    if floor is not None:
        gone = [i for i in item.held if i < floor]
    else:
        gone = [taken] if taken in item.held else []
    for index in gone:
        del item.held[index]
    if gone:
        item.taken.notify_all()


def _floor(item: Item) -> int | None:
    """Under ``item.lock``: the lowest position of an open handle, None without one."""
    return min(item.readers.values()) if item.readers else None


def _runs(indices: list[int]) -> Iterator[list[int]]:
    """Consecutive runs of sorted indices: [1, 2, 4] -> [1, 2], [4]."""
    for _, group in itertools.groupby(enumerate(indices), lambda p: p[1] - p[0]):
        yield [i for _, i in group]


def _size(file: RemoteFile) -> int:
    if file.size is None:
        raise ValueError(f"size of {file.uri} unknown: resolve it first (Tree.file_size)")
    return file.size


def _unchecked(file: RemoteFile) -> RemoteFile:
    """The file as a caller that checks its MD5 itself fetches it, under keys of its own."""
    return RemoteFile(file.uri, file.size, None) if file.digest else file


def _record_key(file: RemoteFile) -> str:
    return f"passed\0{file.version}\0{file.uri}"



