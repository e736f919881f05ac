"""Read-ahead for one open file: notice sequential reading, fetch ahead, more the longer it lasts.

The shape is mountpoint-s3's and rclone's. The window (chunks fetched ahead of the reader)
starts at zero, so a program that reads a header and stops costs one chunk. The first read that
continues the previous one opens it to one chunk, and each later step into a new chunk doubles
it, up to a cap. A seek resets it to zero and cancels the fetches that have not started.

Kernel readahead sends several reads at once through several FUSE threads, so they arrive
slightly out of order; a read within ``tolerance`` chunks of the furthest point reached still
counts as sequential (four chunks, 16 MiB: twice the kernel readahead the mount sets, and
mountpoint-s3's forward tolerance for the same reason).

Chunks ahead are fetched in spans of several chunks per request, about ``streams`` spans in
flight at once: a high-latency link keeps several requests going, while loopback is not flooded
with small ones. The fetcher's pool bounds the total across all open files.

``FolderAhead`` does the same across the files of a folder: ``cp -r``, ``tar``, ``rsync`` and
``md5sum *`` open files one at a time in listing order, so each small file would cost a whole
round trip while the next waits. Once two files of a folder are opened in order, the next
``FILES_AHEAD`` are fetched (their first chunk) in parallel; a jump elsewhere stops it.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future

from cachetools import LRUCache

from xnatfs.reader.fetcher import Fetcher
from xnatfs.tree.model import Children, RemoteFile

MAX_WINDOW = 32  # chunks ahead at most: 128 MiB with 4 MiB chunks
STREAMS = 8  # requests in flight per sequential reader, once the window is open
TOLERANCE = 4  # chunks
FILES_AHEAD = 16  # files of a folder fetched ahead of one that is read file after file


class Readahead:
    """The sequential detector and prefetch scheduler of one open file. Thread-safe."""

    def __init__(
        self, fetcher: Fetcher, file: RemoteFile, *, max_window: int = MAX_WINDOW,
        streams: int = STREAMS, tolerance: int = TOLERANCE,
    ) -> None:
        self.fetcher = fetcher
        self.file = file
        self.max_window = max_window
        self.streams = streams
        self.tolerance = tolerance * fetcher.chunk_size
        self.window = 0
        self._last_chunk = fetcher.chunk_count(file) - 1
        self._end: int | None = None  # furthest byte read so far
        self._ahead = -1  # furthest chunk scheduled so far
        self._pending: deque[Future[None]] = deque()
        self._lock = threading.Lock()

    def advise(self, offset: int, end: int) -> None:
        """Called before serving a read of [offset, end): adjust the window, schedule fetches."""
        size = self.fetcher.chunk_size
        with self._lock:
            chunk = (end - 1) // size
            if self._end is not None and abs(offset - self._end) <= self.tolerance:
                if self.window == 0:
                    self.window = 1
                elif chunk > (self._end - 1) // size:
                    self.window = min(self.max_window, self.window * 2)
                self._end = max(self._end, end)
            else:
                if self._end is not None:
                    self._cancel()
                self.window = 0
                self._end = end
                self._ahead = chunk
            self._schedule((self._end - 1) // size)

    def _schedule(self, chunk: int) -> None:
        """Submit spans up to ``window`` chunks past ``chunk``, but only whole spans, so each
        request carries ``span`` chunks (the last span of the file may be shorter)."""
        while self._pending and self._pending[0].done():
            self._pending.popleft()
        self._ahead = max(self._ahead, chunk)
        target = min(chunk + self.window, self._last_chunk)
        span = max(1, self.window // self.streams)
        while self._ahead < target and (target - self._ahead >= span
                                        or target == self._last_chunk):
            first = self._ahead + 1
            last = min(first + span - 1, self._last_chunk)
            self._pending.append(self.fetcher.prefetch(self.file, first, last))
            self._ahead = last

    def _cancel(self) -> None:
        while self._pending:
            self._pending.popleft().cancel()

    def close(self) -> None:
        with self._lock:
            self._cancel()


class _Folder:
    """The files of one listing, in listing order, and how far reading has gone."""

    def __init__(self, entries: Children) -> None:
        self.entries = entries
        self.files = [kid.file for kid in entries.values()
                      if kid.file is not None and kid.file.size is not None]
        self.position = {file.uri: i for i, file in enumerate(self.files)}
        self.last = -2
        self.ahead = -1


class FolderAhead:
    """Read-ahead across the files of folders (see the module docstring). Thread-safe."""

    def __init__(self, fetcher: Fetcher, *, files_ahead: int = FILES_AHEAD) -> None:
        self.fetcher = fetcher
        self.files_ahead = files_ahead
        self._folders: LRUCache[str, _Folder] = LRUCache(64)
        self._lock = threading.Lock()

    def opened(self, folder: str, entries: Children, file: RemoteFile) -> None:
        """``file`` of ``folder`` (whose listing is ``entries``) was opened."""
        with self._lock:
            state = self._folders.get(folder)
            if state is None or state.entries is not entries:  # new, or listed again
                state = self._folders[folder] = _Folder(entries)
            position = state.position.get(file.uri)
            if position is None:
                return
            in_order = position == state.last + 1
            state.last = position
            if not in_order:
                return
            first = max(position + 1, state.ahead + 1)
            last = min(position + self.files_ahead, len(state.files) - 1)
            state.ahead = max(state.ahead, last)
            wanted = state.files[first:last + 1]
        for ahead in wanted:
            if ahead.size:
                self.fetcher.prefetch(ahead, 0, 0)
