"""One file version as the reader knows it: rclone's vfs ``Item``.

Everything the reader learns about one version of one file (``RemoteFile.version``: its listed
size and MD5) lives on its ``Item``: the fetches in flight for its chunks, the chunks a
whole-file stream brought ahead of their readers, the chunks whose reads failed a moment ago,
the ``Last-Modified`` of its first answer (the version an open handle is pinned to), its
running MD5, the chunk tags of the copy that passed, and its verdicts. The fetcher and the
checks keep no tables keyed by file: they look the ``Item`` up in ``Items`` and work on it, so
that what one file version is cannot be split across objects that disagree.

Lifetime: an ``Item`` lives while something holds it (an open handle, a fetch, a stream) and
for the next ``RECENT`` files looked up after it. One whose bytes ever failed their MD5 lives
as long as the process: a file fetched whole from then on, or never served again, must not be
believed once more after a pause. The tags of a copy that passed outlive it in the cache's
record store (``Fetcher.record``).

Running hashes are bounded: a file no handle holds keeps its hash only while it is among the
``MAX_DIGESTS`` latest such (each may hold ``verify.MAX_PENDING`` chunks waiting), so a burst of
files started by read-ahead cannot pin gigabytes. A file open in a handle keeps its hash until
the handle closes: pushed out midway, a file read from its start could end unchecked.

Lock order (none is held across network I/O or a wait on a future):

1. ``Item.lock`` (the fields marked *lock*), then the fetcher's memory lock;
2. ``Items._lock`` alone: never under an ``Item.lock``, and released before one is taken;
3. an ``InOrder.cond`` (the running hash) is never held together with an ``Item.lock``;
   it may be held while the hash fills a gap from the fetcher's memory or the disk cache.
"""

from __future__ import annotations

import threading
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future

from cachetools import LRUCache

from xnatfs.errors import XnatfsError
from xnatfs.reader.verify import InOrder
from xnatfs.tree.model import RemoteFile

RECENT = 4096  # file versions kept after nothing holds them
MAX_DIGESTS = 8  # running hashes kept for files no handle holds
FileKey = tuple[str, str]


class Item:
    """The reader's state for one file version. Fields marked *lock* are read and written
    under ``lock``; the verdicts are set under it and may be read without."""

    __slots__ = ("__weakref__", "bad", "count", "evicting", "evictions", "failures", "file",
                 "hash", "held", "holders", "inflight", "key", "lock", "looked_up", "modified",
                 "passed", "readers", "suspect", "taint", "taken")

    def __init__(self, file: RemoteFile, count: int) -> None:
        self.file = file
        self.key: FileKey = key(file)
        self.count = count  # chunks
        self.lock = threading.Lock()
        # -- fetching (lock) --
        self.inflight: dict[int, Future[bytes]] = {}  # chunk -> the one fetch of it
        self.held: dict[int, bytes] = {}  # streamed ahead and unread, where no disk keeps them
        self.taken = threading.Condition(self.lock)  # a held chunk was taken or dropped
        # open handle -> the first chunk it may still read: a held chunk stays held until
        # every handle is past it (``Fetcher.reader_at``)
        self.readers: dict[int, int] = {}
        # chunk -> (until, the server's answer count then, the error): FAIL_HOLD
        self.failures: dict[int, tuple[float, int, XnatfsError]] = {}
        self.modified: str | None = None  # Last-Modified of the first answer: the pin
        # Evictions so far, and under way: a chunk loaded or fetched across one is dropped.
        self.evictions = 0
        self.evicting = 0
        # -- checking (lock) --
        self.hash: InOrder | None = None  # the running MD5, fed in order from chunk 0
        self.holders = 0  # open handles
        self.passed: array[int] | None = None  # XXH3 per chunk of the copy that passed
        self.looked_up = False  # whether the record store was asked for ``passed``
        # -- verdicts --
        self.suspect = False  # its ranged answers made a copy that failed: fetch it whole
        self.bad = False  # failed whole too: never served again
        self.taint = 0  # times bytes of it failed its MD5 (``FileHandle`` watches it)

    def __repr__(self) -> str:
        return f"<Item {self.file.uri} {self.file.version}>"


class Items:
    """Every ``Item`` a fetcher knows, one per file version. Thread-safe."""

    def __init__(self, chunk_count: Callable[[RemoteFile], int]) -> None:
        self.chunk_count = chunk_count
        self._lock = threading.Lock()
        self._live: weakref.WeakValueDictionary[FileKey, Item] = weakref.WeakValueDictionary()
        self._recent: OrderedDict[FileKey, Item] = OrderedDict()  # the latest RECENT
        self._marked: dict[FileKey, Item] = {}  # with a verdict: kept for good
        self._hashing: LRUCache[FileKey, Item] = _DropsHash(MAX_DIGESTS)

    def __call__(self, file: RemoteFile) -> Item:
        """The file version's ``Item``, made on first sight (``file.size`` known)."""
        fkey = (file.uri, file.version)
        with self._lock:  # an OrderedDict: several lookups a chunk, cachetools' LRU cost 10 %
            item = self._recent.get(fkey)  # of the CPU of cp -r
            if item is not None:
                self._recent.move_to_end(fkey)
                return item
            item = self._live.get(fkey)
            if item is None:
                item = self._live[fkey] = Item(file, self.chunk_count(file))
            self._recent[fkey] = item
            if len(self._recent) > RECENT:
                self._recent.popitem(last=False)
            return item

    def mark(self, item: Item) -> None:
        """The item has a verdict: keep it for the life of the process."""
        with self._lock:
            self._marked[item.key] = item

    def hashing(self, item: Item, running: bool) -> None:
        """Whether an item no handle holds has a running hash: one of ``MAX_DIGESTS``, the
        oldest such losing its hash. Called with no item's lock held."""
        with self._lock:
            if running:
                self._hashing[item.key] = item
            else:
                self._hashing.pop(item.key, None)
            dropped, self._hashing.dropped = self._hashing.dropped, []
        for old in dropped:
            with old.lock:
                if old.holders == 0:
                    old.hash = None


class _DropsHash(LRUCache[FileKey, Item]):
    """An LRU that hands back what it evicts, for the hash to be dropped outside its lock."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.dropped: list[Item] = []

    def popitem(self) -> tuple[FileKey, Item]:
        fkey, item = super().popitem()
        self.dropped.append(item)
        return fkey, item


def key(file: RemoteFile) -> FileKey:
    return (file.uri, file.version)
