"""Zip read-ahead: a resource folder read file after file comes as one zip stream.

XNAT parses a resource's whole catalog on every single-file GET (docs/xnat-api.md), so ``cp
-r`` of a scan of thousands of small files, fetched one GET each, cost the server O(N^2) and
us 17x xnatpy. When ``FolderAhead`` sees a resource's ``files`` folder walked in listing order
and the rest of it is worth a zip (``zipstream.zip_worth``), one ``?format=zip`` stream is
started (``ZipAhead``). Each of its entries that is a one-chunk file, not cached and not
being fetched, is checked whole (size and MD5 against the listing, CRC-32 against the zip)
and only then handed to the fetcher (``Fetcher.offer``), through the claim, MD5 and epoch
rules of every delivery; everything else is read past. So the zip never hands out a byte of
its own: a reader finds the file in the cache, or fetches it as always if the zip has not
reached it, and a zip that is cut short, garbled or no zip at all costs nothing but its own
bytes. Memory holds one entry at a time; the stream waits while it is ``AHEAD`` files past
the last file opened, and gives up when the reader stops coming (``timeout``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence

from xnatfs.errors import XnatfsError
from xnatfs.reader.fetcher import Fetcher
from xnatfs.reader.zipstream import (
    Buffered,
    EntryCorrupt,
    EntryNames,
    ZipFormatError,
    ZipStream,
)
from xnatfs.tree.model import RemoteFile

log = logging.getLogger(__name__)

AHEAD = 256
"""Files the zip may run past the last one opened: far more than a reader overtakes, far
fewer than a cache could not keep."""


def resource_of(files: Sequence[RemoteFile]) -> str | None:
    """The resource URI (up to ``/resources/{id}``) all ``files`` are directly in, or None."""
    prefixes = {f.uri.rsplit("/files/", 1)[0] for f in files if "/files/" in f.uri}
    if len(prefixes) != 1 or any("/" in f.uri.rsplit("/files/", 1)[-1] for f in files):
        return None
    return prefixes.pop()


class ZipAhead:
    """One resource's zip, streamed on a thread of its own into the fetcher."""

    def __init__(self, fetcher: Fetcher, resource: str, files: Sequence[RemoteFile],
                 position: int, *, timeout: float) -> None:
        self.fetcher = fetcher
        self.resource = resource
        self.files = {f.uri.rsplit("/files/", 1)[1]: f for f in files}
        self.order = {f.uri: i for i, f in enumerate(files)}
        self.position = position
        self.timeout = timeout
        self.broken = False
        """The server's zips cannot be followed: this resource is not zipped again."""
        self.offered = 0
        self.finished = False
        """Every entry came: the folder is not zipped again."""
        self._stop = False
        self._moved = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="xnatfs-zip", daemon=True)

    def start(self) -> ZipAhead:
        self.thread.start()
        return self

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def opened(self, position: int) -> None:
        """The reader opened the file at ``position`` of the listing."""
        with self._moved:
            self.position = max(self.position, position)
            self._moved.notify_all()

    def stop(self) -> None:
        with self._moved:
            self._stop = True
            self._moved.notify_all()

    def _run(self) -> None:
        client = self.fetcher.client
        try:
            with client.open_zip(self.resource) as body:
                def receive(most: int) -> bytes:
                    body.attempts = client.attempts(client.timeout[1])  # per receive
                    return body.read1(most)

                self._entries(ZipStream(Buffered(receive).read))
        except ZipFormatError as exc:
            self.broken = True
            log.warning("the zip of %s cannot be used (%s); its files come one by one",
                        self.resource, exc)
        except XnatfsError as exc:  # cut short, stalled, refused: the files come one by one
            log.info("zip read-ahead of %s stopped: %s", self.resource, exc)
        except Exception:
            log.exception("zip read-ahead of %s failed", self.resource)

    def _entries(self, stream: ZipStream) -> None:
        names = EntryNames(self.files)
        while (entry := stream.next_entry()) is not None:
            rel = names.rel(entry.name)
            if rel is None:
                raise ZipFormatError(f"zip entry {entry.name!r} is no file the listing has")
            file = self.files[rel]
            size = entry.size if entry.size is not None else file.size
            if size is None:
                raise ZipFormatError(f"no size for zip entry {entry.name!r}")
            if not self._wait(self.order[file.uri]):
                return
            if not self._wanted(file, size):
                for _ in stream.data(size):
                    pass
                stream.finish()
                continue
            data = b"".join(stream.data(size))
            try:
                stream.finish()
            except EntryCorrupt as exc:
                log.warning("%s: %s in the zip; it comes on its own", file.uri, exc)
                continue
            if hashlib.md5(data).hexdigest() != (file.digest or "").lower():
                log.warning("%s: the zip's copy is not the listing's MD5; it comes on its own",
                            file.uri)
                continue
            if self.fetcher.offer(file, data):
                self.offered += 1
        self.finished = True

    def _wanted(self, file: RemoteFile, size: int) -> bool:
        return bool(file.digest) and file.size == size and \
            0 < size <= self.fetcher.chunk_size and not self.fetcher.have(file, 0)

    def _wait(self, position: int) -> bool:
        """Hold the stream while it is ``AHEAD`` files past the reader; False: stop."""
        with self._moved:
            self._moved.wait_for(lambda: self._stop or position <= self.position + AHEAD,
                                 timeout=self.timeout)
            return not self._stop and position <= self.position + AHEAD
