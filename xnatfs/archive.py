"""One server's archive as every front end reads it: the tree, the chunk cache and the reader.

The mount, materialize, the fsspec filesystem and ``ls`` all build an ``Archive`` (through
``Archive.open_for``, the one factory) and read through it; none of them builds caches or
fetchers itself, so there is one definition of how a chunk is fetched, cached and checked.
Data flows one way: the REST client under the tree, the tree under the reader, the reader
under the front ends, which see only ``tree``, ``open`` and ``read``.

Two ways to use the cache: ``cache="rw"`` (the mount, fsspec) keeps what it fetches, and
``cache="read"`` (materialize) copies chunks the mount already has but never writes (a bulk
download would otherwise push a user's working set out of it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import BinaryIO, Literal

from xnatfs.errors import IntegrityError, XnatfsError
from xnatfs.reader.chunkcache import (
    CHUNK_SIZE,
    DEFAULT_SIZE_LIMIT,
    ChunkCache,
    default_cache_dir,
)
from xnatfs.reader.fetcher import Fetcher
from xnatfs.reader.handle import FileHandle, MemoryHandle
from xnatfs.tree.model import Folders, RemoteFile, Tree
from xnatfs.tree.stash import Stash
from xnatfs.xnat import retry
from xnatfs.xnat.client import GRACE, XnatClient

log = logging.getLogger(__name__)

CacheUse = Literal["rw", "read", "none"]
Layout = Literal["xnat", "bids"]
COPY_STEP = 8  # chunks a read in ``copy``


class Archive:
    """The tree and the reader of one client. Thread-safe; ``close`` when done."""

    def __init__(self, client: XnatClient, tree: Tree, cache: ChunkCache | None,
                 fetcher: Fetcher, *, writes_cache: bool, view: Folders | None = None) -> None:
        self.client = client
        self.tree = tree
        self.view = view or tree
        """The paths the front end shows: the tree itself, or a layout over it (BIDS)."""
        self.cache = cache
        self.fetcher = fetcher
        self.writes_cache = writes_cache
        self.chunk_size = fetcher.chunk_size

    @classmethod
    def open_for(
        cls, client: XnatClient, *, cache: CacheUse = "rw", cache_dir: str | None = None,
        cache_size: int = DEFAULT_SIZE_LIMIT, ttl: float = 60.0,
        projects: list[str] | None = None, wait: float | None = None,
        deadline: float | None = None, stash: bool = False, max_parallel: int = 32,
        layout: Layout = "xnat",
    ) -> Archive:
        """The one factory. ``deadline``: seconds one read may take, retries included
        (default: the client's read timeout and ``GRACE``); ``wait``: how long a listing is
        waited for before the tree answers from what it last saw; ``stash``: keep the tree's
        last listings in the cache, for use while the server is away (the mount);
        ``layout="bids"``: ``view`` shows each project as a BIDS dataset (``bids.view``)."""
        chunks: ChunkCache | None = None
        try:
            if cache == "rw":
                chunks = ChunkCache(cache_dir, cache_size)
            elif cache == "read":
                folder = cache_dir or default_cache_dir()
                chunks = ChunkCache(folder) if os.path.isdir(folder) else None
        except OSError as exc:
            raise XnatfsError(f"cannot use the cache folder {exc.filename or cache_dir}: "
                              f"{exc.strerror or exc}") from None
        fetcher = Fetcher(client, chunks, chunks.chunk_size if chunks else CHUNK_SIZE,
                          max_parallel=max_parallel, pauses=retry.PAUSES,
                          deadline=client.timeout[1] + GRACE if deadline is None else deadline)
        kept = Stash(chunks, client.base_url, client.credentials.user) \
            if stash and chunks is not None else None
        tree = Tree(client, ttl=ttl, projects=projects, wait=wait, stash=kept)
        view = None
        if layout == "bids":
            from xnatfs.bids.view import BidsView

            view = BidsView(tree)
        return cls(client, tree, chunks, fetcher, writes_cache=cache == "rw", view=view)

    def open(self, file: RemoteFile) -> FileHandle | MemoryHandle:
        """A handle on this version of the file (``file.size`` known: ``Tree.resolve``)."""
        if file.data is not None:
            return MemoryHandle(file)
        return FileHandle(self.fetcher, file)

    def read(self, handle: FileHandle | MemoryHandle, start: int, end: int) -> bytes:
        """Bytes [start, end) through ``handle``, a chunk at a time: a long read then looks
        sequential to the read-ahead, which widens its window as it goes instead of waiting
        for one chunk after another."""
        step = self.chunk_size
        if end - start <= step:
            return handle.read(start, end - start)
        handle.will_read(start, end)
        parts = []
        for offset in range(start, end, step):
            piece = handle.read(offset, min(step, end - offset))
            parts.append(piece)
            if len(piece) < min(step, end - offset):
                break
        return b"".join(parts)

    def copy(self, file: RemoteFile, out: BinaryIO,
             progress: Callable[[int], None] | None = None) -> None:
        """Write the whole file to ``out`` through one handle, ``COPY_STEP`` chunks a read
        (the read-ahead runs ahead of the writes), telling ``progress`` the bytes so far:
        what the git-annex remote and the Snakemake plugin retrieve with. IntegrityError if
        the server sends fewer bytes than the listing says."""
        size = file.size or 0
        step = self.chunk_size * COPY_STEP
        handle = self.open(file)
        try:
            done = 0
            while done < size:
                data = self.read(handle, done, min(done + step, size))
                if not data:
                    raise IntegrityError(f"{file.uri}: the server sent {done} of {size} bytes")
                out.write(data)
                done += len(data)
                if progress is not None:
                    progress(done)
        finally:
            handle.close()

    def close(self) -> None:
        """Stop the reader's threads and store what the cache still has waiting."""
        self.fetcher.close()
        if self.cache is not None:
            self.cache.close()
