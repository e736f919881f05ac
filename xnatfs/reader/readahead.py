"""Read-ahead: fetch what a reader is about to want, before it asks.

``Readahead`` carries out, for one open file, what ``policy.Window`` decides (the arithmetic,
kept pure there): it submits the spans to the fetcher's pool and cancels those not started
when the reader seeks. The fetcher's pool bounds the total across all open files.

``FolderAhead`` does the same across the files of a folder: ``cp -r``, ``tar``, ``rsync`` and
``md5sum *`` open files one at a time in listing order, so each small file would cost a whole
round trip while the next waits. Once two files of a folder are opened in order, the next
``FILES_AHEAD`` are fetched (their first chunk) in parallel; a jump elsewhere stops it. Enough
of them to keep a high-latency link full (issue 8 measured 5-7 requests in flight with 16).
A resource's own ``files`` folder walked so, with enough of it still ahead to be worth one
zip, comes as a zip stream instead (``zipahead``): on XNAT each single-file GET parses the
resource's whole catalog.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future

from cachetools import LRUCache

from xnatfs.reader.fetcher import Fetcher
from xnatfs.reader.policy import FIRST_WINDOW, MAX_WINDOW, STREAMS, TOLERANCE, Window
from xnatfs.reader.zipahead import ZipAhead, resource_of
from xnatfs.reader.zipstream import ZIP_TRIES, ahead_worth, zip_worth
from xnatfs.tree.model import Children, RemoteFile

FILES_AHEAD = 32  # files of a folder fetched ahead of one that is read file after file
RECHECK = 64  # files opened, after the files ahead were found cached, before looking again


class Readahead:
    """The prefetch scheduler of one open file. Thread-safe."""

    def __init__(
        self, fetcher: Fetcher, file: RemoteFile, *, first: int = FIRST_WINDOW,
        max_window: int = MAX_WINDOW, streams: int = STREAMS, tolerance: int = TOLERANCE,
    ) -> None:
        self.fetcher = fetcher
        self.file = file
        self.policy = Window(fetcher.chunk_size, fetcher.chunk_count(file), first=first,
                             maximum=max_window, streams=streams, tolerance=tolerance)
        self._pending: deque[Future[None]] = deque()
        self._lock = threading.Lock()

    @property
    def window(self) -> int:
        return self.policy.size

    def advise(self, offset: int, end: int) -> None:
        """Called before serving a read of [offset, end): adjust the window, schedule fetches."""
        with self._lock:
            plan = self.policy.read(offset, end)
            if plan.cancel:
                self._cancel()
            while self._pending and self._pending[0].done():
                self._pending.popleft()
            for first, last in plan.spans:
                self._pending.append(self.fetcher.prefetch(self.file, first, last,
                                                           from_disk=True))

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
        self.files = [kid.file for kid in entries.values() if kid.file is not None
                      and kid.file.size is not None and kid.file.data is None]
        self.position = {file.uri: i for i, file in enumerate(self.files)}
        self.last = -2
        self.ahead = -1
        whole = all(kid.file is not None for kid in entries.values())
        self.resource = resource_of(self.files) if whole and self.files else None
        self.zip: ZipAhead | None = None
        self.zips = 0  # zips started for this listing of the folder
        self.cached_until = -1  # the files ahead were found cached: no zip before this


class FolderAhead:
    """Read-ahead across the files of folders (see the module docstring). Thread-safe."""

    def __init__(self, fetcher: Fetcher, *, files_ahead: int = FILES_AHEAD,
                 zips: bool = True) -> None:
        self.fetcher = fetcher
        self.files_ahead = files_ahead
        self.zips = zips
        self._folders: LRUCache[str, _Folder] = LRUCache(64)
        self._broken: set[str] = set()  # resources whose zip could not be followed
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
            if self._zipped(state, position):
                return
            first = max(position + 1, state.ahead + 1)
            last = min(position + self.files_ahead, len(state.files) - 1)
            state.ahead = max(state.ahead, last)
            wanted = state.files[first:last + 1]
        for ahead in wanted:  # those already here cost a look, not a turn of the pool
            if ahead.size and not self.fetcher.have(ahead, 0):
                self.fetcher.prefetch(ahead, 0, 0)

    def _zipped(self, state: _Folder, position: int) -> bool:
        """Whether a zip brings the rest of this folder (started now if it is worth one)."""
        zipper = state.zip
        if zipper is not None:
            if zipper.broken:
                self._broken.add(zipper.resource)
            if zipper.running:
                zipper.opened(position)
                return True
            if zipper.finished or state.zips >= ZIP_TRIES:
                return False  # what it did not bring comes file by file
            state.zip = None
        resource = state.resource
        ahead = len(state.files) - position - 1
        if not self.zips or resource is None or resource in self._broken or \
                not zip_worth(ahead, len(state.files)) or position < state.cached_until:
            return False
        if not ahead_worth(len(state.files), self.fetcher.client.round_trip):
            return False  # parallel GETs fill a long link; one zip would not
        if self._cached(state, position):
            state.cached_until = position + RECHECK
            return False
        state.zips += 1
        state.zip = ZipAhead(self.fetcher, resource, state.files, position,
                             timeout=self.fetcher.deadline).start()
        return True

    def _cached(self, state: _Folder, position: int) -> bool:
        """Whether the files ahead are cached already, by a few of them: the next, one
        half-way and the last. A zip of a folder read before brought nothing: every entry
        was read past, and ``cp -r`` of a cached scan of 6,000 files after a remount
        streamed the whole scan again, slower than with no zip at all."""
        files = state.files
        probes = {position + 1, (position + 1 + len(files)) // 2, len(files) - 1}
        return all(self.fetcher.have(files[i], 0) for i in probes if i < len(files))

    def close(self) -> None:
        """Stop the zips under way (the mount is going)."""
        with self._lock:
            for state in self._folders.values():
                if state.zip is not None:
                    state.zip.stop()
